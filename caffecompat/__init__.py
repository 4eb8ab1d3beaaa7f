"""caffecompat: Caffe's nets, solvers, weights and datasets, run on ONNX Runtime.

It is also pycaffe: `import caffecompat as caffe` gives Caffe's Python API
(`caffe.Net`, `caffe.SGDSolver`, `caffe.io`, `caffe.NetSpec`, `caffe.layers`,
`caffe.params`, Python layers deriving from `caffe.Layer`). Its names are loaded
on first use, so `import caffecompat` (and the command line) stays fast.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any

try:  # The version is written once, in pyproject.toml; an installed caffecompat's metadata carries it.
    __version__ = importlib.metadata.version("caffecompat")
except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "0+unknown"

# pycaffe's top-level names -> the module that defines each.
_EXPORTS = {
    **{name: "caffecompat.pycaffe" for name in (
        "Net", "Solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver",
        "AdamSolver", "get_solver", "set_mode_cpu", "set_mode_gpu", "set_device", "set_random_seed",
        "layer_type_list", "TRAIN", "TEST")},
    "Blob": "caffecompat.runtime.blob",
    "Layer": "caffecompat.runtime.python_layers",
    "Classifier": "caffecompat.classifier",
    "NetSpec": "caffecompat.net_spec",
    "to_proto": "caffecompat.net_spec",
}
# Submodules named as pycaffe's, importable as attributes (caffe.io, caffe.proto.caffe_pb2, ...).
_SUBMODULES = frozenset({"io", "proto", "draw", "params", "layers", "net_spec", "classifier", "pycaffe", "shim"})


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"caffecompat.{name}")
    else:
        raise AttributeError(f"module 'caffecompat' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})
