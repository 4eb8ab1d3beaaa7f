"""Caffe's loss layers: SoftmaxWithLoss, SigmoidCrossEntropyLoss, EuclideanLoss, HingeLoss,
InfogainLoss, ContrastiveLoss.

Every lowering is on the training path: ONNX Runtime differentiates the graph, so each one is
written so that the automatic gradient w.r.t. the prediction is exactly the diff Caffe's
Backward_cpu writes, including where Caffe's backward is not the derivative of its forward
(clamped logs, ContrastiveLoss's +1e-4). Those spots use `detach`: a value ORT does not
differentiate through. Class-axis layers work on a (outer, inner, C) view of the prediction.
"""

from __future__ import annotations

import numpy as np

from caffecompat.errors import NotSupportedError
from caffecompat.layers.graph import FLOAT, INT64, GraphBuilder
from caffecompat.layers.registry import Layer, LayerNode, Shape, register
from caffecompat.proto import caffe_pb2

LossParameter = caffe_pb2.LossParameter
FLT_MIN = float(np.finfo(np.float32).tiny)  # SoftmaxWithLoss clamps probabilities at FLT_MIN
LOG_THRESHOLD = 1e-20  # Caffe's kLOG_THRESHOLD, InfogainLoss's probability clamp


# -- shared pieces ------------------------------------------------------------

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


def _reduce_sum(g: GraphBuilder, x: str, axes: list[int] | None = None, keepdims: int = 0) -> str:
    """ReduceSum over `axes` (all axes when None); `axes` is an input from opset 13."""
    inputs = [x] if axes is None else [x, g.ints(axes)]
    return g.op1("ReduceSum", inputs, keepdims=keepdims)


def detach(g: GraphBuilder, x: str) -> str:
    """x's value with no gradient: ORT stops gradients at a Cast to an integer type.

    Rebuilt exactly from its integer part and 2^-40 fractional steps (exact for
    2^-17 <= |x| < 2^62; smaller values are off by less than 2^-40).
    """
    big = g.op1("Min", [g.op1("Max", [x, g.scalar(-2.0 ** 62)]), g.scalar(2.0 ** 62)])
    whole = g.op1("Cast", [g.op1("Cast", [big], to=INT64)], to=FLOAT)
    frac = g.op1("Sub", [big, whole])
    steps = g.op1("Cast", [g.op1("Mul", [frac, g.scalar(2.0 ** 40)])], to=INT64)
    return g.op1("Add", [whole, g.op1("Mul", [g.op1("Cast", [steps], to=FLOAT), g.scalar(2.0 ** -40)])])


def _clamp_forward_only(g: GraphBuilder, x: str, low: float) -> str:
    """max(x, low) in the forward pass, with the gradient of x itself (Caffe's backward ignores its clamp)."""
    k = g.scalar(low)
    passthrough = g.op1("Add", [k, g.op1("Sub", [x, detach(g, x)])])
    return g.op1("Where", [g.op1("Less", [x, k]), passthrough, x])


def _class_last(g: GraphBuilder, x: str, outer: int, c: int, inner: int) -> str:
    """The prediction viewed as (outer, inner, C)."""
    if inner == 1:
        return g.op1("Reshape", [x, g.ints([outer, 1, c])])
    return g.op1("Transpose", [g.op1("Reshape", [x, g.ints([outer, c, inner])])], perm=[0, 2, 1])


def _class_back(g: GraphBuilder, y3: str, c: int, inner: int, shape: Shape, out: str) -> str:
    """Inverse of _class_last: (outer, inner, C) back to the prediction's shape, written to `out`."""
    y = y3 if inner == 1 else g.op1("Transpose", [y3], perm=[0, 2, 1])
    return g.op1("Reshape", [y, g.ints(shape)], out)


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
        return g.op1("Max", [_reduce_sum(g, valid), g.scalar(1.0)])
    value = {LossParameter.FULL: outer * inner, LossParameter.VALID: outer * inner,
             LossParameter.BATCH_SIZE: outer, LossParameter.NONE: 1}[mode]
    return g.scalar(max(1.0, float(value)))


def _masked_mean(g: GraphBuilder, per_position: str, valid: str | None, norm: str, out: str) -> str:
    """out = -sum(per_position * valid) / norm."""
    terms = per_position if valid is None else g.op1("Mul", [per_position, valid])
    return g.op1("Div", [g.op1("Neg", [_reduce_sum(g, terms)]), norm], out)


class _Loss(Layer):
    loss = True
    min_bottoms = max_bottoms = 2
    min_tops = max_tops = 1

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        _check_first_dim(node)
        return [()]


