"""Convert a Caffe deploy net and its trained weights into a standalone ONNX model.

`convert_net` reads the deploy prototxt (upgrading legacy formats as Caffe
does), resolves it for the TEST phase, copies the .caffemodel's blobs into the
parameters by layer name (Net::CopyTrainedLayersFrom) and exports an ONNX model
whose parameters are initializers. Graph inputs are the net's input blobs and
graph outputs carry Caffe blob names: a blob rewritten in place is output
under its Caffe name holding its last value, as Caffe's blob holds after a
forward pass. Input shapes can be set (`input_shapes`, for deploy nets with
placeholder sizes) and the batch axis left open (`dynamic_batch`).

`Converted.save` writes the model atomically and streams the weights from their
arrays into the file, so that converting costs little more memory than the
caffemodel's own size (a model over protobuf's 2 GB limit gets ONNX external
data). `save_model` writes an ONNX ModelProto held in memory the same way.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from caffecompat import glog, outfiles
from caffecompat.errors import CaffeCompatError, NotSupportedError
from caffecompat.formats import protofile
from caffecompat.formats.blob import check_shape, encode_varint
from caffecompat.formats.net import read_net_prototxt
from caffecompat.layers import registry
from caffecompat.net import spec as netspec
from caffecompat.net.export import DEFAULT_OPSET, export
from caffecompat.net.memory import check_net_memory
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
    """A converted net: the ONNX graph, its weights, and what went into them.

    `graph` is the model with every parameter as a typed graph input; the
    weights stay in `params` (numpy arrays, not copied) until `save` streams
    them into the file as initializers. `model` builds the standalone
    ModelProto in memory (a second copy of the weights).
    """

    graph: onnx.ModelProto
    spec: netspec.NetSpec
    opset: int
    params: dict[str, np.ndarray] = field(default_factory=dict)  # parameter tensor name -> value
    param_names: list[str] = field(default_factory=list)  # the parameters the graph reads, in order
    copied_layers: list[str] = field(default_factory=list)  # layers whose blobs came from the weights
    ignored_layers: list[str] = field(default_factory=list)  # weights-file layers not in the net
    filled_layers: list[str] = field(default_factory=list)  # net layers with parameters left to fillers

    @property
    def inputs(self) -> dict[str, tuple[int | str, ...]]:
        """Graph input (Caffe blob) name -> shape ("N" for a dynamic batch axis)."""
        out = {}
        for vi in _data_inputs(self.graph, set(self.param_names)):
            out[vi.name] = tuple(d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim)
        return out

    @property
    def outputs(self) -> list[str]:
        return [o.name for o in self.graph.graph.output]

    @property
    def model(self) -> onnx.ModelProto:
        """The standalone model, weights as initializers (built in memory on each call)."""
        model = _without_param_inputs(self.graph, set(self.param_names))
        model.graph.initializer.extend(numpy_helper.from_array(np.asarray(self.params[p], np.float32), p)
                                       for p in self.param_names)
        return model

    def save(self, path: str | os.PathLike, external_data: bool | None = None) -> list[Path]:
        """Check the graph and write the model to `path` atomically, weights streamed from their arrays.

        external_data None: only when the model would exceed protobuf's 2 GB; then
        the weights go to `<path>.data` beside it. Returns the files written.
        """
        check_model(self.graph, self.opset)
        light = _without_param_inputs(self.graph, set(self.param_names))
        arrays = [(p, np.ascontiguousarray(self.params[p], dtype="<f4")) for p in self.param_names]
        if external_data is None:
            external_data = light.ByteSize() + sum(a.nbytes + 64 for _, a in arrays) > PROTOBUF_LIMIT - _LIMIT_MARGIN
        try:
            if external_data and any(a.nbytes >= EXTERNAL_THRESHOLD for _, a in arrays):
                return _write_external(light, arrays, Path(path))
            write_plain(path, _model_chunks(light, arrays))
            return [Path(path)]
        except OSError as e:
            raise CaffeCompatError(f"{e.filename or path}: cannot write the model: {e.strerror}") from None


def _data_inputs(model: onnx.ModelProto, params: set[str]) -> list[onnx.ValueInfoProto]:
    return [vi for vi in model.graph.input if vi.name not in params]


def _without_param_inputs(model: onnx.ModelProto, params: set[str]) -> onnx.ModelProto:
    light = onnx.ModelProto()
    light.CopyFrom(model)
    kept = _data_inputs(model, params)
    del light.graph.input[:]
    light.graph.input.extend(kept)
    return light


# Field numbers of the ONNX messages the streaming writer splices together.
_MODEL_GRAPH = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_GRAPH_INITIALIZER = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
_TENSOR_RAW_DATA = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number


def _len_prefix(number: int, length: int) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(length)


def _model_chunks(light: onnx.ModelProto, arrays: list[tuple[str, np.ndarray]]) -> Iterator[bytes | memoryview]:
    """The serialized model `light` plus `arrays` as initializers, in pieces, the arrays as their own buffers.

    Protobuf reads a message's fields in any order and appends repeated ones, so
    the graph is its own serialization followed by one initializer field per array.
    """
    heads = []
    for name, a in arrays:
        tensor = onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT, dims=list(a.shape))
        head = tensor.SerializeToString() + _len_prefix(_TENSOR_RAW_DATA, a.nbytes)
        heads.append(_len_prefix(_GRAPH_INITIALIZER, len(head) + a.nbytes) + head)
    rest = onnx.ModelProto()
    rest.CopyFrom(light)
    rest.ClearField("graph")
    graph = light.graph.SerializeToString()
    yield rest.SerializeToString()
    yield _len_prefix(_MODEL_GRAPH, len(graph) + sum(len(h) for h in heads) + sum(a.nbytes for _, a in arrays))
    yield graph
    for head, (_, a) in zip(heads, arrays):
        yield head
        yield memoryview(a.reshape(-1)).cast("B")


def _write_external(light: onnx.ModelProto, arrays: list[tuple[str, np.ndarray]], path: Path) -> list[Path]:
    """`light` with `arrays` as initializers whose data is in a data file beside it (ONNX external data)."""
    location = data_location(path)
    model = onnx.ModelProto()
    model.CopyFrom(light)
    pieces: list[bytes | memoryview] = []
    offset = 0
    for name, a in arrays:
        if a.nbytes < EXTERNAL_THRESHOLD:
            model.graph.initializer.append(numpy_helper.from_array(a.astype(np.float32), name))
            continue
        pad = (-offset) % 4096  # page-aligned offsets, as onnx's own writer does
        if pad:
            pieces.append(b"\0" * pad)
            offset += pad
        t = model.graph.initializer.add(name=name, data_type=onnx.TensorProto.FLOAT, dims=list(a.shape))
        t.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", str(offset)), ("length", str(a.nbytes))):
            entry = t.external_data.add()
            entry.key, entry.value = k, v
        pieces.append(memoryview(a.reshape(-1)).cast("B"))
        offset += a.nbytes
    return install_with_data(path, model.SerializeToString(), location, pieces)


def _locations(model: onnx.ModelProto) -> set[str]:
    return {e.value for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
            for e in t.external_data if e.key == "location"}


def _referenced_data(path: Path) -> set[str] | None:
    """The data files the ONNX model now at `path` names (None: no model there, or not one we can read)."""
    if not path.is_file():
        return None
    try:
        return _locations(onnx.load(str(path), load_external_data=False))
    except Exception:  # noqa: BLE001 - any unreadable old file: we only decline to tidy after it
        return None


def data_location(path: str | os.PathLike) -> str:
    """The name of a new data file for the model at `path`: `<model>.data`, unless a file has that name.

    The new model must not share its data file with the old one: the data goes
    in first, and a failure or kill before the new model is in place has to
    leave the old model with its own data. So when `<model>.data` exists (the
    old export's), the new data takes a fresh name, `<model>.<token>.data`.
    """
    path = Path(path)
    stable = path.name + ".data"
    if not os.path.lexists(path.with_name(stable)):
        return stable
    return f"{path.name}.{secrets.token_hex(4)}.data"


def install_with_data(path: Path, model: bytes, location: str, data: Iterable[bytes | memoryview],
                      opset: int | None = None) -> list[Path]:
    """Install an ONNX model and its new external data file so that a failure or kill leaves the old pair
    or the new one, never a mix: the data goes in under its new name, then the model (checked first when
    `opset` is given) is renamed over the old one, the pair's commit point; then the old model's data
    files, which nothing names any more, are removed."""
    folder = path.parent if str(path.parent) else Path(".")
    data_path = folder / location
    old_data = _referenced_data(path)
    outfiles.write_atomic(data_path, data, "model data")
    try:
        tmp = outfiles.write_temp(path, model, "model")
        try:
            if opset is not None:
                check_model(str(tmp), opset)
        except BaseException:
            outfiles.discard(tmp)
            raise
        outfiles.commit(tmp, path, "model")
    except BaseException:
        data_path.unlink(missing_ok=True)  # ours alone: the old model names another file
        raise
    _remove_old_data(path, old_data, {location})
    return [path, data_path]


def _remove_old_data(path: Path, old_data: set[str] | None, keep: set[str]) -> None:
    """Remove the data files the replaced model at `path` named (beside it, named after it) and the new one does not."""
    folder = path.parent if str(path.parent) else Path(".")
    for name in sorted((old_data or set()) - keep):
        old = folder / name
        if Path(name).name == name and name.startswith(path.name) and old.is_file() and not old.is_symlink():
            try:
                old.unlink()
                glog.info("convert.py", f"Removed {old}, the data file of the model {path} replaced")
            except OSError:
                pass


def write_plain(path: str | os.PathLike, data: bytes | Iterable[bytes | memoryview]) -> None:
    """Write a model with no external data atomically, then remove the data file of the one it replaced."""
    path = Path(path)
    old_data = _referenced_data(path)
    protofile.write_atomic(path, data, "model")
    _remove_old_data(path, old_data, set())


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


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """`NAME:N,C,H,W` (or `N,C,H,W` for a net with one input) as (NAME or "", dims)."""
    name, _, dims = text.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise CaffeCompatError(f"-input_shape {text}: expected NAME:N,C,H,W with positive sizes, "
                               "e.g. -input_shape data:1,3,368,368")
    check_shape(shape, f"-input_shape {text}", "give a smaller input")
    return name, shape


def set_input_shapes(net: caffe_pb2.NetParameter, state: caffe_pb2.NetState,
                     shapes: Mapping[str, Sequence[int]], source: str) -> None:
    """Give the net's Input blobs `shapes` (blob name -> dims; "" names the only input), in place."""
    inputs = [(lp, j) for lp in filter_layers(net, state, source) if lp.type == "Input" for j in range(len(lp.top))]
    names = [lp.top[j] for lp, j in inputs]
    for name, dims in shapes.items():
        if not name:
            if len(inputs) != 1:
                raise CaffeCompatError(f"-input_shape: {source} has {len(inputs)} inputs ({', '.join(names)}); "
                                       "name the one to shape, as NAME:N,C,H,W")
            name = names[0]
        if name not in names:
            raise CaffeCompatError(f"-input_shape {name}: {source} has no input blob '{name}' (its inputs: "
                                   f"{', '.join(names) or 'none'})")
        lp, j = inputs[names.index(name)]
        p = lp.input_param
        if len(p.shape) == 1 and len(lp.top) > 1:
            # InputLayer: one shape stands for every top; spell it out before changing one.
            p.shape.extend([p.shape[0]] * (len(lp.top) - 1))
        while len(p.shape) <= j:
            p.shape.add()
        p.shape[j].ClearField("dim")
        p.shape[j].dim.extend(int(d) for d in dims)


def convert_net(prototxt: str | os.PathLike, weights: str | os.PathLike | None, *,
                opset: int = DEFAULT_OPSET, keep_blobs: bool = False, outputs: Iterable[str] = (),
                level: int = 0, stages: Iterable[str] = (), seed: int = 0,
                input_shapes: Mapping[str, Sequence[int]] | None = None, dynamic_batch: bool = False,
                proto: str | os.PathLike | None = None) -> Converted:
    """The ONNX model of deploy net `prototxt` with the weights of the .caffemodel `weights`.

    weights None: every parameter from its filler (numpy seed `seed`), for testing.
    input_shapes: blob name -> dims replacing the prototxt's input shapes.
    dynamic_batch: the first axis of every input (and of the outputs that follow it) is a symbolic "N".
    proto: a Caffe fork's caffe.proto to read the prototxt with.
    """
    source = str(prototxt)
    net = read_net_prototxt(prototxt, proto)
    state = make_state(net, caffe_pb2.TEST, level, list(stages))
    check_deploy_net(net, state, source)
    if input_shapes:
        set_input_shapes(net, state, input_shapes, source)
    spec = netspec.build(net, caffe_pb2.TEST, state=state, source=source)
    check_net_memory(spec, source, log=False)
    params: dict[str, np.ndarray] = {}
    result = Converted(graph=onnx.ModelProto(), spec=spec, opset=opset, params=params)
    if weights is not None:
        from caffecompat.formats.caffemodel import read_weights

        w = read_weights(weights)
        file_layers = list(w.net.layer) or list(w.net.layers)
        legacy = frozenset(lp.name for lp in file_layers if any(not b.HasField("shape") for b in lp.blobs))
        names = {n.name for n in spec.layers}
        result.ignored_layers = list(dict.fromkeys(n for n, _ in w.layers if n not in names))
        # Net::CopyTrainedLayersFrom; the layers it would ignore are reported by the caller, not logged.
        known = [(n, b) for n, b in w.layers if n in names]
        del w, file_layers
        result.copied_layers = copy_trained_layers(spec, params, known, str(weights), legacy)
        del known
    # Fillers only for what the weights did not give (running them for a 60M-parameter net costs seconds).
    rng = np.random.default_rng(seed)
    for node in spec.layers:
        owned = [i for i, p in enumerate(node.param_names) if spec.owns(node, p) and p not in params]
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
    # Parameters as typed graph inputs: their values stay in `params` until Converted.save streams them.
    exported = export(spec, params_as_inputs=True, outputs=wanted, opset=opset)
    result.graph = exported.model
    result.param_names = list(exported.params)
    if dynamic_batch:
        _open_batch_axis(result.graph, net, state, spec, wanted, opset, source)
    _name_inputs_after_blobs(result.graph, spec)
    if result.graph.ir_version < 4:
        # IR 3 (opsets 7 and 8) requires every initializer to be a graph input too, which would make the
        # weights overridable inputs; IR 4 allows constant initializers with these opsets.
        result.graph.ir_version = 4
    result.graph.producer_version = _version()
    result.graph.doc_string = f"Converted from Caffe net '{spec.name}' ({Path(source).name}) by caffecompat"
    return result


BATCH = "N"


def _open_batch_axis(model: onnx.ModelProto, net: caffe_pb2.NetParameter, state: caffe_pb2.NetState,
                     spec: netspec.NetSpec, outputs: list[str], opset: int, source: str) -> None:
    """Make axis 0 of every input a symbolic batch size "N", in place; refuse where the graph fixes it.

    The net is lowered a second time with every batch one larger: what differs
    between the two graphs depends on the batch. Input and output sizes become
    "N"; a Reshape target holding the batch becomes -1 (inferred); anything
    else that differs means a layer's lowering bakes the batch in, which is
    reported as not supported, naming the layers.
    """
    n1 = {v: spec.shapes[v][0] for v in spec.inputs if spec.shapes[v]}
    if not n1:
        raise CaffeCompatError(f"-dynamic_batch: {source} has no input with a batch axis")
    probe_net = caffe_pb2.NetParameter()
    probe_net.CopyFrom(net)
    set_input_shapes(probe_net, state, {v.split("@", 1)[0]: (spec.shapes[v][0] + 1,) + tuple(spec.shapes[v][1:])
                                        for v in spec.inputs if spec.shapes[v]}, source)
    spec2 = netspec.build(probe_net, caffe_pb2.TEST, state=state, source=source)
    other = export(spec2, params_as_inputs=True, outputs=outputs, opset=opset).model
    g1, g2 = model.graph, other.graph
    bad: list[str] = []
    if [(n.op_type, list(n.input), list(n.output)) for n in g1.node] != \
            [(n.op_type, list(n.input), list(n.output)) for n in g2.node]:
        raise NotSupportedError(f"-dynamic_batch for {source}: its graph changes with the batch size")
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in g1.node:
        for k, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, k))
    for a, b in zip(g1.node, g2.node):
        if [x.SerializeToString() for x in a.attribute] != [x.SerializeToString() for x in b.attribute]:
            bad.append(_layer_of(a))
    others = {t.name: t for t in g2.initializer}
    for t in g1.initializer:
        v1, v2 = numpy_helper.to_array(t), numpy_helper.to_array(others[t.name])
        if v1.shape == v2.shape and np.array_equal(v1, v2):
            continue
        fixed = _batch_free_reshape(v1, v2, consumers.get(t.name, []))
        if fixed is None:
            bad.extend(_layer_of(node) for node, _ in consumers.get(t.name, []))
            continue
        t.CopyFrom(numpy_helper.from_array(fixed, t.name))
    if bad:
        layers = ", ".join(dict.fromkeys(bad))
        raise NotSupportedError(f"-dynamic_batch with layer(s) {layers} of {source}: their ONNX lowering fixes "
                                "the batch size; convert with a fixed -input_shape instead")
    shapes2 = {vi.name: vi for vi in list(g2.input) + list(g2.output)}
    for vi in list(g1.input) + list(g1.output):
        if vi.name not in shapes2:
            continue
        for d1, d2 in zip(vi.type.tensor_type.shape.dim, shapes2[vi.name].type.tensor_type.shape.dim):
            if d1.dim_value != d2.dim_value:
                grows_one_for_one = d2.dim_value - d1.dim_value == 1  # then it is the batch itself
                d1.ClearField("dim_value")
                if grows_one_for_one:
                    d1.dim_param = BATCH
    del g1.value_info[:]


