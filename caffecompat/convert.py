"""Convert a Caffe deploy net and its trained weights into a standalone ONNX model.

`convert_net` reads the deploy prototxt (upgrading legacy formats as Caffe
does), resolves it for the TEST phase, copies the .caffemodel's blobs into the
parameters by layer name (Net::CopyTrainedLayersFrom) and exports an ONNX model
whose parameters are initializers. Graph inputs are the net's input blobs and
graph outputs carry Caffe blob names: a blob rewritten in place is output
under its Caffe name holding its last value, as Caffe's blob holds after a
forward pass. `save_model` writes it atomically, with external data for models
over protobuf's 2 GB limit.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from caffecompat.errors import CaffeCompatError
from caffecompat.formats import protofile
from caffecompat.formats.net import read_net_prototxt
from caffecompat.layers import registry
from caffecompat.net import spec as netspec
from caffecompat.net.export import DEFAULT_OPSET, export
from caffecompat.net.state import filter_layers, make_state
from caffecompat.net.weights import copy_trained_layers
from caffecompat.proto import caffe_pb2

# Protobuf cannot serialize a message of 2 GiB or more; stay clear of it.
PROTOBUF_LIMIT = 2**31 - 1
_LIMIT_MARGIN = 64 << 20
# With external data, tensors at least this large go to the data file.
EXTERNAL_THRESHOLD = 1024

# Data layers read their own sources; a deploy net feeds its inputs through Input layers.
DATA_LAYER_TYPES = frozenset({"Data", "ImageData", "HDF5Data", "DummyData", "MemoryData", "WindowData",
                              "VideoData", "AnnotatedData"})


@dataclass
class Converted:
    """A converted net: the ONNX model and what went into it."""

    model: onnx.ModelProto
    spec: netspec.NetSpec
    opset: int
    copied_layers: list[str] = field(default_factory=list)  # layers whose blobs came from the weights
    ignored_layers: list[str] = field(default_factory=list)  # weights-file layers not in the net
    filled_layers: list[str] = field(default_factory=list)  # net layers with parameters left to fillers

    @property
    def inputs(self) -> dict[str, tuple[int, ...]]:
        """Graph input (Caffe blob) name -> shape."""
        return {v.split("@", 1)[0]: self.spec.shapes[v] for v in self.spec.inputs}

    @property
    def outputs(self) -> list[str]:
        return [o.name for o in self.model.graph.output]


def check_deploy_net(net: caffe_pb2.NetParameter, state: caffe_pb2.NetState, source: str) -> None:
    """Refuse nets that read data sources: convert needs Input layers (or input/input_dim)."""
    for lp in filter_layers(net, state, source):
        if lp.type in DATA_LAYER_TYPES or (lp.type != "Input" and _is_source(lp)):
            raise CaffeCompatError(
                f"{source}: layer '{lp.name}' is a {lp.type} layer; convert takes a deploy net whose "
                "inputs are Input layers (or input/input_dim fields), e.g. `layer { name: \"data\" "
                "type: \"Input\" top: \"data\" input_param { shape { dim: 1 dim: 3 dim: 227 dim: 227 } } }` "
                "in place of the data layers"
            )


def _is_source(lp: caffe_pb2.LayerParameter) -> bool:
    try:
        return registry.get(lp).source
    except CaffeCompatError:
        return False  # an unknown type: build() reports it in layer order


def resolve_outputs(spec: netspec.NetSpec, keep_blobs: bool, outputs: Iterable[str] = ()) -> list[str]:
    """Value names to output: Caffe's net outputs, then every blob (keep_blobs) or the named blobs.

    Blob names resolve to the blob's final value; a value name (`blob@layer`, the
    value of a blob before an in-place layer rewrote it) is taken as it is.
    Input blobs are graph inputs and are not repeated as outputs.
    """
    wanted = list(spec.outputs)
    if keep_blobs:
        wanted += [spec.blob_values[b] for b in spec.blob_values]
    for name in outputs:
        if name in spec.blob_values:
            wanted.append(spec.blob_values[name])
        elif name in spec.shapes:
            wanted.append(name)
        else:
            known = ", ".join(sorted(spec.blob_values))
            raise CaffeCompatError(f"net '{spec.name}' has no blob '{name}' (its blobs: {known})")
    out: list[str] = []
    for v in wanted:
        if v not in out and v not in spec.inputs:
            out.append(v)
    return out


def convert_net(prototxt: str | os.PathLike, weights: str | os.PathLike | None, *,
                opset: int = DEFAULT_OPSET, keep_blobs: bool = False, outputs: Iterable[str] = (),
                level: int = 0, stages: Iterable[str] = (), seed: int = 0) -> Converted:
    """The ONNX model of deploy net `prototxt` with the weights of the .caffemodel `weights`.

    weights None: every parameter from its filler (numpy seed `seed`), for testing.
    """
    source = str(prototxt)
    net = read_net_prototxt(prototxt)
    state = make_state(net, caffe_pb2.TEST, level, list(stages))
    check_deploy_net(net, state, source)
    spec = netspec.build(net, caffe_pb2.TEST, state=state, source=source)
    result = Converted(model=onnx.ModelProto(), spec=spec, opset=opset)
    params: dict[str, np.ndarray] = {}
    if weights is not None:
        from caffecompat.formats.caffemodel import read_weights

        w = read_weights(weights)
        file_layers = list(w.net.layer) or list(w.net.layers)
        legacy = frozenset(lp.name for lp in file_layers if any(not b.HasField("shape") for b in lp.blobs))
        names = {n.name for n in spec.layers}
        result.ignored_layers = [n for n in w.blobs if n not in names]
        # Net::CopyTrainedLayersFrom; the layers it would ignore are reported by the caller, not logged.
        known = {n: b for n, b in w.blobs.items() if n in names}
        result.copied_layers = copy_trained_layers(spec, params, known, str(weights), legacy)
    # Fillers only for what the weights did not give (running them for a 60M-parameter net costs seconds).
    rng = np.random.default_rng(seed)
    for node in spec.layers:
        owned = [i for i, p in enumerate(node.param_names)
                 if p in spec.params and spec.params[p].layer == node.name and p not in params]
        if not owned:
            continue
        arrays = registry.get(node).init_params(node, rng)
        for i in owned:
            params[node.param_names[i]] = np.ascontiguousarray(arrays[i], dtype=np.float32)
        if weights is not None:
            result.filled_layers.append(node.name)
    wanted = resolve_outputs(spec, keep_blobs, outputs)
    if not wanted:
        raise CaffeCompatError(f"{source}: the net has no outputs: every blob is an input or consumed; "
                               "name blobs to output with --outputs")
    exported = export(spec, params=params, outputs=wanted, opset=opset)
    result.model = exported.model
    _name_inputs_after_blobs(result.model, spec)
    if result.model.ir_version < 4:
        # IR 3 (opsets 7 and 8) requires every initializer to be a graph input too, which would make the
        # weights overridable inputs; IR 4 allows constant initializers with these opsets.
        result.model.ir_version = 4
    result.model.producer_version = _version()
    result.model.doc_string = f"Converted from Caffe net '{spec.name}' ({Path(source).name}) by caffecompat"
    return result


def _name_inputs_after_blobs(model: onnx.ModelProto, spec: netspec.NetSpec) -> None:
    """Graph inputs carry their Caffe blob's name even when a layer rewrites that blob in place.

    NetSpec names such an input `<blob>@<input layer>` and the blob's final value `<blob>`; here
    the input becomes `<blob>` and the final value `<blob>@<last writer>`, the name NetSpec gives
    the value a layer writes to a blob that is rewritten later.
    """
    renames: dict[str, str] = {}
    for value in spec.inputs:
        blob = value.split("@", 1)[0]
        if value == blob:
            continue
        writer = [n.name for n in spec.layers if blob in n.top_blobs][-1]
        renames[value] = blob
        renames[blob] = f"{blob}@{writer}"
    if not renames:
        return
    g = model.graph
    for node in g.node:
        node.input[:] = [renames.get(x, x) for x in node.input]
        node.output[:] = [renames.get(x, x) for x in node.output]
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        vi.name = renames.get(vi.name, vi.name)


def _version() -> str:
    from caffecompat import __version__

    return __version__


def model_size(model: onnx.ModelProto) -> int:
    """The model's serialized size in bytes, without serializing it whole (which fails past 2 GB)."""
    inits = model.graph.initializer
    size = sum(len(t.raw_data) + 64 for t in inits)
    size += sum(4 * len(t.float_data) + 8 * len(t.int64_data) + 4 * len(t.int32_data) for t in inits)
    rest = onnx.ModelProto()
    rest.CopyFrom(model)
    del rest.graph.initializer[:]
    return size + rest.ByteSize()


