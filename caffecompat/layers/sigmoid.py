"""Sigmoid (Caffe's sigmoid_layer.cpp): 1 / (1 + exp(-x)).

Forward is ONNX Sigmoid. Backward, from the top y: dy * y * (1 - y).
"""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.neuron import Neuron, _top_data
from caffecompat.layers.registry import Diffs, LayerNode, register


@register("Sigmoid")
class Sigmoid(Neuron):
    """1 / (1 + exp(-x))."""

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        g.op1("Sigmoid", [node.bottoms[0]], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        # SigmoidLayer::Backward_cpu, from the top: dy * y * (1 - y).
        y = _top_data(node)
        d.bottom[0] = g.op1("Mul", [g.op1("Mul", [d.top[0], y]), g.op1("Sub", [g.scalar(1.0), y])])
