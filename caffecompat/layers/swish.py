"""Swish (Caffe's swish_layer.cpp): x * sigmoid(beta * x).

Forward keeps its sigmoid s for the Backward, which works from the top y as
SwishLayer::Backward_cpu does: dy * (beta y + s (1 - beta y)).
"""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.neuron import Neuron, _mul, _top_data
from caffecompat.layers.registry import Diffs, LayerNode, register


@register("Swish")
class Swish(Neuron):
    """x * sigmoid(beta * x)."""

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        x = node.bottoms[0]
        beta = node.param.swish_param.beta
        gate = g.op1("Sigmoid", [_mul(g, x, beta)])
        g.stash(node, "sigmoid", gate)
        g.op1("Mul", [x, gate], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        # SwishLayer::Backward_cpu, from the top y and its own sigmoid s: dy * (beta y + s (1 - beta y)).
        s = g.stashed(node, "sigmoid")
        by = _mul(g, _top_data(node), node.param.swish_param.beta)
        grad = g.op1("Add", [by, g.op1("Mul", [s, g.op1("Sub", [g.scalar(1.0), by])])])
        d.bottom[0] = g.op1("Mul", [d.top[0], grad])
