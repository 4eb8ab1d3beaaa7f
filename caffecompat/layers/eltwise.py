"""Eltwise: element-wise SUM (with per-bottom coefficients), PROD or MAX of same-shaped bottoms: Forward, Backward."""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register
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
            # The value is plain max; which bottom won (Caffe's mask) only matters to Backward.
            g.op1("Max", xs, node.tops[0])
        else:
            raise node.error(f"unknown eltwise_param.operation {p.operation}")

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not any(d.need_bottom):
            return
        p = node.param.eltwise_param
        dy = d.top[0]
        if p.operation == Op.SUM:
            coeffs = list(p.coeff) or [1.0] * len(node.bottoms)
            for j, c in enumerate(coeffs):
                if d.need_bottom[j]:
                    d.bottom[j] = dy if c == 1.0 else g.op1("Mul", [dy, g.scalar(c)])
        elif p.operation == Op.PROD:
            for j, x in enumerate(node.bottoms):
                if not d.need_bottom[j]:
                    continue
                if p.stable_prod_grad:
                    # EltwiseLayer::Backward_cpu, stable_prod_grad: the product of the other bottoms, in order.
                    others = [o for k, o in enumerate(node.bottoms) if k != j]
                    factor = others[0]
                    for o in others[1:]:
                        factor = g.op1("Mul", [factor, o])
                else:
                    # Without stable_prod_grad: top / bottom (inf or NaN where the bottom is 0, as in Caffe).
                    factor = g.op1("Div", [node.tops[0], x])
                d.bottom[j] = g.op1("Mul", [factor, dy])
        elif p.operation == Op.MAX:
            winner = self._max_winner(node, g)
            zero = g.scalar(0.0)
            for j in range(len(node.bottoms)):
                if d.need_bottom[j]:
                    won = g.op1("Equal", [winner, self._index(g, j)])
                    d.bottom[j] = g.op1("Where", [won, dy, zero])

    @staticmethod
    def _max_winner(node: LayerNode, g: GraphBuilder) -> str:
        """Caffe's MAX mask: the index of the bottom each top entry came from (int64).

        EltwiseLayer::Forward_cpu takes bottom 0 only where it is strictly above bottom 1 (a tie
        goes to bottom 1), then each later bottom only where it is strictly above the running max.
        """
        x0, x1 = node.bottoms[0], node.bottoms[1]
        winner = g.op1("Where", [g.op1("Greater", [x0, x1]), Eltwise._index(g, 0), Eltwise._index(g, 1)])
        best = g.op1("Max", [x0, x1])
        for k, x in enumerate(node.bottoms[2:], 2):
            above = g.op1("Greater", [x, best])
            winner = g.op1("Where", [above, Eltwise._index(g, k), winner])
            if k < len(node.bottoms) - 1:
                best = g.op1("Max", [best, x])
        return winner

    @staticmethod
    def _index(g: GraphBuilder, k: int) -> str:
        """Bottom index k as an int64 scalar (Equal takes no floats before opset 11)."""
        return g.const(k, np.int64, "index")

    @staticmethod
    def _fold(g: GraphBuilder, op: str, xs: list[str], top: str) -> None:
        acc = xs[0]
        for i, x in enumerate(xs[1:], 1):
            acc = g.op1(op, [acc, x], top if i == len(xs) - 1 else None)
