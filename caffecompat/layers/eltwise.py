"""Eltwise: element-wise SUM (with per-bottom coefficients), PROD or MAX of same-shaped bottoms."""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Layer, LayerNode, Shape, register
from caffecompat.proto import caffe_pb2

Op = caffe_pb2.EltwiseParameter


@register("Eltwise")
class Eltwise(Layer):
    """SUM: sum_i coeff_i * x_i; PROD: prod_i x_i; MAX: max_i x_i."""

    min_bottoms = 2
    min_tops = max_tops = 1

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        p = node.param.eltwise_param
        # EltwiseLayer::LayerSetUp: one coefficient per bottom, and only for SUM (MAX ignores them).
        if p.coeff and len(p.coeff) != len(node.bottoms):
            raise node.error(f"has {len(p.coeff)} coeff values for {len(node.bottoms)} bottoms; give one "
                             "per bottom")
        if p.coeff and p.operation == Op.PROD:
            raise node.error("takes coeff only for operation SUM")
        first = node.bottom_shapes[0]
        for i, s in enumerate(node.bottom_shapes[1:], 1):
            if s != first:
                raise node.error(f"bottom #{i} has shape {list(s)} but bottom #0 has {list(first)}; "
                                 "all bottoms must have the same shape")
        return [first]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.eltwise_param
        xs = list(node.bottoms)
        if p.operation == Op.SUM:
            coeffs = list(p.coeff) or [1.0] * len(xs)
            terms = [x if c == 1.0 else g.op1("Mul", [x, g.scalar(c)]) for x, c in zip(xs, coeffs)]
            # Caffe accumulates bottom by bottom, in order.
            self._fold(g, "Add", terms, node.tops[0])
        elif p.operation == Op.PROD:
            self._fold(g, "Mul", xs, node.tops[0])
        elif p.operation == Op.MAX:
            # Ties go to the earliest bottom in Caffe's mask; the forward value is the same.
            g.op1("Max", xs, node.tops[0])
        else:
            raise node.error(f"unknown eltwise_param.operation {p.operation}")

    @staticmethod
    def _fold(g: GraphBuilder, op: str, xs: list[str], top: str) -> None:
        acc = xs[0]
        for i, x in enumerate(xs[1:], 1):
            acc = g.op1(op, [acc, x], top if i == len(xs) - 1 else None)
