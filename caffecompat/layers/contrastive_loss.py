"""ContrastiveLoss (Caffe's contrastive_loss_layer.cpp): the siamese loss on pairs (a, b) with a similarity label.

Forward: per pair, d^2 when similar, else max(margin - d, 0)^2 (legacy_version:
max(margin - d^2, 0)); summed, / num / 2. Backward, with alpha = loss weight /
num (its negation for b): similar pairs alpha * (a - b); dissimilar pairs with
a positive margin - d give -alpha (legacy) or -alpha * (margin - d) / (d + 1e-4)
times (a - b), others 0. The similarity label gets no diff.
"""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import INT64, GraphBuilder
from caffecompat.layers.loss import _check_first_dim, _count, _Loss, _loss_weight, _require_opset
from caffecompat.layers.ops import reduce_sum
from caffecompat.layers.registry import Diffs, LayerNode, Shape, register


@register("ContrastiveLoss")
class ContrastiveLoss(_Loss):
    """Siamese loss on pairs (a, b) with similarity label: d^2 or max(margin - d, 0)^2, sum / num / 2."""

    min_bottoms = max_bottoms = 3

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        _check_first_dim(node)
        a, b, sim = node.bottom_shapes
        n = a[0]
        # LayerSetUp: a and b are N x C x 1 x 1, the similarity N x 1 x 1 x 1.
        if _count(a) != _count(b) or b[0] != n or _count(sim) != n:
            raise node.error(f"needs a and b of the same shape N x C and one similarity label per pair, got "
                             f"{list(a)}, {list(b)} and {list(sim)}")
        if any(d != 1 for d in (*a[2:], *b[2:])):
            raise node.error(f"inputs must be N x C x 1 x 1, got {list(a)} and {list(b)}")
        return [()]

    def allow_force_backward(self, node: LayerNode, bottom_index: int) -> bool:
        # ContrastiveLossLayer::AllowForceBackward: a and b may be forced, the similarity label not.
        return bottom_index != 2

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        _require_opset(node, g)
        p = node.param.contrastive_loss_param
        shape = node.bottom_shapes[0]
        n, c = shape[0], _count(shape) // shape[0]
        a = g.op1("Reshape", [node.bottoms[0], g.ints([n, c])])
        b = g.op1("Reshape", [node.bottoms[1], g.ints([n, c])])
        diff = g.op1("Sub", [a, b])
        dist_sq = reduce_sum(g, g.op1("Mul", [diff, diff]), [1], keepdims=1)
        labels = g.op1("Reshape", [g.op1("Cast", [node.bottoms[2]], to=INT64), g.ints([n, 1])])
        similar = g.op1("Not", [g.op1("Equal", [labels, g.const(np.int64(0), np.int64, "zero")])])
        margin = g.scalar(p.margin)
        if p.legacy_version:
            # legacy: max(margin - d^2, 0)
            mdist = g.op1("Sub", [margin, dist_sq])
            dissimilar = g.op1("Relu", [mdist])
        else:
            # max(margin - d, 0)^2
            dist = g.op1("Sqrt", [dist_sq])
            g.stash(node, "dist", dist)
            mdist = g.op1("Sub", [margin, dist])
            hinge = g.op1("Relu", [mdist])
            dissimilar = g.op1("Mul", [hinge, hinge])
        for key, value in (("diff", diff), ("mdist", mdist), ("similar", similar)):
            g.stash(node, key, value)
        per_pair = g.op1("Where", [similar, dist_sq, dissimilar])
        per_num = g.op1("Div", [reduce_sum(g, per_pair), g.scalar(float(n))])
        g.op1("Div", [per_num, g.scalar(2.0)], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        # The similarity label (bottom 2) gets no diff, whatever propagate_down says.
        if not (d.need_bottom[0] or d.need_bottom[1]):
            return
        p = node.param.contrastive_loss_param
        mdist = g.stashed(node, "mdist")
        # alpha = loss weight / num for a (its negation for b); similar pairs: alpha * (a - b);
        # dissimilar with margin - dist > 0: -alpha (legacy) or -alpha * mdist / (dist + 1e-4), else 0.
        alpha = g.op1("Div", [_loss_weight(g, d), g.scalar(float(node.bottom_shapes[0][0]))])
        beta = g.op1("Neg", [alpha])
        if not p.legacy_version:
            dist = g.stashed(node, "dist")
            beta = g.op1("Div", [g.op1("Mul", [beta, mdist]), g.op1("Add", [dist, g.scalar(1e-4)])])
        beta = g.op1("Where", [g.op1("Greater", [mdist, g.scalar(0.0)]), beta, g.scalar(0.0)])
        coef = g.op1("Where", [g.stashed(node, "similar"), alpha, beta])
        diff_a = g.op1("Mul", [g.stashed(node, "diff"), coef])
        for i in (0, 1):
            if d.need_bottom[i]:
                value = diff_a if i == 0 else g.op1("Neg", [diff_a])
                d.bottom[i] = g.op1("Reshape", [value, g.ints(node.bottom_shapes[i])])