def _layer_of(node: onnx.NodeProto) -> str:
    return re.sub(r"/[^/]*#\d+$", "", node.name) or node.name


def _batch_free_reshape(v1: np.ndarray, v2: np.ndarray,
                        uses: list[tuple[onnx.NodeProto, int]]) -> np.ndarray | None:
    """A Reshape target that differs between two batch sizes in one entry, with that entry -1; else None."""
    if not uses or any(node.op_type != "Reshape" or k != 1 for node, k in uses):
        return None
    if v1.ndim != 1 or v1.shape != v2.shape or (v1 == -1).any() or (v1 == 0).any():
        return None
    differ = np.flatnonzero(v1 != v2)
    if len(differ) != 1:
        return None
    out = v1.copy()
    out[differ[0]] = -1
    return out


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
            write_plain(path, model.SerializeToString())
            return [path]
        return _save_external(model, path, opset)
    except OSError as e:
        raise CaffeCompatError(f"{e.filename or path}: cannot write the model: {e.strerror}") from None


def _save_external(model: onnx.ModelProto, path: Path, opset: int) -> list[Path]:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CaffeCompatError(f"{path}: cannot write, folder {parent} does not exist")
    location = data_location(path)
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
        write_plain(path, model.SerializeToString())
        return [path]
    return install_with_data(path, light.SerializeToString(), location, chunks, opset)