def check_model(model: onnx.ModelProto | str, opset: int) -> None:
    """onnx.checker with full shape checks, as a CaffeCompatError naming the opset."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        detail = " ".join(str(e).split())
        raise CaffeCompatError(
            f"the exported model fails ONNX's checker at opset {opset}: {detail}; a layer may need a newer "
            f"opset (try --opset {DEFAULT_OPSET} or higher, at most 21)"
        ) from None


def needs_external_data(model: onnx.ModelProto) -> bool:
    """Whether the model is too large for one protobuf file."""
    return model_size(model) > PROTOBUF_LIMIT - _LIMIT_MARGIN


def save_model(model: onnx.ModelProto, path: str | os.PathLike, opset: int,
               external_data: bool | None = None) -> list[Path]:
    """Check and write `model` to `path` atomically; returns the files written.

    external_data None: only when the model would exceed 2 GB. Then tensors go to
    `<path>.data` beside the model (ONNX external data, location relative to the model).
    """
    path = Path(path)
    if external_data is None:
        external_data = needs_external_data(model)
    try:
        if not external_data:
            check_model(model, opset)
            protofile.write_atomic(path, model.SerializeToString())
            return [path]
        return _save_external(model, path, opset)
    except OSError as e:
        raise CaffeCompatError(f"{e.filename or path}: cannot write the model: {e.strerror}") from None


def _save_external(model: onnx.ModelProto, path: Path, opset: int) -> list[Path]:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CaffeCompatError(f"{path}: cannot write, folder {parent} does not exist")
    location = path.name + ".data"
    data_path = parent / location
    light = onnx.ModelProto()
    light.CopyFrom(model)
    chunks: list[bytes] = []
    offset = 0
    for t in light.graph.initializer:
        if not t.HasField("raw_data"):
            continue  # small typed-field constants stay inside the model
        raw = t.raw_data
        if len(raw) < EXTERNAL_THRESHOLD:
            continue
        pad = (-offset) % 4096  # page-aligned offsets, as onnx's own writer does
        if pad:
            chunks.append(b"\0" * pad)
            offset += pad
        chunks.append(raw)
        t.ClearField("raw_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        del t.external_data[:]
        for k, v in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
            entry = t.external_data.add()
            entry.key, entry.value = k, v
        offset += len(raw)
    if not chunks:  # every tensor is small: nothing to put outside
        check_model(model, opset)
        protofile.write_atomic(path, model.SerializeToString())
        return [path]
    protofile.write_atomic(data_path, chunks)
    # The model goes to a temporary name beside its data, is checked there, then renamed.
    tmp = parent / f".{path.name}.check.onnx"
    try:
        protofile.write_atomic(tmp, light.SerializeToString())
        check_model(str(tmp), opset)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        data_path.unlink(missing_ok=True)
        raise
    return [path, data_path]