# -- softmax family -------------------------------------------------------------

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
        x3 = _class_last(g, node.bottoms[0], outer, c, inner)
        logp = g.op1("LogSoftmax", [x3], axis=2)
        labels = _int_labels(g, node.bottoms[1], [outer, inner, 1])
        picked = _reduce_sum(g, g.op1("Mul", [logp, _one_hot(g, labels, c)]), [2])
        # loss -= log(max(prob, FLT_MIN)); the backward is prob - 1 whether clamped or not.
        picked = _clamp_forward_only(g, picked, float(np.log(np.float32(FLT_MIN))))
        valid = _valid_mask(g, g.op1("Reshape", [labels, g.ints([outer, inner])]),
                            ignore_label(node.param.loss_param))
        # LayerSetUp: the default mode is VALID (legacy normalize: false means BATCH_SIZE).
        norm = _normalizer(g, _mode(node, LossParameter.VALID), outer, inner, valid)
        _masked_mean(g, picked, valid, norm, node.tops[0])
        if len(node.tops) > 1:
            _class_back(g, g.op1("Softmax", [x3], axis=2), c, inner, node.bottom_shapes[0], node.tops[1])


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
        x3 = _class_last(g, node.bottoms[0], outer, c, inner)
        # log(max(prob, kLOG_THRESHOLD)); Caffe's backward (prob * rowsum(H) - H[label]) ignores the clamp.
        logp = _clamp_forward_only(g, g.op1("LogSoftmax", [x3], axis=2), float(np.log(np.float32(LOG_THRESHOLD))))
        labels = _int_labels(g, node.bottoms[1], [outer, inner, 1])
        rows = g.op1("MatMul", [_one_hot(g, labels, c), h])  # H[label, :] per position
        per_position = _reduce_sum(g, g.op1("Mul", [rows, logp]), [2])
        valid = _valid_mask(g, g.op1("Reshape", [labels, g.ints([outer, inner])]),
                            ignore_label(node.param.loss_param))
        norm = _normalizer(g, node.param.loss_param.normalization, outer, inner, valid)
        _masked_mean(g, per_position, valid, norm, node.tops[0])
        if len(node.tops) > 1:
            _class_back(g, g.op1("Softmax", [x3], axis=2), c, inner, node.bottom_shapes[0], node.tops[1])


# -- elementwise losses -----------------------------------------------------------

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
        # Caffe's stable form: x (t - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0])); the indicator is a
        # constant, so the gradient is sigmoid(x) - t everywhere, x = 0 included.
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


@register("EuclideanLoss")
class EuclideanLoss(_Loss):
    """sum((a - b)^2) / num / 2; both bottoms get a gradient."""

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        _check_first_dim(node)
        a, b = node.bottom_shapes
        if _count(a[1:]) != _count(b[1:]):
            raise node.error(f"inputs must have the same dimension, got {list(a)} and {list(b)}")
        return [()]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        _require_opset(node, g)
        shape = node.bottom_shapes[0]
        b = node.bottoms[1]
        if node.bottom_shapes[1] != shape:
            b = g.op1("Reshape", [b, g.ints(shape)])
        diff = g.op1("Sub", [node.bottoms[0], b])
        dot = _reduce_sum(g, g.op1("Mul", [diff, diff]))
        # Forward_cpu: dot / num / 2.
        per_num = g.op1("Div", [dot, g.scalar(float(shape[0]))])
        g.op1("Div", [per_num, g.scalar(2.0)], node.tops[0])


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
        norm = node.param.hinge_loss_param.norm
        if norm == caffe_pb2.HingeLossParameter.L1:
            total = _reduce_sum(g, margin)  # the margins are >= 0: asum is their sum
        elif norm == caffe_pb2.HingeLossParameter.L2:
            total = _reduce_sum(g, g.op1("Mul", [margin, margin]))
        else:
            raise node.error(f"unknown hinge_loss_param.norm {norm}")
        g.op1("Div", [total, g.scalar(float(num))], node.tops[0])


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

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        _require_opset(node, g)
        p = node.param.contrastive_loss_param
        shape = node.bottom_shapes[0]
        n, c = shape[0], _count(shape) // shape[0]
        a = g.op1("Reshape", [node.bottoms[0], g.ints([n, c])])
        b = g.op1("Reshape", [node.bottoms[1], g.ints([n, c])])
        diff = g.op1("Sub", [a, b])
        dist_sq = _reduce_sum(g, g.op1("Mul", [diff, diff]), [1])
        labels = g.op1("Reshape", [g.op1("Cast", [node.bottoms[2]], to=INT64), g.ints([n])])
        similar = g.op1("Not", [g.op1("Equal", [labels, g.const(np.int64(0), np.int64, "zero")])])
        margin = g.scalar(p.margin)
        if p.legacy_version:
            # legacy: max(margin - d^2, 0); its derivative is Caffe's backward.
            dissimilar = g.op1("Relu", [g.op1("Sub", [margin, dist_sq])])
        else:
            # max(margin - d, 0)^2 forward; Caffe's backward scales diff by -mdist / (d + 1e-4), which is
            # not that derivative: value from the detached forward, gradient coef * d(d^2).
            fixed = detach(g, dist_sq)
            mdist = g.op1("Sub", [margin, g.op1("Sqrt", [fixed])])
            hinge = g.op1("Relu", [mdist])
            value = g.op1("Mul", [hinge, hinge])
            dist = g.op1("Sqrt", [fixed])
            coef = g.op1("Div", [g.op1("Neg", [mdist]), g.op1("Add", [dist, g.scalar(1e-4)])])
            coef = g.op1("Where", [g.op1("Greater", [mdist, g.scalar(0.0)]), coef, g.scalar(0.0)])
            dissimilar = g.op1("Add", [value, g.op1("Mul", [coef, g.op1("Sub", [dist_sq, fixed])])])
        per_pair = g.op1("Where", [similar, dist_sq, dissimilar])
        per_num = g.op1("Div", [_reduce_sum(g, per_pair), g.scalar(float(n))])
        g.op1("Div", [per_num, g.scalar(2.0)], node.tops[0])
