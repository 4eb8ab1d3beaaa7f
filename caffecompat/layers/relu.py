"""ReLU (Caffe's relu_layer.cpp): max(x, 0) + negative_slope * min(x, 0).

Forward is ONNX Relu, or LeakyRelu when negative_slope is set. Backward is
dy * ((x > 0) + negative_slope * (x <= 0)) on the bottom blob's data (in place: the top).
"""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.neuron import Neuron, _bottom_data, _slope_where
from caffecompat.layers.registry import Diffs, LayerNode, register


@register("ReLU")
class ReLU(Neuron):
    """max(x, 0) + negative_slope * min(x, 0)."""

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        slope = node.param.relu_param.negative_slope
        if slope:
            g.op1("LeakyRelu", [node.bottoms[0]], node.tops[0], alpha=slope)
        else:
            g.op1("Relu", [node.bottoms[0]], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        slope = node.param.relu_param.negative_slope
        # ReLULayer::Backward_cpu: dy * ((x > 0) + negative_slope * (x <= 0)) on the blob's data (in place: the top).
        d.bottom[0] = _slope_where(g, _bottom_data(node), d.top[0], g.scalar(slope) if slope else None)
