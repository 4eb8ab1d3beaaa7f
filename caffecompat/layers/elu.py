"""ELU (Caffe's elu_layer.cpp): max(x, 0) + alpha * (exp(min(x, 0)) - 1).

Forward follows ELULayer's formula (exp only sees min(x, 0), so it cannot
overflow). Backward: dy where x > 0, else dy * (alpha + top).
"""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.neuron import Neuron, _bottom_data, _slope_where, _top_data
from caffecompat.layers.registry import Diffs, LayerNode, register


@register("ELU")
class ELU(Neuron):
    """max(x, 0) + alpha * (exp(min(x, 0)) - 1)."""

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        x = node.bottoms[0]
        alpha = node.param.elu_param.alpha
        # ELULayer's formula; exp only sees min(x, 0), so it cannot overflow.
        expm1 = g.op1("Sub", [g.op1("Exp", [g.op1("Min", [x, g.scalar(0.0)])]), g.scalar(1.0)])
        g.op1("Add", [g.op1("Relu", [x]), g.op1("Mul", [expm1, g.scalar(alpha)])], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        # ELULayer::Backward_cpu: dy where x > 0, else dy * (alpha + top).
        neg = g.op1("Add", [_top_data(node), g.scalar(node.param.elu_param.alpha)])
        d.bottom[0] = _slope_where(g, _bottom_data(node), d.top[0], neg)
