"""SigmoidCrossEntropyLoss (Caffe's sigmoid_cross_entropy_loss_layer.cpp): cross-entropy of sigmoid(x).

Forward, in Caffe's overflow-free form: -(x (t - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0])))
summed over the elements whose target is not ignore_label, divided by the
normalizer (default BATCH_SIZE). Backward: sigmoid(x) - t (Caffe's sigmoid,
0.5 tanh(x / 2) + 0.5), 0 where the target is ignored, times loss weight /
normalizer; the targets get no diff.
"""

from __future__ import annotations

from caffecompat.layers.graph import FLOAT, INT64, GraphBuilder
from caffecompat.layers.loss import (
    LossParameter,
    _check_first_dim,
    _count,
    _Loss,
    _loss_weight,
    _masked,
    _masked_mean,
    _mode,
    _normalizer,
    _refuse,
    _require_opset,
    _valid_mask,
    ignore_label,
)
from caffecompat.layers.registry import Diffs, LayerNode, Shape, register


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(_Loss):
    """Cross-entropy of sigmoid(x) against targets in [0, 1], in Caffe's overflow-free form."""

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        _check_first_dim(node)
        if _count(node.bottom_shapes[0]) != _count(node.bottom_shapes[1]):
            raise node.error(f"inputs must have the same count, got {list(node.bottom_shapes[0])} "
                             f"and {list(node.bottom_shapes[1])}")
        return [()]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        _require_opset(node, g)
        shape = node.bottom_shapes[0]
        x = node.bottoms[0]
        t = g.op1("Reshape", [node.bottoms[1], g.ints(shape)])
        # Caffe's stable form: x (t - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0])).
        pos = g.op1("Cast", [g.op1("Not", [g.op1("Less", [x, g.scalar(0.0)])])], to=FLOAT)
        z = g.op1("Sub", [x, g.op1("Mul", [g.op1("Mul", [x, g.scalar(2.0)]), pos])])
        softplus = g.op1("Log", [g.op1("Add", [g.scalar(1.0), g.op1("Exp", [z])])])
        per_element = g.op1("Sub", [g.op1("Mul", [x, g.op1("Sub", [t, pos])]), softplus])
        ignore = ignore_label(node.param.loss_param)
        valid = None if ignore is None else _valid_mask(g, g.op1("Cast", [t], to=INT64), ignore)
        outer = shape[0] if shape else 1
        # LayerSetUp: with neither normalization nor normalize set, the mode is BATCH_SIZE.
        norm = _normalizer(g, _mode(node, LossParameter.BATCH_SIZE), outer, _count(shape) // max(outer, 1), valid)
        _masked_mean(g, per_element, valid, norm, node.tops[0])
        for key, value in (("target", t), ("valid", valid), ("norm", norm)):
            if value is not None:
                g.stash(node, key, value)

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        _refuse(node, d, 1, "the targets")
        if not d.need_bottom[0]:
            return
        # sigmoid(x) - t (Caffe's sigmoid: 0.5 tanh(x / 2) + 0.5), 0 where the target is ignore_label,
        # times loss weight / the forward's normalizer.
        half = g.scalar(0.5)
        sigmoid = g.op1("Add", [g.op1("Mul", [g.op1("Tanh", [g.op1("Mul", [node.bottoms[0], half])]), half]), half])
        diff = _masked(g, g.op1("Sub", [sigmoid, g.stashed(node, "target")]), g.stashed(node, "valid"))
        d.bottom[0] = g.op1("Mul", [diff, _loss_weight(g, d, g.stashed(node, "norm"))])
