"""Python layers (`type: "Python"`, `python_param { module layer param_str }`): user code between ONNX segments.

As Caffe's PythonLayer: the class `layer` of module `module` is made with the
LayerParameter; before `setup(bottom, top)` it gets `param_str` and `phase`;
`reshape(bottom, top)` runs after setup and before every `forward(bottom, top)`;
`backward(top, propagate_down, bottom)` when the net's backward reaches it.
Bottoms and tops are the net's own Blobs (caffecompat.runtime.blob), and a
layer's `self.blobs` are parameters of the net (saved, loaded, shared by name,
updated by the solver like any layer's). The module is imported when a net
that names it is built, from sys.path and the working directory (Caffe's
embedded interpreter finds modules there).

`PythonLayers` holds the Python layers of one net. While a net is built
(`with layers.active(): netspec.build(...)`) the registry's "Python" type asks
it for the tops' shapes and the parameter blobs; it makes and sets up each
layer the first time, and later reports the shapes the layer's tops have.
A user error (missing module, an exception in the user's code) becomes one
line naming the layer, the module and the error.
"""

from __future__ import annotations

import contextvars
import importlib
import os
import sys
import traceback
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from caffecompat.errors import CaffeCompatError, NotSupportedError
from caffecompat.runtime.blob import Blob, BlobVec, Shape

if TYPE_CHECKING:
    from caffecompat.layers.registry import LayerNode

_ACTIVE: contextvars.ContextVar[PythonLayers | None] = contextvars.ContextVar("caffecompat_python_layers",
                                                                               default=None)


class Layer:
    """Base class of Python layers (pycaffe's `caffe.Layer`): override setup, reshape, forward, backward.

    `self.blobs` holds the layer's own parameter blobs (add them in setup with
    `self.blobs.add_blob(*shape)`); `self.param_str` and `self.phase` are set
    before `setup` is called.
    """

    def __init__(self, param: Any = None) -> None:
        self.blobs = BlobVec()

    @property
    def type(self) -> str:
        return "Python"

    def setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Layer::LayerSetUp: check parameters, make `self.blobs`, shape the tops (nothing by default)."""

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Layer::Reshape: give every top its shape; called before every forward."""
        raise NotImplementedError(f"{type(self).__name__} defines no reshape(bottom, top)")

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Layer::Forward: fill the tops' data from the bottoms'."""
        raise NotImplementedError(f"{type(self).__name__} defines no forward(bottom, top)")

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """Layer::Backward: fill the bottoms' diffs (where propagate_down) and the parameter diffs."""
        raise NotImplementedError(f"{type(self).__name__} defines no backward(top, propagate_down, bottom), "
                                  "and the net needs this layer's backward")


class PythonLayerError(CaffeCompatError, RuntimeError):
    """A Python layer's module could not be imported, or its code raised (pycaffe raised RuntimeError too)."""


def _where(error: BaseException) -> str:
    # The innermost frame of the user's code that raised, for the one-line message.
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" ({last.filename}:{last.lineno})"


