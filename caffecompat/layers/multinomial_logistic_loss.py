"""MultinomialLogisticLoss (Caffe's multinomial_logistic_loss_layer.cpp): -sum log(max(p[label], 1e-20)) / num.

Bottom 0 holds probabilities, num x dim (dim = count / num); bottom 1 one label
per item (its channels, height and width are 1). Backward: bottom 0's diff is 0
except at each item's label, -loss_weight / num / max(p[label], 1e-20); the
labels get no diff. Labels are checked before each pass by layers/labels.py.
"""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.loss import _check_first_dim, _count, _int_labels, _Loss, _loss_weight, _one_hot, _refuse
from caffecompat.layers.ops import reduce_sum
from caffecompat.layers.registry import Diffs, LayerNode, Shape, register

LOG_THRESHOLD = 1e-20  # Caffe's kLOG_THRESHOLD


@register("MultinomialLogisticLoss")
class MultinomialLogisticLoss(_Loss):
    """-sum_i log(max(prob[i, label_i], 1e-20)) / num."""

    def _dims(self, node: LayerNode) -> tuple[int, int]:
        shape = node.bottom_shapes[0]
        num = shape[0] if shape else 1
        return num, _count(shape) // max(num, 1)

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        _check_first_dim(node)
        # MultinomialLogisticLossLayer::Reshape: the label's channels, height and width are 1.
        label = node.bottom_shapes[1]
        if _count(label[1:]) != 1:
            raise node.error(f"bottom 1 (the labels) must hold one label per item (N x 1 x 1 x 1), "
                             f"got shape {list(label)}")
        return [()]

    def _picked(self, node: LayerNode, g: GraphBuilder) -> tuple[str, str]:
        num, dim = self._dims(node)
        prob = g.op1("Reshape", [node.bottoms[0], g.ints([num, dim])])
        labels = _int_labels(g, node.bottoms[1], [num, 1])
        onehot = g.op1("Reshape", [_one_hot(g, g.op1("Unsqueeze", [labels, g.ints([2])]), dim), g.ints([num, dim])])
        # Only prob[label] is read (an inf or NaN elsewhere does not leak in, as in Caffe). A label outside
        # [0, dim) that layers/labels.py did not see (one computed in the net) is GatherElements' error; a
        # negative one, which it would wrap, is sent out of its range first.
        zero = g.const(np.int64(0), np.int64, "zero")
        wrapped = g.op1("Sub", [labels, g.const(np.int64(2 * dim + 1), np.int64, "out_of_range")])
        safe = g.op1("Where", [g.op1("Less", [labels, zero]), wrapped, labels])
        picked = g.op1("Reshape", [g.op1("GatherElements", [prob, safe], axis=1), g.ints([num])])
        return g.op1("Max", [picked, g.scalar(LOG_THRESHOLD)]), onehot

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        num, _ = self._dims(node)
        clamped, onehot = self._picked(node, g)
        g.stash(node, "clamped", clamped)
        g.stash(node, "onehot", onehot)
        total = reduce_sum(g, g.op1("Log", [clamped]))
        # Forward_cpu: loss -= log(max(prob[label], kLOG_THRESHOLD)); top = loss / num.
        g.op1("Div", [g.op1("Neg", [total]), g.scalar(float(num))], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        _refuse(node, d, 1, "the labels")
        if not d.need_bottom[0]:
            return
        num, _ = self._dims(node)
        clamped, onehot = g.stashed(node, "clamped"), g.stashed(node, "onehot")
        if clamped is None:
            clamped, onehot = self._picked(node, g)
        # Backward_cpu: scale = -top_diff[0] / num; diff[label] = scale / max(prob[label], kLOG_THRESHOLD).
        scale = g.op1("Neg", [_loss_weight(g, d, float(num))])
        per_item = g.op1("Div", [scale, clamped])
        diff = g.op1("Mul", [onehot, g.op1("Unsqueeze", [per_item, g.ints([1])])])
        d.bottom[0] = g.op1("Reshape", [diff, g.ints(list(node.bottom_shapes[0]))])
