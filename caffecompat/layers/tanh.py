"""TanH (Caffe's tanh_layer.cpp): tanh(x).

Forward is ONNX Tanh. Backward, from the top y: dy * (1 - y^2).
"""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.neuron import Neuron, _top_data
from caffecompat.layers.registry import Diffs, LayerNode, register


@register("TanH")
class TanH(Neuron):
    """tanh(x)."""

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        g.op1("Tanh", [node.bottoms[0]], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        # TanHLayer::Backward_cpu, from the top: dy * (1 - y^2).
        y = _top_data(node)
        d.bottom[0] = g.op1("Mul", [d.top[0], g.op1("Sub", [g.scalar(1.0), g.op1("Mul", [y, y])])])
