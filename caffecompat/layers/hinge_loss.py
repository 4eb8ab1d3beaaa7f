"""HingeLoss (Caffe's hinge_loss_layer.cpp): one-vs-all hinge, L1 or L2, summed and divided by num.

Forward: margin = max(0, 1 - y x) with y = +1 for the label's score and -1
otherwise; the L1 norm sums the margins, L2 their squares. Backward flips the
label's margin back, v = margin * y: L1 gives sign(v) * loss weight / num, L2
v * 2 loss weight / num; the labels get no diff.
"""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import FLOAT, GraphBuilder
from caffecompat.layers.loss import _check_first_dim, _count, _int_labels, _Loss, _loss_weight, _refuse, _require_opset
from caffecompat.layers.ops import reduce_sum
from caffecompat.layers.registry import Diffs, LayerNode, Shape, register
from caffecompat.proto import caffe_pb2


@register("HingeLoss")
class HingeLoss(_Loss):
    """One-vs-all hinge: t = max(0, 1 - y x) with y = +1 for the label, -1 otherwise; L1 or L2 sum / num."""

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        _check_first_dim(node)
        num = node.bottom_shapes[0][0]
        if _count(node.bottom_shapes[1]) != num:
            raise node.error(f"needs one label per item ({num}), got label shape {list(node.bottom_shapes[1])}")
        return [()]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        _require_opset(node, g)
        shape = node.bottom_shapes[0]
        num = shape[0]
        dim = _count(shape) // num
        x = g.op1("Reshape", [node.bottoms[0], g.ints([num, dim])])
        labels = _int_labels(g, node.bottoms[1], [num, 1])
        classes = g.const(np.arange(dim, dtype=np.int64).reshape(1, dim), np.int64, "classes")
        one_hot = g.op1("Cast", [g.op1("Equal", [labels, classes])], to=FLOAT)
        # The label's score changes sign: 1 - 2 * one_hot.
        sign = g.op1("Sub", [g.scalar(1.0), g.op1("Mul", [one_hot, g.scalar(2.0)])])
        margin = g.op1("Relu", [g.op1("Add", [g.op1("Mul", [x, sign]), g.scalar(1.0)])])
        g.stash(node, "margin", margin)
        g.stash(node, "sign", sign)
        norm = node.param.hinge_loss_param.norm
        if norm == caffe_pb2.HingeLossParameter.L1:
            total = reduce_sum(g, margin)  # the margins are >= 0: asum is their sum
        elif norm == caffe_pb2.HingeLossParameter.L2:
            total = reduce_sum(g, g.op1("Mul", [margin, margin]))
        else:
            raise node.error(f"unknown hinge_loss_param.norm {norm}")
        g.op1("Div", [total, g.scalar(float(num))], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        _refuse(node, d, 1, "the labels")
        if not d.need_bottom[0]:
            return
        num = float(node.bottom_shapes[0][0])
        # Backward_cpu flips the label's margin back: v = margin * y; L1 sign(v) * w / num, L2 v * (2 w) / num.
        v = g.op1("Mul", [g.stashed(node, "margin"), g.stashed(node, "sign")])
        if node.param.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L1:
            diff = g.op1("Mul", [g.op1("Sign", [v]), _loss_weight(g, d, num)])
        else:
            scale = g.op1("Div", [g.op1("Mul", [_loss_weight(g, d), g.scalar(2.0)]), g.scalar(num)])
            diff = g.op1("Mul", [v, scale])
        d.bottom[0] = g.op1("Reshape", [diff, g.ints(node.bottom_shapes[0])])
