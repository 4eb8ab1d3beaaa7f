"""The layer types BVLC Caffe registers, and what to tell a user whose net names another one.

A type Caffe has and caffecompat lacks is `not supported`; a type neither has
is a mistake (a typo, a custom layer, a layer of a Caffe fork): the message
says so and offers the closest known types.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from caffecompat.errors import CaffeCompatError, NotSupportedError

# Every REGISTER_LAYER_CLASS / REGISTER_LAYER_CREATOR name in BVLC Caffe's src/caffe/layers (master).
CAFFE_TYPES = frozenset({
    "AbsVal", "Accuracy", "ArgMax", "BNLL", "BatchNorm", "BatchReindex", "Bias", "Clip", "Concat",
    "ContrastiveLoss", "Convolution", "Crop", "Data", "Deconvolution", "Dropout", "DummyData", "ELU",
    "Eltwise", "Embed", "EuclideanLoss", "Exp", "Filter", "Flatten", "HDF5Data", "HDF5Output", "HingeLoss",
    "Im2col", "ImageData", "InfogainLoss", "InnerProduct", "Input", "LRN", "LSTM", "LSTMUnit", "Log", "MVN",
    "MemoryData", "MultinomialLogisticLoss", "PReLU", "Parameter", "Pooling", "Power", "Python", "RNN", "ReLU",
    "Reduction", "Reshape", "SPP", "Scale", "Sigmoid", "SigmoidCrossEntropyLoss", "Silence", "Slice", "Softmax",
    "SoftmaxWithLoss", "Split", "Swish", "TanH", "Threshold", "Tile", "WindowData",
})


def closest_types(type_name: str, known: Iterable[str], n: int = 3) -> list[str]:
    """Known types spelled most like `type_name` (a case-insensitive match first)."""
    known = sorted(set(known))
    same_case = [t for t in known if t.lower() == type_name.lower()]
    if same_case:
        return same_case
    by_lower = {t.lower(): t for t in known}
    near = [by_lower[t] for t in difflib.get_close_matches(type_name.lower(), list(by_lower), n=n, cutoff=0.6)]
    return near


def unknown_type_error(layer: str, type_name: str, supported: Iterable[str]) -> CaffeCompatError:
    """The error for layer `layer` of a type caffecompat has no implementation for."""
    supported = set(supported)
    if type_name in CAFFE_TYPES:
        return NotSupportedError(f"layer {layer} of type {type_name}")
    close = closest_types(type_name, supported | CAFFE_TYPES)
    if close:
        named = ", ".join(t if t in supported else f"{t} (not supported by caffecompat)" for t in close)
        hint = f"did you mean {named}?"
    else:
        hint = ("it is not a layer type of BVLC Caffe (a custom layer, or one from a Caffe fork?); "
                "caffecompat.layers.registry.supported_types() lists the types caffecompat runs")
    return CaffeCompatError(f"layer '{layer}' has unknown type '{type_name}': {hint}")
