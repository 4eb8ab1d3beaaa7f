"""pycaffe's Net, its blobs and layers, its solvers and the mode functions, over caffecompat's runtime.

    import caffecompat as caffe
    net = caffe.Net("deploy.prototxt", caffe.TEST, weights="weights.caffemodel")
    net.blobs["data"].data[...] = image
    out = net.forward()

A Net runs as caffecompat.runtime.segments runs it: every blob's `.data` and
`.diff` are numpy arrays the layers read and write, `forward`/`backward` run
any layer range, and Python layers sit between the ONNX segments. The
semantics are Caffe's: blobs hold what Caffe's hold after each call (in-place
layers overwrite), parameter diffs accumulate until `clear_param_diffs()`,
data written into a blob before `forward(start=...)` feeds that layer, and a
reshaped input blob reshapes the net. The solvers are caffecompat's solver
loop (same logs, snapshots and numbers as `caffecompat train`); `solver.net`
and `solver.test_nets` are Net views over its live parameters.

The mode (set_mode_cpu / set_mode_gpu / set_device) is global, as Caffe's:
every net and solver, existing ones too, runs on the current mode from its
next call. Calls on one Net (or Solver) are serialized by a lock, since they
all read and write the same blobs: `forward` from several threads returns
each call's own outputs (copies of the output blobs, taken under the lock).
`net.layers[i].blobs` and `net.params[name]` are the same Blob objects, whose
arrays the solvers update in place.
"""

from __future__ import annotations

import contextlib
import functools
import os
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np

from caffecompat import glog
from caffecompat.errors import CaffeCompatError
from caffecompat.layers import registry
from caffecompat.proto import caffe_pb2
from caffecompat.runtime.blob import Blob, BlobVec
from caffecompat.runtime.python_layers import Layer

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST

# As pycaffe's glog: GLOG_minloglevel, GLOG_logtostderr and GLOG_log_dir from the environment apply.
glog.configure_once("python")

_MODE: dict[str, Any] = {"gpu": False, "device": 0}
_RNG: list[np.random.Generator] = [np.random.default_rng()]


def set_mode_cpu() -> None:
    """Run every net, existing ones from their next call, on the CPU (the default)."""
    _MODE["gpu"] = False


def set_mode_gpu() -> None:
    """Run every net, existing ones from their next call, on CUDA device `set_device(n)` (default 0); needs
    onnxruntime-gpu."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise CaffeCompatError(f"set_mode_gpu: this onnxruntime ({ort.__version__}) has no CUDA execution provider: "
                               "pip uninstall -y onnxruntime && pip install 'onnxruntime-gpu[cuda,cudnn]'")
    _MODE["gpu"] = True


def set_device(device_id: int) -> None:
    """The CUDA device nets run on in GPU mode (existing nets too, from their next call)."""
    if int(device_id) < 0:
        raise CaffeCompatError(f"set_device({device_id}): device ids start at 0")
    _MODE["device"] = int(device_id)


def set_random_seed(seed: int) -> None:
    """Caffe::set_random_seed: the seed of fillers, Dropout masks and data shuffling of nets made afterwards."""
    _RNG[0] = np.random.default_rng(int(seed))


def layer_type_list() -> list[str]:
    """Every layer type caffecompat runs (LayerRegistry::LayerTypeList), sorted."""
    return registry.supported_types()


_PROVIDERS: dict[tuple[bool, int], list] = {}  # mode -> provider list, resolved once (CUDA's libraries load once)


def _providers() -> list:
    from caffecompat.runtime.providers import resolve

    key = (bool(_MODE["gpu"]), int(_MODE["device"]))
    if key not in _PROVIDERS:
        _PROVIDERS[key] = resolve(_MODE["device"]) if _MODE["gpu"] else ["CPUExecutionProvider"]
    return _PROVIDERS[key]


@contextlib.contextmanager
def _calling(*engines: Any) -> Iterator[None]:
    """Hold the engines' locks (one call at a time per net) with their sessions on the current mode."""
    with contextlib.ExitStack() as stack:
        providers = _providers()
        for engine in engines:
            stack.enter_context(engine.lock)
            # Caffe::mode() is global: a net made before set_mode_gpu/cpu runs on the new mode.
            engine.set_providers(providers)
        yield


