"""InfogainLoss (Caffe's infogain_loss_layer.cpp): -sum_l H[label, l] log(max(p_l, 1e-20)), p the softmax.

H is a C x C matrix read from infogain_loss_param.source or given as bottom 2.
Forward: the softmax over infogain_loss_param.axis, the H-weighted clamped log
probabilities summed over the non-ignored positions, divided by the normalizer;
optional top 1 holds the probabilities. Backward: prob * rowsum(H)[label] -
H[label, :] (the clamp ignored), 0 at ignored positions, times loss weight /
normalizer; neither the labels nor H get a diff.
"""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.loss import (
    _check_first_dim,
    _class_last,
    _class_loss_diff,
    _class_loss_top,
    _count,
    _int_labels,
    _Loss,
    _one_hot,
    _refuse,
    _require_opset,
    _softmax,
    _split_axis,
)
from caffecompat.layers.ops import reduce_sum
from caffecompat.layers.registry import Diffs, LayerNode, Shape, register

LOG_THRESHOLD = 1e-20  # Caffe's kLOG_THRESHOLD, InfogainLoss's probability clamp


@register("InfogainLoss")
class InfogainLoss(_Loss):
    """-sum_l H[label, l] log(max(p_l, 1e-20)) with H from infogain_loss_param.source or bottom 2."""

    max_bottoms = 3
    max_tops = 2

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        _check_first_dim(node)
        if node.param.loss_param.HasField("normalize"):
            # InfogainLossLayer::LayerSetUp refuses the deprecated field.
            raise node.error("loss_param.normalize is deprecated for InfogainLoss; use normalization")
        _, _, c, _ = _split_axis(node, node.param.infogain_loss_param.axis)
        if len(node.bottom_shapes) > 2 and _count(node.bottom_shapes[2]) != c * c:
            raise node.error(f"the infogain matrix (bottom 2) must hold {c}x{c} values, "
                             f"got shape {list(node.bottom_shapes[2])}")
        if len(node.bottom_shapes) < 3 and not node.param.infogain_loss_param.source:
            raise node.error("infogain_loss_param.source must name the H matrix when there is no third bottom")
        return [(), node.bottom_shapes[0]][:len(node.tops)]

    def _matrix(self, node: LayerNode, g: GraphBuilder, c: int) -> str:
        if len(node.bottoms) > 2:
            return g.op1("Reshape", [node.bottoms[2], g.ints([c, c])])
        from caffecompat.formats.blob import read_binaryproto

        h = read_binaryproto(node.param.infogain_loss_param.source)
        if h.size != c * c:
            raise node.error(f"the infogain matrix in {node.param.infogain_loss_param.source} has {h.size} "
                             f"values; {c} classes need {c}x{c}")
        return g.const(h.reshape(c, c), np.float32, "infogain")

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        _require_opset(node, g)
        _, outer, c, inner = _split_axis(node, node.param.infogain_loss_param.axis)
        h = self._matrix(node, g, c)
        prob = _softmax(g, _class_last(g, node.bottoms[0], outer, c, inner))
        logp = g.op1("Log", [g.op1("Max", [prob, g.scalar(LOG_THRESHOLD)])])
        labels = _int_labels(g, node.bottoms[1], [outer, inner, 1])
        rows = g.op1("MatMul", [_one_hot(g, labels, c), h])  # H[label, :] per position
        per_position = reduce_sum(g, g.op1("Mul", [rows, logp]), [2])
        _class_loss_top(g, node, per_position, labels, node.param.loss_param.normalization, (outer, c, inner), prob,
                        {"rows": rows})

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        _refuse(node, d, 1, "the labels")
        _refuse(node, d, 2, "the infogain matrix")
        if not d.need_bottom[0]:
            return
        _, _, c, inner = _split_axis(node, node.param.infogain_loss_param.axis)
        # prob * rowsum(H)[label] - H[label, :] (the 1e-20 clamp ignored), 0 at ignored positions,
        # times loss weight / normalizer.
        rows = g.stashed(node, "rows")
        row_sum = reduce_sum(g, rows, [2], keepdims=1)
        _class_loss_diff(g, node, d, g.op1("Sub", [g.op1("Mul", [g.stashed(node, "prob"), row_sum]), rows]), c, inner)
