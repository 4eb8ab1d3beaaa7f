"""EuclideanLoss (Caffe's euclidean_loss_layer.cpp): sum((a - b)^2) / num / 2.

Forward keeps a - b for the Backward, which gives both bottoms a diff
(either may be forced): (sign * loss weight / that bottom's num) * (a - b),
sign +1 for a and -1 for b.
"""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.loss import _check_first_dim, _count, _Loss, _loss_weight, _require_opset
from caffecompat.layers.ops import reduce_sum
from caffecompat.layers.registry import Diffs, LayerNode, Shape, register


@register("EuclideanLoss")
class EuclideanLoss(_Loss):
    """sum((a - b)^2) / num / 2; both bottoms get a gradient."""

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        _check_first_dim(node)
        a, b = node.bottom_shapes
        if _count(a[1:]) != _count(b[1:]):
            raise node.error(f"inputs must have the same dimension, got {list(a)} and {list(b)}")
        return [()]

    def allow_force_backward(self, node: LayerNode, bottom_index: int) -> bool:
        # EuclideanLossLayer::AllowForceBackward: both inputs may be forced.
        return True

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        _require_opset(node, g)
        shape = node.bottom_shapes[0]
        b = node.bottoms[1]
        if node.bottom_shapes[1] != shape:
            b = g.op1("Reshape", [b, g.ints(shape)])
        diff = g.op1("Sub", [node.bottoms[0], b])
        g.stash(node, "diff", diff)
        dot = reduce_sum(g, g.op1("Mul", [diff, diff]))
        # Forward_cpu: dot / num / 2.
        per_num = g.op1("Div", [dot, g.scalar(float(shape[0]))])
        g.op1("Div", [per_num, g.scalar(2.0)], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        diff = g.stashed(node, "diff")
        for i, sign in ((0, 1.0), (1, -1.0)):
            if d.need_bottom[i]:
                # Backward_cpu: bottom i's diff is (sign * loss weight / bottom i's num) * (a - b).
                alpha = g.op1("Div", [g.op1("Mul", [_loss_weight(g, d), g.scalar(sign)]),
                                      g.scalar(float(node.bottom_shapes[i][0]))])
                d.bottom[i] = g.op1("Reshape", [g.op1("Mul", [diff, alpha]), g.ints(node.bottom_shapes[i])])
