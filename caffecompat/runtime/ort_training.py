"""ONNX Runtime's training API without PyTorch.

`import onnxruntime.training` runs that package's __init__, which imports
its optim package and through it torch. We need only two submodules,
`artifacts` (build training graphs) and `api` (Module, CheckpointState),
neither of which needs torch. So we register a bare package module for
`onnxruntime.training` whose __path__ points at the real folder, and import
the two submodules through it; the real __init__ never runs.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
import types
from collections.abc import Iterator

import onnxruntime

from caffecompat.errors import CaffeCompatError

_PACKAGE = "onnxruntime.training"


def _bare_package() -> None:
    if _PACKAGE in sys.modules:
        return
    folder = os.path.join(os.path.dirname(onnxruntime.__file__), "training")
    if not os.path.isdir(folder):
        raise CaffeCompatError(
            "this onnxruntime has no training support: install onnxruntime-training-cpu==1.19.2 "
            "(or onnxruntime-training==1.19.2 for CUDA) instead of plain onnxruntime"
        )
    package = types.ModuleType(_PACKAGE)
    package.__path__ = [folder]
    package.__package__ = _PACKAGE
    sys.modules[_PACKAGE] = package


_bare_package()
# Keep ORT's own INFO/WARNING chatter (graph transformers, etc.) out of Caffe-style logs.
onnxruntime.set_default_logger_severity(3)
artifacts = importlib.import_module(f"{_PACKAGE}.artifacts")
api = importlib.import_module(f"{_PACKAGE}.api")

__all__ = ["artifacts", "api"]


@contextlib.contextmanager
def native_stderr_quiet() -> Iterator[None]:
    """Silence C++ writes to stderr (fd 2) for the duration.

    ORT's gradient builder logs every graph transformer at INFO level through a
    logger the Python API does not reach; that noise would break Caffe-style
    logs. Failures still raise Python exceptions.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
