"""BNLL (Caffe's bnll_layer.cpp): the binomial normal log likelihood log(1 + exp(x)).

Forward computes max(x, 0) + log(1 + exp(-|x|)), so exp never overflows.
Backward, as BNLLLayer::Backward_cpu: e = exp(min(x, 50)); dy * e / (e + 1), on
the bottom blob's data (in place: the top).
"""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.neuron import Neuron, _bottom_data
from caffecompat.layers.registry import Diffs, LayerNode, register


@register("BNLL")
class BNLL(Neuron):
    """log(1 + exp(x)), computed as max(x, 0) + log(1 + exp(-|x|)) so exp never overflows."""

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        x = node.bottoms[0]
        e = g.op1("Exp", [g.op1("Neg", [g.op1("Abs", [x])])])
        soft = g.op1("Log", [g.op1("Add", [e, g.scalar(1.0)])])
        g.op1("Add", [g.op1("Relu", [x]), soft], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        # BNLLLayer::Backward_cpu: e = exp(min(x, 50)); dy * e / (e + 1) on the blob's data (in place: the top).
        e = g.op1("Exp", [g.op1("Min", [_bottom_data(node), g.scalar(50.0)])])
        d.bottom[0] = g.op1("Div", [g.op1("Mul", [d.top[0], e]), g.op1("Add", [e, g.scalar(1.0)])])
