"""Reductions: ArgMax (top-k indices and values; no Backward) and Reduction (SUM, ASUM, SUMSQ, MEAN over the tail
axes, Forward and Backward)."""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import FLOAT, GraphBuilder
from caffecompat.layers.ops import canonical_axis, reduce_sum
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register
from caffecompat.proto import caffe_pb2

ReductionOp = caffe_pb2.ReductionParameter


@register("ArgMax")
class ArgMax(Layer):
    """The top_k largest entries per instance (or along `axis`): their indices, or values with out_max_val."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1
    # ArgMaxLayer::Backward_cpu is NOT_IMPLEMENTED.
    has_backward = False

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

    def _coeff(self, node: LayerNode) -> float:
        """ReductionLayer's coeff_ (float32): coeff, divided by the reduced count for MEAN."""
        p = node.param.reduction_param
        coeff = np.float32(p.coeff)
        if p.operation == ReductionOp.MEAN:
            s = node.bottom_shapes[0]
            coeff = coeff / np.float32(np.prod(s[self._axis(node):], dtype=np.int64))
        elif p.operation not in (ReductionOp.SUM, ReductionOp.ASUM, ReductionOp.SUMSQ):
            raise node.error(f"unknown reduction_param.operation {p.operation}")
        return float(coeff)

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.reduction_param
        s = node.bottom_shapes[0]
        axis = self._axis(node)
        x = node.bottoms[0]
        coeff = self._coeff(node)
        if p.operation == ReductionOp.ASUM:
            x = g.op1("Abs", [x])
        elif p.operation == ReductionOp.SUMSQ:
            x = g.op1("Mul", [x, x])
        axes = list(range(axis, len(s)))
        if coeff == 1.0:
            reduce_sum(g, x, axes, node.tops[0])
        else:
            g.op1("Mul", [reduce_sum(g, x, axes), g.scalar(coeff)], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        p = node.param.reduction_param
        s = node.bottom_shapes[0]
        axis = self._axis(node)
        coeff = self._coeff(node)
        # ReductionLayer::Backward_cpu: each reduced entry gets top_diff * coeff_, times sign(x) for ASUM
        # (sign(0) = 0) and times 2x for SUMSQ; top_diff is broadcast over the reduced axes.
        if p.operation == ReductionOp.SUMSQ:
            coeff *= 2.0  # exact in float32: (2 * top_diff * coeff_) * x is Caffe's rounding
        dy = d.top[0]
        scaled = dy if coeff == 1.0 else g.op1("Mul", [dy, g.scalar(coeff)])
        per_entry = g.op1("Reshape", [scaled, g.ints([*s[:axis], *[1] * (len(s) - axis)])])
        if p.operation == ReductionOp.ASUM:
            d.bottom[0] = g.op1("Mul", [g.op1("Sign", [node.bottoms[0]]), per_entry])
        elif p.operation == ReductionOp.SUMSQ:
            d.bottom[0] = g.op1("Mul", [per_entry, node.bottoms[0]])
        else:
            d.bottom[0] = g.op1("Expand", [per_entry, g.ints(s)])
