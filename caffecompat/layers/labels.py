"""Class labels checked before they reach a classification layer: integers in [0, C) or ignore_label.

Caffe only DCHECKs `label_value < num_classes` in SoftmaxWithLoss, Accuracy,
InfogainLoss and MultinomialLogisticLoss, so a release build reads outside its
buffers and trains on (label 1e9 with 3 classes scored accuracy 0.75); the
ONNX graphs here would quietly give such a label a zero one-hot row. Labels fed
from outside the graph (data layers, Input blobs set from pycaffe) are checked
with numpy before each pass instead: `label_rules(spec)` once per net, then
`check_labels(rules, lookup, origin)` per batch, which costs a min/max over the
label batch. SigmoidCrossEntropyLoss and EuclideanLoss are not checked: their
"labels" are targets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from caffecompat.errors import CaffeCompatError, printable


@dataclass(frozen=True)
class LabelRule:
    """One classification layer's label bottom: fed value, blob name, number of classes, ignore_label."""

    layer: str
    type: str
    value: str  # the ONNX value name of the label bottom
    blob: str  # its Caffe blob name
    classes: int
    ignore: int | None


def _classes(shape: tuple[int, ...], axis: int) -> int | None:
    if not shape or not -len(shape) <= axis < len(shape):
        return None
    return int(shape[axis])


def label_rules(spec) -> list[LabelRule]:
    """The label checks of `spec` (a NetSpec) whose label bottom is fed from outside the graph."""
    fed = set(spec.inputs)
    # Net::Init's Split layers copy a label used twice (Accuracy and the loss): follow them back.
    copied: dict[str, tuple[str, str]] = {}
    for node in spec.layers:
        if node.type == "Split" and node.bottoms:
            for top in node.tops:
                copied[top] = (node.bottoms[0], node.bottom_blobs[0])
    rules = []
    for node in spec.layers:
        if len(node.bottoms) < 2 or not node.bottom_shapes:
            continue
        value, blob = node.bottoms[1], node.bottom_blobs[1]
        while value in copied:
            value, blob = copied[value]
        if value not in fed:
            continue
        p = node.param
        shape = tuple(node.bottom_shapes[0])
        if node.type == "SoftmaxWithLoss":
            classes = _classes(shape, p.softmax_param.axis)
            ignore = p.loss_param.ignore_label if p.loss_param.HasField("ignore_label") else None
        elif node.type == "InfogainLoss":
            classes = _classes(shape, p.infogain_loss_param.axis)
            ignore = p.loss_param.ignore_label if p.loss_param.HasField("ignore_label") else None
        elif node.type == "Accuracy":
            classes = _classes(shape, p.accuracy_param.axis)
            ignore = p.accuracy_param.ignore_label if p.accuracy_param.HasField("ignore_label") else None
        elif node.type == "MultinomialLogisticLoss":
            # multinomial_logistic_loss_layer.cpp: dim = count / num classes per item, no ignore_label.
            classes = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else None
            ignore = None
        else:
            continue
        if classes:
            rules.append(LabelRule(node.label, node.type, value, blob, classes, ignore))
    return rules


def check_labels(rules: list[LabelRule], lookup: Callable[[LabelRule], np.ndarray | None],
                 origin: Callable[[LabelRule, int], str] | None = None) -> None:
    """Raise a CaffeCompatError for the first label outside [0, classes) (ignore_label excepted) or not an
    integer; `lookup(rule)` gives the label batch (None: not known), `origin(rule, i)` where item i came from."""
    for rule in rules:
        labels = lookup(rule)
        if labels is None:
            continue
        flat = np.asarray(labels).reshape(-1)
        if flat.size == 0:
            continue
        low, high = flat.min(), flat.max()
        if 0 <= low and high < rule.classes and np.array_equal(flat, np.floor(flat)):
            continue  # the common case: one min, one max, one floor over the batch
        whole = flat == np.floor(flat)
        bad = ~(whole & (flat >= 0) & (flat < rule.classes))
        if rule.ignore is not None:
            bad &= flat != rule.ignore
        if not bad.any():
            continue
        i = int(np.argmax(bad))
        value = float(flat[i])
        where = origin(rule, i) if origin is not None else ""
        where = f" ({where})" if where else ""
        what = "is not an integer" if np.isfinite(value) and value != np.floor(value) \
            else f"is outside [0, {rule.classes})"
        ignore = f" or ignore_label {rule.ignore}" if rule.ignore is not None else \
            " (or set ignore_label for labels to skip)" if rule.type != "MultinomialLogisticLoss" else ""
        raise CaffeCompatError(
            f"layer '{printable(rule.layer)}' ({rule.type}): label {value:g} at item {i} of bottom "
            f"'{printable(rule.blob)}'{where} {what}: its bottom 0 has {rule.classes} classes, so labels must be "
            f"integers 0..{rule.classes - 1}{ignore}; fix the labels of the data or num_output")
