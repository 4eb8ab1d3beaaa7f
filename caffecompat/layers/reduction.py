"""Reductions: ArgMax (top-k indices and values) and Reduction (SUM, ASUM, SUMSQ, MEAN over the tail axes)."""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import FLOAT, GraphBuilder
from caffecompat.layers.registry import Layer, LayerNode, Shape, register
from caffecompat.layers.shape import canonical_axis
from caffecompat.proto import caffe_pb2

ReductionOp = caffe_pb2.ReductionParameter


def reduce_sum(g: GraphBuilder, x: str, axes: list[int], output: str | None = None, keepdims: int = 0) -> str:
    """ReduceSum over `axes` (an input since opset 13, an attribute before)."""
    if g.opset >= 13:
        return g.op1("ReduceSum", [x, g.ints(axes)], output, keepdims=keepdims)
    return g.op1("ReduceSum", [x], output, axes=axes, keepdims=keepdims)


@register("ArgMax")
class ArgMax(Layer):
    """The top_k largest entries per instance (or along `axis`): their indices, or values with out_max_val."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def _axis(self, node: LayerNode) -> int | None:
        p = node.param.argmax_param
        s = node.bottom_shapes[0]
        if p.top_k < 1:
            raise node.error("argmax_param.top_k must be at least 1")
        if not p.HasField("axis"):
            if len(s) < 1 or p.top_k > int(np.prod(s[1:], dtype=np.int64)):
                raise node.error(f"top_k {p.top_k} exceeds the {int(np.prod(s[1:]))} entries per instance")
            return None
        axis = canonical_axis(node, p.axis, len(s), "argmax_param.axis")
        if p.top_k > s[axis]:
            raise node.error(f"top_k {p.top_k} exceeds the size {s[axis]} of axis {axis}")
        return axis

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        p = node.param.argmax_param
        s = node.bottom_shapes[0]
        axis = self._axis(node)
        if axis is not None:
            # ArgMaxLayer::Reshape with an axis: the bottom's shape with top_k entries on that axis.
            return [(*s[:axis], p.top_k, *s[axis + 1:])]
        # Without an axis: N x (1, or 2 with out_max_val) x top_k, padded with 1s to the bottom's rank (>= 3).
        top = [1] * max(len(s), 3)
        top[0], top[1], top[2] = s[0], 2 if p.out_max_val else 1, p.top_k
        return [tuple(top)]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.argmax_param
        s = node.bottom_shapes[0]
        axis = self._axis(node)
        x = node.bottoms[0]
        if axis is None:
            x = g.op1("Reshape", [x, g.ints([s[0], -1])])
            axis, dim = 1, int(np.prod(s[1:], dtype=np.int64))
        else:
            dim = s[axis]
        # Caffe sorts (value, index) pairs descending, so among equal values the larger index
        # comes first; ONNX TopK prefers the smaller one. Reverse the axis, then map indices back.
        rev = g.op1("Slice", [x, g.ints([-1]), g.ints([np.iinfo(np.int64).min]), g.ints([axis]), g.ints([-1])])
        values, rev_idx = g.op("TopK", [rev, g.ints([p.top_k])], 2, axis=axis, largest=1, sorted=1)
        idx = g.op1("Sub", [g.scalar(dim - 1), g.op1("Cast", [rev_idx], to=FLOAT)])
        top = node.top_shapes[0]
        if not node.param.argmax_param.HasField("axis"):
            if p.out_max_val:
                # Per instance: the top_k indices, then the top_k values.
                idx = g.op1("Concat", [idx, values], axis=1)
            g.op1("Reshape", [idx, g.ints(top)], node.tops[0])
        else:
            g.identity(values if p.out_max_val else idx, node.tops[0])


@register("Reduction")
class Reduction(Layer):
    """coeff * (sum | sum of |x| | sum of x^2 | mean) over all axes from `axis` on; top shape = bottom[:axis]."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def _axis(self, node: LayerNode) -> int:
        s = node.bottom_shapes[0]
        return canonical_axis(node, node.param.reduction_param.axis, len(s), "reduction_param.axis")

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        return [node.bottom_shapes[0][:self._axis(node)]]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.reduction_param
        s = node.bottom_shapes[0]
        axis = self._axis(node)
        x = node.bottoms[0]
        coeff = float(np.float32(p.coeff))
        if p.operation == ReductionOp.ASUM:
            x = g.op1("Abs", [x])
        elif p.operation == ReductionOp.SUMSQ:
            # Pow, not Mul(x, x): ORT's gradient builder defines x's gradient twice for Mul(x, x).
            x = g.op1("Pow", [x, g.scalar(2.0)])
        elif p.operation == ReductionOp.MEAN:
            # ReductionLayer::Reshape: MEAN is SUM with coeff divided by the reduced count.
            coeff = float(np.float32(coeff) / np.float32(np.prod(s[axis:], dtype=np.int64)))
        elif p.operation != ReductionOp.SUM:
            raise node.error(f"unknown reduction_param.operation {p.operation}")
        axes = list(range(axis, len(s)))
        if coeff == 1.0:
            reduce_sum(g, x, axes, node.tops[0])
        else:
            g.op1("Mul", [reduce_sum(g, x, axes), g.scalar(coeff)], node.tops[0])
