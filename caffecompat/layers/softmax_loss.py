"""SoftmaxWithLoss (Caffe's softmax_loss_layer.cpp): multinomial logistic loss of the softmax over an axis.

Forward: the softmax over softmax_param.axis, then -log(max(prob[label], FLT_MIN))
summed over the non-ignored positions and divided by the normalizer (default
VALID); optional top 1 holds the probabilities. Backward: (prob - onehot(label)),
0 at ignored positions, times loss weight / normalizer; the probability top's
diff is not read and the FLT_MIN clamp does not enter.
"""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.loss import (
    LossParameter,
    _check_first_dim,
    _class_last,
    _class_loss_diff,
    _class_loss_top,
    _int_labels,
    _Loss,
    _mode,
    _one_hot,
    _refuse,
    _require_opset,
    _softmax,
    _split_axis,
)
from caffecompat.layers.ops import reduce_sum
from caffecompat.layers.registry import Diffs, LayerNode, Shape, register

FLT_MIN = float(np.finfo(np.float32).tiny)  # SoftmaxWithLoss clamps probabilities at FLT_MIN


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(_Loss):
    """Multinomial logistic loss of the softmax over softmax_param.axis; optional top 1: the probabilities."""

    max_tops = 2

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        _check_first_dim(node)
        _split_axis(node, node.param.softmax_param.axis)
        return [(), node.bottom_shapes[0]][:len(node.tops)]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        _require_opset(node, g)
        _, outer, c, inner = _split_axis(node, node.param.softmax_param.axis)
        prob = _softmax(g, _class_last(g, node.bottoms[0], outer, c, inner))
        labels = _int_labels(g, node.bottoms[1], [outer, inner, 1])
        one_hot = _one_hot(g, labels, c)
        # loss -= log(max(prob[label], FLT_MIN)): the log of the clamped probability, never positive.
        picked = reduce_sum(g, g.op1("Mul", [prob, one_hot]), [2])
        logp = g.op1("Log", [g.op1("Max", [picked, g.scalar(FLT_MIN)])])
        # LayerSetUp: the default mode is VALID (legacy normalize: false means BATCH_SIZE).
        _class_loss_top(g, node, logp, labels, _mode(node, LossParameter.VALID), (outer, c, inner), prob,
                        {"one_hot": one_hot})

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        _refuse(node, d, 1, "the labels")
        if not d.need_bottom[0]:
            return
        _, _, c, inner = _split_axis(node, node.param.softmax_param.axis)
        # (prob - onehot(label)), 0 at ignored positions, times loss weight / normalizer; the prob top's
        # diff is not read, and the FLT_MIN clamp does not enter.
        _class_loss_diff(g, node, d, g.op1("Sub", [g.stashed(node, "prob"), g.stashed(node, "one_hot")]), c, inner)
