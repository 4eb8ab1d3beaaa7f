"""caffecompat: Caffe's nets, solvers, weights and datasets, run on ONNX Runtime.

It is also pycaffe: `import caffecompat as caffe` gives Caffe's Python API
(`caffe.Net`, `caffe.SGDSolver`, `caffe.io`, `caffe.NetSpec`, `caffe.layers`,
`caffe.params`, `caffe.coord_map`, `caffe.Classifier`, `caffe.Detector`,
`caffe.Timer`, `caffe.init_log`/`caffe.log`, the multi-process names, Python
layers deriving from `caffe.Layer`). Its names are loaded on first use, so
`import caffecompat` (and the command line) stays fast; `from caffecompat import *`
gives them all. A name real pycaffe had and caffecompat lacks raises an
AttributeError whose one line says what to use instead.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any

from caffecompat.errors import NotSupportedError

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
    **{name: "caffecompat.process" for name in (
        "init_log", "log", "Timer", "solver_count", "set_solver_count", "solver_rank", "set_solver_rank",
        "set_multiprocess", "has_nccl", "NCCL")},
    "Blob": "caffecompat.runtime.blob",
    "Layer": "caffecompat.runtime.python_layers",
    "Classifier": "caffecompat.classifier",
    "Detector": "caffecompat.detector",
    "NetSpec": "caffecompat.net_spec",
    "to_proto": "caffecompat.net_spec",
}
# Submodules named as pycaffe's, importable as attributes (caffe.io, caffe.proto.caffe_pb2, ...).
_SUBMODULES = frozenset({"io", "proto", "draw", "params", "layers", "net_spec", "classifier", "detector",
                         "coord_map", "pycaffe", "shim"})
# Names real pycaffe had that caffecompat does not -> what to use instead.
_MISSING = {
    "_caffe": "caffecompat has no compiled core; its names are caffe.X (caffe.Net, caffe.Blob, caffe.Layer, ...)",
    "set_phase_train": "pycaffe removed it in 2015; pass the phase to the net: caffe.Net(model, caffe.TRAIN)",
    "set_phase_test": "pycaffe removed it in 2015; pass the phase to the net: caffe.Net(model, caffe.TEST)",
}

__all__ = sorted({*_EXPORTS, *_SUBMODULES, "__version__"} - {"shim"})


class MissingNameError(NotSupportedError, AttributeError):
    """`caffe.X` for a name real pycaffe had and caffecompat lacks: an AttributeError (so hasattr is False)
    whose message is the one line saying what to use instead."""


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"caffecompat.{name}")
    elif name in _MISSING:
        raise MissingNameError(f"caffe.{name}; {_MISSING[name]}")
    else:
        raise AttributeError(f"module 'caffecompat' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})