def _net_rng() -> np.random.Generator:
    # Every net draws from Caffe's one global generator; each gets its own stream seeded from it.
    return np.random.Generator(np.random.PCG64(int(_RNG[0].integers(2**63))))


# -- Net -----------------------------------------------------------------------------


class _LayerView:
    """A layer of a Net as pycaffe shows it: `type`, its parameter `blobs`, `setup` and `reshape`."""

    def __init__(self, node: Any, blobs: BlobVec) -> None:
        self._node = node
        self.type = node.type
        self.blobs = blobs

    def _tops_for(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> list[tuple[int, ...]]:
        import dataclasses

        node = self._node
        if len(bottom) != len(node.bottom_blobs) or len(top) != len(node.top_blobs):
            raise CaffeCompatError(f"layer '{node.label}' ({node.type}): give {len(node.bottom_blobs)} bottom and "
                                   f"{len(node.top_blobs)} top blobs, got {len(bottom)} and {len(top)}")
        probe = dataclasses.replace(node, bottom_shapes=[tuple(b.shape) for b in bottom])
        impl = registry.get(probe)
        impl.check_counts(probe)
        if impl.source:
            return [tuple(t.shape) for t in top]  # a data layer's tops keep the shape its data gives them
        wanted = [tuple(shape) for shape in impl.param_shapes(probe)]
        if node.param_shapes and wanted != [tuple(shape) for shape in node.param_shapes]:
            # Layer::Reshape's checks (InnerProduct's "Input size incompatible with inner product parameters").
            raise CaffeCompatError(f"layer '{node.label}' ({node.type}): bottoms of shape "
                                   f"{[list(b.shape) for b in bottom]} need parameters of shape "
                                   f"{[list(w) for w in wanted]}, the layer has "
                                   f"{[list(w) for w in node.param_shapes]}")
        return impl.top_shapes(probe)

    def setup(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        """Layer::LayerSetUp: check the layer's parameters against these bottoms (caffecompat's C++-type layers
        keep no other state, so nothing else changes)."""
        self._tops_for(bottom, top)

    def reshape(self, bottom: Sequence[Blob], top: Sequence[Blob]) -> None:
        """Layer::Reshape: shape the tops as this layer makes them from these bottoms' shapes."""
        for blob, shape in zip(top, self._tops_for(bottom, top)):
            blob.reshape(*shape)

    def __repr__(self) -> str:
        return f"<Layer type={self.type} blobs={len(self.blobs)}>"


def _parse_net_args(args: tuple, phase: int | None, level: int, stages: Sequence[str] | None,
                    weights: str | None) -> tuple[int, int, list[str], str | None]:
    # Net(file, phase[, level, stages, weights]) and the legacy Net(file, weights, phase).
    args = list(args)
    if args and isinstance(args[0], (str, os.PathLike)):
        if weights is not None:
            raise TypeError("Net(): weights given twice")
        weights = os.fspath(args.pop(0))
    if args:
        if phase is not None:
            raise TypeError("Net(): phase given twice")
        phase = args.pop(0)
    for name in ("level", "stages", "weights"):
        if args:
            value = args.pop(0)
            if name == "level":
                level = value
            elif name == "stages":
                stages = value
            else:
                weights = value
    if args:
        raise TypeError("Net(network_file, phase, level=0, stages=None, weights=None): too many arguments")
    if phase is None:
        raise TypeError("Net(network_file, phase, ...): give the phase, caffecompat.TRAIN or caffecompat.TEST")
    if phase not in (TRAIN, TEST):
        raise CaffeCompatError(f"Net(): phase {phase!r}: use caffecompat.TRAIN or caffecompat.TEST")
    return int(phase), int(level), list(stages or []), None if weights is None else os.fspath(weights)


class Net:
    """Caffe's Net as pycaffe exposes it (see the module docstring)."""

    def __init__(self, network_file: str | os.PathLike, *args: Any, phase: int | None = None, level: int = 0,
                 stages: Sequence[str] | None = None, weights: str | os.PathLike | None = None) -> None:
        from caffecompat.formats.net import read_net_prototxt
        from caffecompat.net.state import make_state
        from caffecompat.net.weights import init_params, load_caffemodel
        from caffecompat.runtime.feeder import build_with_data
        from caffecompat.runtime.segments import SegmentedNet, param_blobs

        phase, level, stages, weights = _parse_net_args(args, phase, level, stages,
                                                         None if weights is None else os.fspath(weights))
        network_file = os.fspath(network_file)
        if weights is not None and not Path(weights).is_file():
            raise CaffeCompatError(f"{weights}: no such caffemodel file")
        net = read_net_prototxt(network_file)
        rng = _net_rng()
        feeder = build_with_data(net, make_state(net, phase, level, stages), rng, network_file)
        try:
            values = init_params(feeder.spec, rng)
            if weights is not None:
                load_caffemodel(feeder.spec, values, weights)
            engine = SegmentedNet(feeder, param_blobs(feeder.spec, values, None, feeder.python), _providers(), rng)
        except BaseException:
            feeder.close()
            raise
        self._attach(engine)
        self._finalizer = weakref.finalize(self, feeder.close)

    @classmethod
    def _view(cls, engine: Any, owner: Any = None) -> Net:
        """A Net over an engine someone else owns (a solver's train or test net); the view keeps its owner
        alive (`net = get_solver(f).net` must not close the solver's data under the net)."""
        net = cls.__new__(cls)
        net._attach(engine)
        net._owner = owner
        return net

    def _attach(self, engine: Any) -> None:
        self._engine = engine

    # -- structure ---------------------------------------------------------------------
    @property
    def _spec(self):
        return self._engine.spec

    @property
    def _layer_names(self) -> list[str]:
        return [node.name for node in self._spec.layers]

    @property
    def _blob_names(self) -> list[str]:
        return list(self._engine.blob_names)

    @property
    def blobs(self) -> OrderedDict[str, Blob]:
        """Blob name -> Blob, from input to output (split blobs included), as Net::blobs."""
        return OrderedDict((b, self._engine.blobs[b]) for b in self._engine.blob_names)

    @property
    def _blob_loss_weights(self) -> list[float]:
        """Net::blob_loss_weights: the loss weight of each blob, in `_blob_names` order (0 for no loss)."""
        weights = dict.fromkeys(self._engine.blob_names, 0.0)
        for node in self._spec.layers:
            for blob, w in zip(node.top_blobs, node.loss_weights):
                weights[blob] = w
        return list(weights.values())

    @property
    def blob_loss_weights(self) -> OrderedDict[str, float]:
        """Blob name -> the loss weight Caffe gives it (0 for blobs that are no loss)."""
        return OrderedDict(zip(self._blob_names, self._blob_loss_weights))

    def _bottom_ids(self, i: int) -> list[int]:
        """Net::bottom_ids: the indices (into `_blob_names`) of layer i's bottoms."""
        return [self._blob_names.index(b) for b in self._layer_node(i, "_bottom_ids").bottom_blobs]

    def _top_ids(self, i: int) -> list[int]:
        """Net::top_ids: the indices (into `_blob_names`) of layer i's tops."""
        return [self._blob_names.index(b) for b in self._layer_node(i, "_top_ids").top_blobs]

    def _layer_node(self, i: int, what: str):
        layers = self._spec.layers
        if not -len(layers) <= int(i) < len(layers):
            raise IndexError(f"Net.{what}({i}): the net has {len(layers)} layers")
        return layers[int(i)]

    @property
    def _inputs(self) -> list[int]:
        """Net::input_blob_indices: the indices of the Input layers' tops."""
        return [self._blob_names.index(b) for b in self.inputs]

    @property
    def _outputs(self) -> list[int]:
        """Net::output_blob_indices: the indices of the output blobs."""
        return [self._blob_names.index(b) for b in self.outputs]

    # -- callbacks (Net::add_before_forward & co, pycaffe's before_forward ...) ----------
    def _hook(self, when: str, callback: Callable[[int], Any]) -> None:
        if not callable(callback):
            raise CaffeCompatError(f"Net.{when}: give a callable taking the layer index, got "
                                   f"{type(callback).__name__}")
        with self._engine.lock:
            self._engine.hooks[when].append(callback)

    def before_forward(self, callback: Callable[[int], Any]) -> None:
        """Call `callback(i)` before layer i's Forward, every forward pass (layers then run one by one)."""
        self._hook("before_forward", callback)

    def after_forward(self, callback: Callable[[int], Any]) -> None:
        """Call `callback(i)` after layer i's Forward: the blobs hold what layer i wrote."""
        self._hook("after_forward", callback)

    def before_backward(self, callback: Callable[[int], Any]) -> None:
        """Call `callback(i)` before layer i's Backward (every layer of the range, needing backward or not)."""
        self._hook("before_backward", callback)

    def after_backward(self, callback: Callable[[int], Any]) -> None:
        """Call `callback(i)` after layer i's Backward."""
        self._hook("after_backward", callback)

    def _layer_blobs(self, node) -> BlobVec:
        host = self._engine.host
        if node.type == "Python" and host is not None:
            return host.objects[node.index].blobs
        return BlobVec(self._engine.params[name] for name in node.param_names)

    @property
    def layers(self) -> list:
        """The layers: Python layers are the user's own objects, the others show `type` and `blobs`."""
        out = []
        host = self._engine.host
        for node in self._spec.layers:
            if node.type == "Python" and host is not None:
                out.append(host.objects[node.index])
            else:
                out.append(_LayerView(node, self._layer_blobs(node)))
        return out

    @property
    def layer_dict(self) -> OrderedDict[str, Any]:
        return OrderedDict(zip(self._layer_names, self.layers))

    @property
    def params(self) -> OrderedDict[str, BlobVec]:
        """Layer name -> its parameter blobs, for layers that have some."""
        out: OrderedDict[str, BlobVec] = OrderedDict()
        for node in self._spec.layers:
            if node.param_names:
                out[node.name] = self._layer_blobs(node)
        return out

    @property
    def inputs(self) -> list[str]:
        """The net's input blobs: the tops of its Input layers."""
        return [b for node in self._spec.layers if node.type == "Input" for b in node.top_blobs]

    @property
    def outputs(self) -> list[str]:
        """The net's output blobs (produced and not consumed), in Caffe's order (by name)."""
        return [self._engine.value_blob[v] for v in self._spec.outputs]

    @property
    def top_names(self) -> OrderedDict[str, list[str]]:
        return OrderedDict((node.name, list(node.top_blobs)) for node in self._spec.layers)

    @property
    def bottom_names(self) -> OrderedDict[str, list[str]]:
        return OrderedDict((node.name, list(node.bottom_blobs)) for node in self._spec.layers)

    def _layer_index(self, name: str, what: str) -> int:
        names = self._layer_names
        if name not in names:
            raise CaffeCompatError(f"Net.{what}: the net has no layer named {name!r}")
        return names.index(name)

    # -- passes ----------------------------------------------------------------------
    def forward(self, blobs: Sequence[str] | None = None, start: str | None = None, end: str | None = None,
                **kwargs: np.ndarray) -> dict[str, np.ndarray]:
        """Run layers start..end (names; default all) forward; returns {blob: data} of the outputs (or of
        `end`'s tops) plus `blobs`, copies taken under the net's lock (so threads each get their own call's).
        Keyword arguments set the input blobs first (all of them)."""
        with _calling(self._engine):
            return self._forward_call(list(blobs or []), start, end, kwargs)

    def _forward_call(self, blobs: list[str], start: str | None, end: str | None,
                      kwargs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        first = self._layer_index(start, "forward(start=...)") if start is not None else 0
        if end is not None:
            last = self._layer_index(end, "forward(end=...)")
            outputs = set(self.top_names[end] + blobs)
        else:
            last = len(self._spec.layers) - 1
            outputs = set(self.outputs + blobs)
        if kwargs:
            if set(kwargs) != set(self.inputs):
                raise CaffeCompatError(f"Net.forward: input blob arguments {sorted(kwargs)} do not match the net's "
                                       f"inputs {self.inputs}")
            for name, array in kwargs.items():
                blob = self.blobs[name]
                if np.shape(array)[0] != blob.shape[0]:
                    raise CaffeCompatError(f"Net.forward: input '{name}' has {np.shape(array)[0]} items, the net's "
                                           f"batch is {blob.shape[0]}: reshape the blob or use forward_all")
                blob.data[...] = array
        self._engine.forward(first, last)
        return {out: self._engine.blobs[out].data.copy() for out in outputs}

    def backward(self, diffs: Sequence[str] | None = None, start: str | None = None, end: str | None = None,
                 **kwargs: np.ndarray) -> dict[str, np.ndarray]:
        """Run layers start..end (default last..first) backward; returns {blob: diff} of the inputs (or of
        `end`'s bottoms) plus `diffs` (copies, as forward's). Keyword arguments set the output blobs' diffs
        first (all of them)."""
        with _calling(self._engine):
            return self._backward_call(list(diffs or []), start, end, kwargs)

    def _backward_call(self, diffs: list[str], start: str | None, end: str | None,
                       kwargs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        first = self._layer_index(start, "backward(start=...)") if start is not None else len(self._spec.layers) - 1
        if end is not None:
            last = self._layer_index(end, "backward(end=...)")
            outputs = set(self.bottom_names[end] + diffs)
        else:
            last = 0
            outputs = set(self.inputs + diffs)
        if kwargs:
            if set(kwargs) != set(self.outputs):
                raise CaffeCompatError(f"Net.backward: top diff arguments {sorted(kwargs)} do not match the net's "
                                       f"outputs {self.outputs}")
            for name, array in kwargs.items():
                blob = self.blobs[name]
                if np.shape(array)[0] != blob.shape[0]:
                    raise CaffeCompatError(f"Net.backward: diff of '{name}' has {np.shape(array)[0]} items, the "
                                           f"net's batch is {blob.shape[0]}")
                blob.diff[...] = array
        self._engine.backward(first, last)
        return {out: self._engine.blobs[out].diff.copy() for out in outputs}

    def _forward(self, start: int, end: int) -> float:
        """Net::ForwardFromTo(start, end) by layer index; returns the loss of those layers."""
        first, last = self._index_range(start, end, "_forward")
        if first > last:
            raise CaffeCompatError(f"Net._forward({start}, {end}): start must not be after end")
        with _calling(self._engine):
            return float(self._engine.forward(first, last))

    def _backward(self, start: int, end: int) -> None:
        """Net::BackwardFromTo(start, end) by layer index (start >= end)."""
        first, last = self._index_range(start, end, "_backward")
        if first < last:
            raise CaffeCompatError(f"Net._backward({start}, {end}): start must not be before end")
        with _calling(self._engine):
            self._engine.backward(first, last)

    def _index_range(self, start: int, end: int, what: str) -> tuple[int, int]:
        n = len(self._spec.layers)
        for i in (start, end):
            # Net::ForwardFromTo: CHECK_GE(start, 0) and CHECK_LT(end, layers_.size()).
            if not 0 <= int(i) < n:
                raise CaffeCompatError(f"Net.{what}({start}, {end}): layer indices run from 0 to {n - 1}")
        return int(start), int(end)

    def _batch(self, arrays: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """Split `arrays` into the net's batch size; the last batch padded with zeros."""
        if not arrays:
            return
        num = len(next(iter(arrays.values())))
        size = next(iter(self.blobs.values())).shape[0]
        for i in range(0, num - num % size, size):
            yield {name: a[i:i + size] for name, a in arrays.items()}
        rest = num % size
        if rest:
            yield {name: np.concatenate([a[-rest:], np.zeros((size - rest, *a.shape[1:]), a.dtype)])
                   for name, a in arrays.items()}

    def forward_all(self, blobs: Sequence[str] | None = None, **kwargs: np.ndarray) -> dict[str, np.ndarray]:
        """forward() over inputs of any length, batch by batch; returns each output for all items."""
        with self._engine.lock:
            return self._forward_all(blobs, kwargs)

    def _forward_all(self, blobs: Sequence[str] | None, kwargs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        collected: dict[str, list[np.ndarray]] = {out: [] for out in set(self.outputs + list(blobs or []))}
        for batch in self._batch(kwargs):
            for name, data in self.forward(blobs=blobs, **batch).items():
                collected[name].extend(data)
        outs = {name: np.asarray(items) for name, items in collected.items()}
        return _unpad(outs, kwargs)

    def forward_backward_all(self, blobs: Sequence[str] | None = None, diffs: Sequence[str] | None = None,
                             **kwargs: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """forward() and backward() over inputs (and output diffs) of any length, batch by batch."""
        with self._engine.lock:
            return self._forward_backward_all(blobs, diffs, kwargs)

    def _forward_backward_all(self, blobs: Sequence[str] | None, diffs: Sequence[str] | None,
                              kwargs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        all_outs: dict[str, list] = {out: [] for out in set(self.outputs + list(blobs or []))}
        all_diffs: dict[str, list] = {d: [] for d in set(self.inputs + list(diffs or []))}
        forward_batches = self._batch({k: kwargs[k] for k in self.inputs if k in kwargs})
        backward_batches = self._batch({k: kwargs[k] for k in self.outputs if k in kwargs})
        for fb, bb in zip_longest(forward_batches, backward_batches, fillvalue={}):
            for name, data in self.forward(blobs=blobs, **fb).items():
                all_outs[name].extend(data)
            for name, diff in self.backward(diffs=diffs, **bb).items():
                all_diffs[name].extend(diff)
        outs = _unpad({k: np.asarray(v) for k, v in all_outs.items()}, kwargs)
        grads = _unpad({k: np.asarray(v) for k, v in all_diffs.items()}, kwargs)
        return outs, grads

    def reshape(self) -> None:
        """Net::Reshape: every layer's shapes again from the input blobs' shapes (Python layers' reshape runs)."""
        with self._engine.lock:
            self._engine.rebuild(call_reshape=True)

    def clear_param_diffs(self) -> None:
        """Net::ClearParamDiffs: zero every parameter's diff."""
        with self._engine.lock:
            self._engine.clear_param_diffs()

    # -- parameters ------------------------------------------------------------------
    def _param_values(self) -> dict[str, np.ndarray]:
        return {name: blob.data for name, blob in self._engine.params.items()}

    def copy_from(self, path: str | os.PathLike) -> None:
        """Net::CopyTrainedLayersFrom: copy a .caffemodel's blobs into the layers of the same names."""
        from caffecompat.net.weights import load_caffemodel

        with self._engine.lock:
            values = dict(self._param_values())
            load_caffemodel(self._spec, values, os.fspath(path))
            for name, blob in self._engine.params.items():
                if values[name] is not blob.data:
                    blob.data[...] = values[name]

    def share_with(self, other: Net) -> None:
        """Net::ShareTrainedLayersWith: this net's layers show `other`'s parameter values (by layer name)."""
        mine = {}
        for node in self._spec.layers:
            mine.setdefault(node.name, node)  # the first layer of a name, as Caffe looks it up
        for source in other._spec.layers:
            if not source.param_names:
                continue
            target = mine.get(source.name)
            if target is None:
                glog.info("net.cpp:679", f"Ignoring source layer {source.name}")
                continue
            if len(target.param_names) != len(source.param_names):
                raise CaffeCompatError(f"share_with: incompatible number of blobs for layer '{source.name}'")
            for j, (t, s) in enumerate(zip(target.param_names, source.param_names)):
                src, dst = other._engine.params[s], self._engine.params[t]
                if src.shape != dst.shape:
                    raise CaffeCompatError(f"share_with: cannot share param {j} weights from layer '{source.name}'; "
                                           f"shape mismatch: source {list(src.shape)}, target {list(dst.shape)}")
                dst._bind(src.data, dst.diff)

    def save(self, path: str | os.PathLike) -> None:
        """Net::ToProto without diffs, written as a binary .caffemodel."""
        from caffecompat.formats.caffemodel import write_caffemodel
        from caffecompat.solver.snapshot import net_to_proto

        write_caffemodel(os.fspath(path), net_to_proto(self._spec, self._param_values()))

    def save_hdf5(self, path: str | os.PathLike) -> None:
        """Net::ToHDF5: group `data`, one group per layer, dataset `<i>` per parameter the layer owns."""
        from caffecompat import outfiles
        from caffecompat.formats.hdf5_snapshot import net_to_hdf5

        outfiles.write_atomic(os.fspath(path), net_to_hdf5(self._spec, self._param_values(), what="save_hdf5"),
                              "HDF5 weights")

    def load_hdf5(self, path: str | os.PathLike) -> None:
        """Net::CopyTrainedLayersFromHDF5: copy `data/<layer>/<i>` into the LAST layer of each name."""
        from caffecompat.formats.hdf5_snapshot import is_hdf5

        if os.path.isfile(path) and not is_hdf5(path):
            raise CaffeCompatError(f"load_hdf5: {path} is not an HDF5 file; load a binary .caffemodel with copy_from")
        self.copy_from(path)  # CopyTrainedLayersFrom reads an HDF5 file as such

    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Give the net's first layer, a MemoryData layer, the arrays its batches come from (no copy: keep
        them unchanged while the net uses them, as Caffe's MemoryDataLayer::Reset holds the pointers)."""
        # pycaffe's _Net_set_input_arrays: 1-d labels become N x 1 x 1 x 1.
        if isinstance(labels, np.ndarray) and labels.ndim == 1:
            labels = np.ascontiguousarray(labels[:, np.newaxis, np.newaxis, np.newaxis])
        self._set_input_arrays(data, labels)

    def _set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """_caffe.cpp's Net_SetInputArrays: 4-d float32 C-contiguous data and N x 1 x 1 x 1 labels."""
        from caffecompat.data.memory_data import MemorySource

        first = self._spec.layers[0] if self._spec.layers else None
        source = self._engine.feeder.source_of(first) if first is not None else None
        # Net_SetInputArrays: only a first layer of type MemoryData takes arrays.
        if not isinstance(source, MemorySource):
            raise CaffeCompatError("set_input_arrays may only be called if the first layer is a MemoryData layer")
        with self._engine.lock:
            source.reset(data, labels)

    def __repr__(self) -> str:
        return f"<caffecompat.Net '{self._spec.name}' with {len(self._spec.layers)} layers>"


def _unpad(outs: dict[str, np.ndarray], kwargs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    # forward_all's last batch was padded with zeros: drop those items.
    if not outs or not kwargs:
        return outs
    pad = len(next(iter(outs.values()))) - len(next(iter(kwargs.values())))
    return {k: v[:-pad] for k, v in outs.items()} if pad > 0 else outs


# -- solvers ------------------------------------------------------------------------------


class _Callback:
    def __init__(self, on_start: Any, on_gradients_ready: Any) -> None:
        self.on_start = on_start
        self.on_gradients_ready = on_gradients_ready


class Solver:
    """Caffe's Solver as pycaffe exposes it: `net`, `test_nets`, `iter`, `step`, `solve`, `snapshot`, `restore`."""

    _type: str | None = None  # the update rule a subclass forces (SGDSolver(...) is SGD whatever the file says)

    def __init__(self, filename: str | os.PathLike) -> None:
        from caffecompat.formats.solver import read_solver_prototxt
        from caffecompat.solver.nets import check_net_files

        filename = os.fspath(filename)
        param = read_solver_prototxt(filename)
        if self._type is not None:
            param.type = self._type
            param.ClearField("solver_type")
        check_net_files(param, filename)
        self._solver = _PySolver(param, filename, weights=list(param.weights), providers=_providers())
        # The data sources' threads and databases close with the solver, as they do with a Net.
        self._finalizer = weakref.finalize(self, self._solver.close)
        # The Net views, held weakly: a view keeps the solver alive, the solver does not keep its views (no
        # reference cycle, so a dropped solver closes its data at once).
        self._views: dict[int, weakref.ref] = {}

    @property
    def net(self) -> Net:
        """The training net, a view over the solver's live parameters."""
        return self._view(-1, self._solver.net.engine)

    @property
    def test_nets(self) -> list[Net]:
        """The test nets, sharing the training net's parameters by layer name."""
        return [self._view(i, t.runner.engine) for i, t in enumerate(self._solver.tests)]

    def _view(self, key: int, engine: Any) -> Net:
        ref = self._views.get(key)
        net = ref() if ref is not None else None
        if net is None:
            net = Net._view(engine, self)
            self._views[key] = weakref.ref(net)
        return net

    @property
    def iter(self) -> int:
        return self._solver.iter

    @property
    def param(self) -> caffe_pb2.SolverParameter:
        """The SolverParameter (its base_lr may be changed between steps)."""
        return self._solver.param

    @property
    def lr(self) -> float:
        """The learning rate of the current iteration (SGDSolver::GetLearningRate)."""
        return float(self._solver.schedule.rate(self._solver.iter))

    def _calling(self) -> contextlib.AbstractContextManager:
        # One call at a time on the solver's nets, on the current mode (see the module docstring).
        return _calling(self._solver.net.engine, *(t.runner.engine for t in self._solver.tests))

    def step(self, iters: int) -> None:
        """Solver::Step: `iters` iterations (tests, forward/backward, display, update, snapshots). Input
        layers' blobs keep what the script wrote into them (solver.net.blobs[...].data[...] = x)."""
        with self._calling():
            self._solver.step(int(iters))

    def solve(self, resume_file: str | os.PathLike | None = None) -> None:
        """Solver::Solve: optionally restore a .solverstate, then run to max_iter."""
        with self._calling():
            self._solver.solve(None if resume_file is None else os.fspath(resume_file))

    def snapshot(self) -> None:
        """Write <prefix>_iter_<N>.caffemodel and .solverstate."""
        with self._calling():
            self._solver.snapshot()

    def restore(self, path: str | os.PathLike) -> None:
        """Restore iteration, weights and solver history from a .solverstate."""
        with self._calling():
            self._solver.restore(os.fspath(path))

    def add_callback(self, on_start: Any, on_gradients_ready: Any) -> None:
        """Call on_start() at the start of every iteration and on_gradients_ready() before every update."""
        self._solver.callbacks.append(_Callback(on_start, on_gradients_ready))

    def apply_update(self) -> None:
        """SGDSolver::ApplyUpdate: the update of the current iteration from the diffs as they are."""
        from caffecompat.solver.updates import log_clip, log_iteration_lr

        s = self._solver
        with self._calling():
            rate = s.schedule.rate(s.iter)
            log_iteration_lr(s.param, s.iter, rate)
            norm = s.net.apply_update(rate, s.iter)
            if norm is not None:
                log_clip(norm, s.param.clip_gradients)

    def share_weights(self, net: Net) -> None:
        """`net` shows this solver's training parameters (Net::ShareTrainedLayersWith)."""
        net.share_with(self.net)


def _solver_class(name: str, solver_type: str) -> type[Solver]:
    return type(name, (Solver,), {"_type": solver_type, "__doc__": f"pycaffe's {name}: a Solver using "
                                                                   f"{solver_type}'s update rule."})


SGDSolver = _solver_class("SGDSolver", "SGD")
NesterovSolver = _solver_class("NesterovSolver", "Nesterov")
AdaGradSolver = _solver_class("AdaGradSolver", "AdaGrad")
RMSPropSolver = _solver_class("RMSPropSolver", "RMSProp")
AdaDeltaSolver = _solver_class("AdaDeltaSolver", "AdaDelta")
AdamSolver = _solver_class("AdamSolver", "Adam")


def get_solver(filename: str | os.PathLike) -> Solver:
    """The solver the file's `type` names (SolverRegistry::CreateSolver)."""
    return Solver(filename)


@functools.lru_cache(maxsize=1)
def _pysolver_class() -> type:
    from caffecompat.runtime.segments import SegmentedRunner, SegmentedTrainingNet
    from caffecompat.solver.loop import Solver as LoopSolver

    class PySolver(LoopSolver):
        """The solver loop with every net segmented, so that pycaffe sees every blob of its nets."""

        def _training_net(self, values, providers):
            trainer = SegmentedTrainingNet(self.train, values, providers, rng=self.rng)
            for t in self.tests:
                # The test nets show the training parameters from the start (Solver::Test shares them).
                shared = {n: trainer.data(n) for n in t.runner.params if n in self.spec.params}
                t.runner.bind({**t.own_values, **shared})
            return trainer

        def _test_runner(self, feeder, providers):
            return SegmentedRunner(feeder, providers, rng=self.rng)

    return PySolver


class _LazyPySolver:
    def __call__(self, *args: Any, **kwargs: Any):
        cls = _pysolver_class()
        return cls(*args, **kwargs)


_PySolver = _LazyPySolver()

__all__ = ["AdaDeltaSolver", "AdaGradSolver", "AdamSolver", "Blob", "Layer", "Net", "NesterovSolver",
           "RMSPropSolver", "SGDSolver", "Solver", "TEST", "TRAIN", "get_solver", "layer_type_list", "set_device",
           "set_mode_cpu", "set_mode_gpu", "set_random_seed"]