def _describe(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def layer_label(node: LayerNode) -> str:
    """How messages name a Python layer: `layer 'loss' (Python, module pyloss, class EuclideanLossLayer)`."""
    if node.type != "Python":
        return f"layer '{node.name}' ({node.type})"
    pp = node.param.python_param
    return f"layer '{node.name}' (Python, module {pp.module or '?'}, class {pp.layer or '?'})"


def import_layer_class(node: LayerNode) -> type:
    """The class python_param names, imported from sys.path or the working directory."""
    pp = node.param.python_param
    if not pp.module or not pp.layer:
        missing = " and ".join(f for f in ("module", "layer") if not getattr(pp, f))
        raise PythonLayerError(f"layer '{node.name}' (Python): python_param has no {missing}; set "
                               "python_param { module: \"file name without .py\" layer: \"class name\" }")
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(pp.module)
    except ImportError as e:
        if isinstance(e, ModuleNotFoundError) and e.name == pp.module:
            raise PythonLayerError(f"{layer_label(node)}: cannot import module '{pp.module}': no {pp.module}.py "
                                   f"in the working directory ({cwd}) or on sys.path; put it there or add its "
                                   "folder to PYTHONPATH") from None
        raise PythonLayerError(f"{layer_label(node)}: importing module '{pp.module}' failed: "
                               f"{_describe(e)}{_where(e)}") from e
    except Exception as e:
        raise PythonLayerError(f"{layer_label(node)}: importing module '{pp.module}' failed: "
                               f"{_describe(e)}{_where(e)}") from e
    finally:
        if added:
            sys.path.remove(cwd)
    cls = getattr(module, pp.layer, None)
    if cls is None:
        raise PythonLayerError(f"{layer_label(node)}: module '{pp.module}' ({getattr(module, '__file__', '?')}) "
                               f"has no class '{pp.layer}'")
    return cls


def call(node: LayerNode, obj: Any, method: str, *args: Any) -> None:
    """obj.method(*args), a user error becoming a one-line PythonLayerError naming layer, module and error."""
    try:
        getattr(obj, method)(*args)
    except CaffeCompatError:
        raise
    except Exception as e:
        raise PythonLayerError(f"{layer_label(node)}: {method} raised {_describe(e)}{_where(e)}") from e


class PythonLayers:
    """The Python layers of one net, by layer index, with the net's blobs they read and write."""

    def __init__(self, phase: int, blobs: MutableMapping[str, Blob]) -> None:
        self.phase = phase
        self.blobs = blobs  # the net's blobs by Caffe blob name, shared with the runtime
        self.objects: dict[int, Any] = {}
        self.bottoms: dict[int, list[Blob]] = {}
        self.tops: dict[int, list[Blob]] = {}
        self._call_reshape = False

    @contextmanager
    def active(self, call_reshape: bool = False) -> Iterator[PythonLayers]:
        """Build nets with these layers; with call_reshape, set-up layers get reshape() (Net::Reshape)."""
        token = _ACTIVE.set(self)
        self._call_reshape = call_reshape
        try:
            yield self
        finally:
            self._call_reshape = False
            _ACTIVE.reset(token)

    def blob(self, name: str, shape: Shape | None = None) -> Blob:
        """The net's blob `name` (made on first use), reshaped to `shape` when given."""
        b = self.blobs.get(name)
        if b is None:
            b = self.blobs[name] = Blob(shape or ())
        elif shape is not None and b.shape != tuple(shape):
            b.reshape(*shape)
        return b

    def _connect(self, node: LayerNode) -> None:
        self.bottoms[node.index] = [self.blob(b, s) for b, s in zip(node.bottom_blobs, node.bottom_shapes)]
        self.tops[node.index] = [self.blob(t) for t in node.top_blobs]

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        """Shapes of the layer's tops: set up (made, setup, reshape) the first time; afterwards as they are."""
        obj = self.objects.get(node.index)
        if obj is None:
            builtin = HOST_TYPES.get(node.type)
            if builtin:
                module, _, name = builtin.partition(":")
                cls = getattr(importlib.import_module(module), name)
            else:
                cls = import_layer_class(node)
            try:
                obj = cls(node.param)
            except Exception as e:
                raise PythonLayerError(f"{layer_label(node)}: creating the layer raised {_describe(e)}"
                                       f"{_where(e)}") from e
            if not hasattr(obj, "blobs"):
                obj.blobs = BlobVec()
            self._connect(node)
            # PythonLayer::LayerSetUp: param_str and phase are set, then setup; Layer::SetUp then reshapes.
            obj.param_str = node.param.python_param.param_str
            obj.phase = self.phase
            self.objects[node.index] = obj
            call(node, obj, "setup", self.bottoms[node.index], self.tops[node.index])
            call(node, obj, "reshape", self.bottoms[node.index], self.tops[node.index])
        elif self._call_reshape:
            self._connect(node)
            call(node, obj, "reshape", self.bottoms[node.index], self.tops[node.index])
        else:
            self._connect(node)
        return [t.shape for t in self.tops[node.index]]

    def param_blobs(self, node: LayerNode) -> list[Blob]:
        """The layer's own parameter blobs (its `self.blobs`)."""
        return list(self.objects[node.index].blobs)

    def reshape(self, node: LayerNode) -> None:
        """Layer::Forward's Reshape: the user's reshape(bottom, top) with the net's current blobs."""
        call(node, self.objects[node.index], "reshape", self.bottoms[node.index], self.tops[node.index])

    def forward(self, node: LayerNode) -> None:
        """The user's forward(bottom, top)."""
        call(node, self.objects[node.index], "forward", self.bottoms[node.index], self.tops[node.index])

    def backward(self, node: LayerNode, propagate_down: list[bool]) -> None:
        """The user's backward(top, propagate_down, bottom)."""
        call(node, self.objects[node.index], "backward", self.tops[node.index], list(propagate_down),
             self.bottoms[node.index])


def host_of(node: LayerNode) -> PythonLayers:
    """The PythonLayers that set up `node` (remembered on the node), or the one being built with."""
    host = getattr(node, "runtime", None) or _ACTIVE.get()
    if host is None:
        raise NotSupportedError(f"layer {node.label} of type {node.type} here: {node.type} layers run in "
                                "caffecompat.Net, the solvers and caffecompat train/test/time, not in an ONNX file")
    node.runtime = host
    return host


# Built-in layer types that run on the host like Python layers: type -> the module of their host class.
HOST_TYPES = {"Python": "", "HDF5Output": "caffecompat.layers.hdf5_output:HDF5OutputHost"}


def is_host_layer(type_name: str) -> bool:
    """Whether layers of this type run on the host between ONNX segments (Python, HDF5Output)."""
    return type_name in HOST_TYPES


def has_python_layers(net: Any) -> bool:
    """Whether a NetParameter names a Python layer or another host-side type (before any state filtering)."""
    return any(is_host_layer(lp.type) for lp in net.layer)


def param_arrays(host: PythonLayers, node: LayerNode) -> list[np.ndarray]:
    """The values of the layer's parameter blobs (the arrays themselves, no copy)."""
    return [b.data for b in host.param_blobs(node)]
