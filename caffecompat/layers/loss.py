"""Caffe's LossLayer base (loss_layer.cpp) and the helpers its subclasses share.

Each loss layer lives in its own module (softmax_loss.py, euclidean_loss.py, ...), lowering
Caffe's Forward_cpu and, beside it, its Backward_cpu: the bottom diffs Caffe writes, scaled
by element 0 of the loss top's diff (the loss weight), including where Caffe's backward is
not the derivative of its forward (clamped logs, ContrastiveLoss's +1e-4). Class-axis
layers work on an (outer, inner, C) view of the prediction.
"""

from __future__ import annotations

import numpy as np

from caffecompat.errors import NotSupportedError
from caffecompat.layers.graph import FLOAT, INT64, GraphBuilder
from caffecompat.layers.ops import reduce_sum
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape
from caffecompat.proto import caffe_pb2

LossParameter = caffe_pb2.LossParameter


def _count(shape: Shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _require_opset(node: LayerNode, g: GraphBuilder) -> None:
    if g.opset < 13:
        raise NotSupportedError(f"{node.type} needs ONNX opset >= 13, got {g.opset} (layer {node.name})")


def _check_first_dim(node: LayerNode) -> None:
    # LossLayer::Reshape: prediction and label have the same first dimension.
    a, b = node.bottom_shapes[0], node.bottom_shapes[1]
    if (a[0] if a else 1) != (b[0] if b else 1):
        raise node.error(f"the data and label should have the same first dimension, got {list(a)} and {list(b)}")


def _split_axis(node: LayerNode, axis: int) -> tuple[int, int, int, int]:
    """(axis, outer, classes, inner) of bottom 0 around `axis`; checks the label count."""
    shape = node.bottom_shapes[0]
    if not -len(shape) <= axis < len(shape):
        raise node.error(f"axis {axis} is out of range for input {list(shape)}")
    axis %= len(shape)
    outer, c, inner = _count(shape[:axis]), shape[axis], _count(shape[axis + 1:])
    # The label blob holds one label per (outer, inner) position.
    if _count(node.bottom_shapes[1]) != outer * inner:
        raise node.error(f"number of labels must match number of predictions: input {list(shape)} with axis "
                         f"{axis} needs {outer * inner} labels, got {_count(node.bottom_shapes[1])}")
    return axis, outer, c, inner


def _class_last(g: GraphBuilder, x: str, outer: int, c: int, inner: int) -> str:
    """The prediction viewed as (outer, inner, C)."""
    if inner == 1:
        return g.op1("Reshape", [x, g.ints([outer, 1, c])])
    return g.op1("Transpose", [g.op1("Reshape", [x, g.ints([outer, c, inner])])], perm=[0, 2, 1])


def _class_back(g: GraphBuilder, y3: str, c: int, inner: int, shape: Shape, out: str | None = None) -> str:
    """Inverse of _class_last: (outer, inner, C) back to the prediction's shape (written to `out` if given)."""
    y = y3 if inner == 1 else g.op1("Transpose", [y3], perm=[0, 2, 1])
    return g.op1("Reshape", [y, g.ints(shape)], out)


def _softmax(g: GraphBuilder, x3: str) -> str:
    """Caffe's SoftmaxLayer over the last axis: exp(x - max) / sum; every probability is <= 1 exactly."""
    # ReduceMax takes its axes as an input from opset 18, as an attribute before.
    top = (g.op1("ReduceMax", [x3, g.ints([2])], keepdims=1) if g.opset >= 18
           else g.op1("ReduceMax", [x3], axes=[2], keepdims=1))
    shifted = g.op1("Sub", [x3, top])
    e = g.op1("Exp", [shifted])
    return g.op1("Div", [e, reduce_sum(g, e, [2], keepdims=1)])


def _int_labels(g: GraphBuilder, label: str, shape: list[int]) -> str:
    # Caffe reads labels with static_cast<int> (truncation toward zero), as Cast to int64 does.
    return g.op1("Reshape", [g.op1("Cast", [label], to=INT64), g.ints(shape)])


def _one_hot(g: GraphBuilder, labels3: str, c: int) -> str:
    """(outer, inner, C) float one-hot of (outer, inner, 1) labels; out-of-range labels give zero rows."""
    classes = g.const(np.arange(c, dtype=np.int64).reshape(1, 1, c), np.int64, "classes")
    return g.op1("Cast", [g.op1("Equal", [labels3, classes])], to=FLOAT)


def _valid_mask(g: GraphBuilder, labels: str, ignore: int | None) -> str | None:
    """1 where the label is not ignore_label (None when the layer has no ignore_label)."""
    if ignore is None:
        return None
    hit = g.op1("Equal", [labels, g.const(np.int64(ignore), np.int64, "ignore_label")])
    return g.op1("Cast", [g.op1("Not", [hit])], to=FLOAT)


def ignore_label(loss_param: caffe_pb2.LossParameter) -> int | None:
    return loss_param.ignore_label if loss_param.HasField("ignore_label") else None


def _mode(node: LayerNode, legacy_default: int) -> int:
    """The normalization mode: explicit `normalization`, else legacy `normalize`, else the layer's default."""
    lp = node.param.loss_param
    if lp.HasField("normalization"):
        return lp.normalization
    if lp.HasField("normalize"):
        # normalize: true meant VALID, false meant BATCH_SIZE.
        return LossParameter.VALID if lp.normalize else LossParameter.BATCH_SIZE
    return legacy_default


def _normalizer(g: GraphBuilder, mode: int, outer: int, inner: int, valid: str | None) -> str:
    """get_normalizer: FULL outer*inner, VALID non-ignored count, BATCH_SIZE outer, NONE 1; then max(1, .)."""
    if mode == LossParameter.VALID and valid is not None:
        return g.op1("Max", [reduce_sum(g, valid), g.scalar(1.0)])
    value = {LossParameter.FULL: outer * inner, LossParameter.VALID: outer * inner,
             LossParameter.BATCH_SIZE: outer, LossParameter.NONE: 1}[mode]
    return g.scalar(max(1.0, float(value)))


def _masked_mean(g: GraphBuilder, per_position: str, valid: str | None, norm: str, out: str) -> str:
    """out = (0 - sum(per_position * valid)) / norm: Caffe's `loss -= ...` from 0, so never -0."""
    terms = per_position if valid is None else g.op1("Mul", [per_position, valid])
    return g.op1("Div", [g.op1("Sub", [g.scalar(0.0), reduce_sum(g, terms)]), norm], out)


def _masked(g: GraphBuilder, x: str, valid: str | None, axis: int | None = None) -> str:
    """x with the ignored positions zeroed (valid unsqueezed at `axis` when given)."""
    if valid is None:
        return x
    return g.op1("Mul", [x, valid if axis is None else g.op1("Unsqueeze", [valid, g.ints([axis])])])


def _loss_weight(g: GraphBuilder, d: Diffs, divisor: str | float | None = None) -> str:
    """Element 0 of the loss top's diff (top[0]->cpu_diff()[0]), divided by `divisor` when given."""
    first = g.op1("Gather", [g.op1("Reshape", [d.top[0], g.ints([-1])]), g.const(np.int64(0), np.int64)], axis=0)
    if divisor is None:
        return first
    return g.op1("Div", [first, g.scalar(divisor) if isinstance(divisor, float) else divisor])


def _class_loss_top(g: GraphBuilder, node: LayerNode, per_position: str, labels: str, mode: int,
                    shape: tuple[int, int, int], prob: str, stash: dict[str, str]) -> None:
    """The loss top (and optional prob top) of a per-position class loss (SoftmaxWithLoss, InfogainLoss).

    Ignored positions drop out, the sum is divided by the normalizer of `mode`, and prob, the valid
    mask, the normalizer and `stash` are kept for `_class_loss_diff`. shape is (outer, classes, inner).
    """
    outer, c, inner = shape
    valid = _valid_mask(g, g.op1("Reshape", [labels, g.ints([outer, inner])]), ignore_label(node.param.loss_param))
    norm = _normalizer(g, mode, outer, inner, valid)
    _masked_mean(g, per_position, valid, norm, node.tops[0])
    for key, value in (("prob", prob), ("valid", valid), ("norm", norm), *stash.items()):
        if value is not None:
            g.stash(node, key, value)
    if len(node.tops) > 1:
        _class_back(g, prob, c, inner, node.bottom_shapes[0], node.tops[1])


def _class_loss_diff(g: GraphBuilder, node: LayerNode, d: Diffs, diff: str, c: int, inner: int) -> None:
    """Bottom 0's diff from a per-position class diff: 0 at ignored positions, times loss weight / normalizer."""
    diff = _masked(g, diff, g.stashed(node, "valid"), 2)
    diff = g.op1("Mul", [diff, _loss_weight(g, d, g.stashed(node, "norm"))])
    d.bottom[0] = _class_back(g, diff, c, inner, node.bottom_shapes[0])


def _refuse(node: LayerNode, d: Diffs, index: int, what: str) -> None:
    """Caffe's LOG(FATAL) when propagate_down asks a loss for the diff of a bottom it cannot differentiate."""
    if index < len(d.need_bottom) and d.need_bottom[index]:
        raise node.error(f"cannot backpropagate to {what} (bottom {index}); set propagate_down: false on it")


class _Loss(Layer):
    """Caffe's LossLayer: a prediction and a label of the same first dimension, one 0-axis loss top."""

    loss = True
    min_bottoms = max_bottoms = 2
    min_tops = max_tops = 1

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        _check_first_dim(node)
        return [()]
