"""ReLU6 (the MobileNet v2 ports' relu6_layer.cpp): min(max(x, 0) + negative_slope * min(x, 0), 6).

Forward is ONNX Relu (LeakyRelu with a negative_slope) then Min with 6. Backward is
dy * ((x > 0) + negative_slope * (x <= 0)) * (x < 6) on the bottom blob's data (in place: the top,
where a clipped 6 passes no diff either).
"""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.neuron import Neuron, _bottom_data, _slope_where
from caffecompat.layers.registry import Diffs, LayerNode, register


@register("ReLU6")
class ReLU6(Neuron):
    """min(max(x, 0) + negative_slope * min(x, 0), 6)."""

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        slope = node.param.relu6_param.negative_slope
        x = node.bottoms[0]
        relu = g.op1("LeakyRelu", [x], alpha=slope) if slope else g.op1("Relu", [x])
        g.op1("Min", [relu, g.scalar(6.0)], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        slope = node.param.relu6_param.negative_slope
        x = _bottom_data(node)
        # ReLU6Layer::Backward_cpu: the ReLU rule on the blob's data, times (x < 6).
        relu = _slope_where(g, x, d.top[0], g.scalar(slope) if slope else None)
        d.bottom[0] = g.op1("Where", [g.op1("Less", [x, g.scalar(6.0)]), relu, g.scalar(0.0)])
