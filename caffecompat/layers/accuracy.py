"""Accuracy: the fraction of positions whose label is among the top_k scores; optional per-class top.

No Backward (AccuracyLayer::Backward_cpu is NOT_IMPLEMENTED): its tops carry no loss weight, so
Net::Init leaves it out of the backward pass, and force_backward on a net holding it is an error.
"""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import FLOAT, GraphBuilder
from caffecompat.layers.loss import (
    _class_last,
    _int_labels,
    _one_hot,
    _require_opset,
    _split_axis,
    _valid_mask,
)
from caffecompat.layers.ops import reduce_sum
from caffecompat.layers.registry import Layer, LayerNode, Shape, register


@register("Accuracy")
class Accuracy(Layer):
    """top 0: accuracy (0-axis); top 1 (optional): per-class accuracy, one value per class."""

    min_bottoms = max_bottoms = 2
    min_tops = 1
    max_tops = 2
    has_backward = False

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        p = node.param.accuracy_param
        _, _, c, _ = _split_axis(node, p.axis)
        # AccuracyLayer::Reshape: top_k cannot exceed the number of classes.
        if p.top_k > _count(node.bottom_shapes[0]) // max(1, _count(node.bottom_shapes[1])):
            raise node.error(f"top_k ({p.top_k}) must be less than or equal to the number of classes ({c})")
        return [(), (c,)][:len(node.tops)]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        _require_opset(node, g)
        p = node.param.accuracy_param
        _, outer, c, inner = _split_axis(node, p.axis)
        x3 = _class_last(g, node.bottoms[0], outer, c, inner)
        labels = _int_labels(g, node.bottoms[1], [outer, inner, 1])
        one_hot = _one_hot(g, labels, c)
        # The label's score, read without arithmetic on the other scores (an inf there must not matter).
        index = g.op1("Max", [g.op1("Min", [labels, g.const(np.int64(c - 1), np.int64)]),
                              g.const(np.int64(0), np.int64)])
        true_score = g.op1("GatherElements", [x3, index], axis=2)
        # Forward_cpu: a hit when the scores >= the label's score (the label's own included) number at
        # most top_k, i.e. ties count against the label.
        at_least = reduce_sum(g, g.op1("Cast", [g.op1("GreaterOrEqual", [x3, true_score])], to=FLOAT), [2])
        hit = g.op1("Cast", [g.op1("LessOrEqual", [at_least, g.scalar(float(p.top_k))])], to=FLOAT)
        ignore = p.ignore_label if p.HasField("ignore_label") else None
        valid = _valid_mask(g, g.op1("Reshape", [labels, g.ints([outer, inner])]), ignore)
        if valid is not None:
            hit = g.op1("Mul", [hit, valid])
            count = reduce_sum(g, valid)
        else:
            count = g.scalar(float(outer * inner))
        # accuracy / count, and 0 when every position was ignored.
        g.op1("Div", [reduce_sum(g, hit), g.op1("Max", [count, g.scalar(1.0)])], node.tops[0])
        if len(node.tops) > 1:
            # Per class: hits / positions labelled with that class (0 for a class never seen).
            counted = one_hot if valid is None else g.op1("Mul", [one_hot, g.op1("Unsqueeze", [valid, g.ints([2])])])
            per_class_total = reduce_sum(g, counted, [0, 1])
            per_class_hits = reduce_sum(g, g.op1("Mul", [counted, g.op1("Unsqueeze", [hit, g.ints([2])])]), [0, 1])
            g.op1("Div", [per_class_hits, g.op1("Max", [per_class_total, g.scalar(1.0)])], node.tops[1])


def _count(shape: Shape) -> int:
    return int(np.prod(shape, dtype=np.int64))
