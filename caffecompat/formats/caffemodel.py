"""Trained weights (.caffemodel): a binary NetParameter whose layers carry their blobs.

Two ways in:

* `read_caffemodel` parses the whole file into a NetParameter (upgraded as
  Caffe upgrades it) — simple, but the weights then live inside protobuf
  repeated fields, and converting them to numpy needs a second copy.
* `read_weights` walks the protobuf wire format itself: it copies the
  layer metadata into a small NetParameter and reads each blob's packed
  float array straight from the file into its numpy array, so a 550 MB
  VGG-16 file costs little more than 550 MB of memory. Anything that is
  not the usual layout (unpacked floats, V0 layers) goes through the
  protobuf parser for that one blob or layer, so every valid file loads.

`write_weights` is the fast way back: layer metadata from a NetParameter,
blob data written from the arrays' own buffers.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import message as pb_message

from caffecompat.errors import CaffeCompatError
from caffecompat.formats import protofile, upgrade
from caffecompat.formats.blob import blob_shape, blob_to_array, check_shape, encode_varint
from caffecompat.proto import caffe_pb2

WHAT = "caffemodel"

# Field numbers from proto/caffe.proto.
_NET_LAYER = 100  # NetParameter.layer (LayerParameter)
_NET_LAYERS = 2  # NetParameter.layers (V1LayerParameter)
_LAYER_BLOBS = {_NET_LAYER: 7, _NET_LAYERS: 6}  # LayerParameter.blobs, V1LayerParameter.blobs
_V1_V0_LAYER = 1  # V1LayerParameter.layer (a V0LayerParameter)
_BLOB_DATA, _BLOB_DIFF, _BLOB_DOUBLE_DATA, _BLOB_DOUBLE_DIFF = 5, 6, 8, 9

# Protobuf wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


@dataclass
class Weights:
    """A caffemodel's layers and their blobs as numpy arrays.

    `net` is the upgraded NetParameter with every blob's shape but no blob data.
    `layers` lists (layer name, its blobs as float32 arrays) in the file's order,
    a name as often as the file has it (legacy blobs are 4-D num x channels x
    height x width, as Caffe reads them; layers without blobs have an empty
    list). `blobs` maps each name to its blobs; for a name the file repeats, the
    last layer's (what copying them in order into one net layer leaves).
    """

    net: caffe_pb2.NetParameter
    blobs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    layers: list[tuple[str, list[np.ndarray]]] = field(default_factory=list)


def read_caffemodel(path: str | os.PathLike) -> caffe_pb2.NetParameter:
    """Parse a whole caffemodel and upgrade it (ReadNetParamsFromBinaryFileOrDie)."""
    net = protofile.read_binary(path, caffe_pb2.NetParameter, WHAT)
    _check_has_layers(net, path)
    upgrade.upgrade_net(net, str(path))
    return net


def write_caffemodel(path: str | os.PathLike, net: caffe_pb2.NetParameter) -> None:
    """Serialize `net` (blobs included) to `path`, atomically."""
    protofile.write_binary(path, net)


def _check_has_layers(net: caffe_pb2.NetParameter, path: str | os.PathLike) -> None:
    # Any byte string that happens to decode is a "valid" NetParameter; one with
    # no layers at all is not a caffemodel, whatever it is.
    if not len(net.layer) and not len(net.layers):
        raise CaffeCompatError(
            f"{path}: not a caffemodel: it parses as a NetParameter with no layers "
            "(is it another kind of file?)"
        )


# --- the wire-format reader ---------------------------------------------------


class _Malformed(Exception):
    """Raised inside the reader; read_weights turns it into a CaffeCompatError."""


class _Reader:
    """Sequential reads from a file with position tracking and bounds checks."""

    def __init__(self, f: io.BufferedReader, size: int) -> None:
        self.f = f
        self.size = size
        self.pos = 0

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise _Malformed(f"file ends {n - len(data)} bytes early")
        self.pos += n
        return data

    def read_into(self, buf: np.ndarray) -> None:
        view = memoryview(buf).cast("B")
        got = 0
        while got < len(view):
            n = self.f.readinto(view[got:])
            if not n:
                raise _Malformed("file ends in the middle of a blob")
            got += n
        self.pos += got

    def skip(self, n: int) -> None:
        self.f.seek(n, os.SEEK_CUR)
        self.pos += n

    def seek(self, pos: int) -> None:
        self.f.seek(pos)
        self.pos = pos

    def varint(self) -> int:
        result = shift = 0
        while True:
            b = self.f.read(1)
            if not b:
                raise _Malformed("file ends inside a varint")
            self.pos += 1
            result |= (b[0] & 0x7F) << shift
            if not b[0] & 0x80:
                return result
            shift += 7
            if shift >= 70:
                raise _Malformed(f"overlong varint at byte {self.pos}")

    def tag(self) -> tuple[int, int, int]:
        """(field number, wire type, position of the tag)."""
        start = self.pos
        key = self.varint()
        number, wire = key >> 3, key & 7
        if number == 0 or wire not in (_VARINT, _I64, _LEN, _I32):
            raise _Malformed(f"invalid field tag {key} at byte {start}")
        return number, wire, start

    def length(self, end: int) -> int:
        n = self.varint()
        if self.pos + n > end:
            raise _Malformed(
                f"a field at byte {self.pos} claims {n} bytes but only {end - self.pos} remain "
                "in its message"
            )
        return n

    def raw_field(self, wire: int, start: int, end: int) -> bytes:
        """The rest of a field whose tag began at `start`, returned with its tag."""
        if wire == _VARINT:
            self.varint()
        elif wire == _I64:
            self.skip(8)
        elif wire == _I32:
            self.skip(4)
        else:
            self.skip(self.length(end))
        if self.pos > end:
            raise _Malformed(f"a field at byte {start} runs past the end of its message")
        stop = self.pos
        self.seek(start)
        return self.read(stop - start)


def _len_field(number: int, payload: bytes) -> bytes:
    return encode_varint(number << 3 | _LEN) + encode_varint(len(payload)) + payload


def _array_from_chunks(chunks: list[np.ndarray], dtype: str) -> np.ndarray:
    if not chunks:
        return np.empty(0, dtype=np.float32)
    a = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    return a.astype(np.float32, copy=False) if dtype == "<f4" else a.astype(np.float32)


def _read_blob(r: _Reader, end: int, where: str) -> tuple[bytes, np.ndarray]:
    """One BlobProto: (its serialized metadata without data or diff, its data as float32)."""
    start = r.pos
    meta = bytearray()
    floats: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    while r.pos < end:
        number, wire, tag_at = r.tag()
        if number in (_BLOB_DATA, _BLOB_DOUBLE_DATA) and wire == _LEN:
            n = r.length(end)
            dtype, width = ("<f4", 4) if number == _BLOB_DATA else ("<f8", 8)
            if n % width:
                raise _Malformed(f"{where}: packed data of {n} bytes is not a whole number of values")
            a = np.empty(n // width, dtype=dtype)
            r.read_into(a)
            (floats if number == _BLOB_DATA else doubles).append(a)
        elif number in (_BLOB_DIFF, _BLOB_DOUBLE_DIFF) and wire == _LEN:
            r.skip(r.length(end))  # gradients are not weights
        elif number in (_BLOB_DATA, _BLOB_DIFF, _BLOB_DOUBLE_DATA, _BLOB_DOUBLE_DIFF):
            # Unpacked repeated values (legal, but no Caffe writes them): let protobuf read it.
            return _parse_blob_slowly(r, start, end, where)
        else:
            meta += r.raw_field(wire, tag_at, end)
    if r.pos != end:
        raise _Malformed(f"{where}: runs past the end of its layer")
    blob = caffe_pb2.BlobProto.FromString(bytes(meta))
    # Caffe's Blob::FromProto reads double_data when there is any, else data.
    data = _array_from_chunks(doubles, "<f8") if doubles else _array_from_chunks(floats, "<f4")
    shape = blob_shape(blob, where)
    count = check_shape(shape, where)
    if data.size != count:
        raise CaffeCompatError(
            f"{where}: holds {data.size} values but its shape {list(shape)} needs {count}"
        )
    return bytes(meta), data.reshape(shape)


def _parse_blob_slowly(r: _Reader, start: int, end: int, where: str) -> tuple[bytes, np.ndarray]:
    r.seek(start)
    blob = caffe_pb2.BlobProto.FromString(r.read(end - start))
    data = blob_to_array(blob, where=where)
    for name in ("data", "diff", "double_data", "double_diff"):
        blob.ClearField(name)
    return blob.SerializeToString(), data


def _read_layer(
    r: _Reader, kind: int, end: int, index: int, path: str
) -> tuple[bytes, list[np.ndarray]]:
    """One layer: (its serialized form with blob data removed, its blobs)."""
    start = r.pos
    out = bytearray()
    arrays: list[np.ndarray] = []
    blobs_field = _LAYER_BLOBS[kind]
    while r.pos < end:
        number, wire, tag_at = r.tag()
        if number == blobs_field and wire == _LEN:
            n = r.length(end)
            meta, data = _read_blob(r, r.pos + n, f"{path}: layer #{index} blob #{len(arrays)}")
            out += _len_field(blobs_field, meta)
            arrays.append(data)
        elif kind == _NET_LAYERS and number == _V1_V0_LAYER:
            # A V0 layer keeps its blobs one level deeper: let protobuf read this layer.
            return _parse_v0_layer_slowly(r, start, end, index, path)
        else:
            out += r.raw_field(wire, tag_at, end)
    if r.pos != end:
        raise _Malformed(f"layer #{index} runs past its end")
    return bytes(out), arrays


def _parse_v0_layer_slowly(
    r: _Reader, start: int, end: int, index: int, path: str
) -> tuple[bytes, list[np.ndarray]]:
    r.seek(start)
    layer = caffe_pb2.V1LayerParameter.FromString(r.read(end - start))
    arrays = [
        blob_to_array(b, where=f"{path}: layer #{index} blob #{i}") for i, b in enumerate(layer.layer.blobs)
    ]
    for b in layer.layer.blobs:
        for name in ("data", "diff", "double_data", "double_diff"):
            b.ClearField(name)
    return layer.SerializeToString(), arrays


def _scan(r: _Reader, path: str) -> tuple[bytes, list[tuple[int, int, list[np.ndarray]]]]:
    """The whole file: (the NetParameter without blob data, [(field, index in it, blobs)])."""
    structure = bytearray()
    layers: list[tuple[int, int, list[np.ndarray]]] = []
    counts = {_NET_LAYER: 0, _NET_LAYERS: 0}
    while r.pos < r.size:
        number, wire, tag_at = r.tag()
        if number in (_NET_LAYER, _NET_LAYERS) and wire == _LEN:
            n = r.length(r.size)
            index = counts[number]
            body, arrays = _read_layer(r, number, r.pos + n, len(layers), path)
            structure += _len_field(number, body)
            layers.append((number, index, arrays))
            counts[number] += 1
        else:
            structure += r.raw_field(wire, tag_at, r.size)
    return bytes(structure), layers


def _layer_name(net: caffe_pb2.NetParameter, number: int, index: int) -> str:
    if number == _NET_LAYER:
        name = net.layer[index].name
    else:
        v1 = net.layers[index]
        name = v1.layer.name if v1.HasField("layer") and not v1.HasField("name") else v1.name
    # protobuf hands back a name that is not UTF-8 as bytes; no net layer can match it, but messages print it.
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else name


def read_weights(path: str | os.PathLike) -> Weights:
    """A caffemodel's layer metadata and blobs, read without holding the file twice in memory.

    The net is upgraded as Caffe upgrades it; blob data and diffs are not kept
    in `net` (diffs are skipped entirely). A missing, empty, truncated or
    non-protobuf file raises CaffeCompatError naming it.
    """
    p = Path(path)
    size = _file_size(p)
    try:
        with open(p, "rb", buffering=1 << 16) as f:
            structure, layers = _scan(_Reader(f, size), str(p))
    except _Malformed as e:
        _refuse_solverstate(p)
        raise CaffeCompatError(
            f"{p}: not a valid {WHAT} (NetParameter protobuf): {e}; "
            "the file may be truncated or of another kind"
        ) from None
    net = protofile.parse_binary(structure, caffe_pb2.NetParameter, p, WHAT)
    if not len(net.layer) and not len(net.layers):
        _refuse_solverstate(p)
    _check_has_layers(net, p)
    named = [(_layer_name(net, number, index), arrays) for number, index, arrays in layers]
    upgrade.upgrade_net(net, str(p))
    return Weights(net=net, blobs=dict(named), layers=named)


def _refuse_solverstate(p: Path) -> None:
    # A .solverstate given where weights are expected: say what it is and which flag takes it.
    state = caffe_pb2.SolverState()
    try:
        state.ParseFromString(p.read_bytes())
    except (OSError, pb_message.DecodeError):
        return
    if state.learned_net and state.history:
        raise CaffeCompatError(
            f"{p}: is a solver snapshot (.solverstate), not a caffemodel: to resume training give it to "
            f"-snapshot; the weights it goes with are in {state.learned_net}"
        )


def _file_size(p: Path) -> int:
    size = protofile.check_regular(p, WHAT)
    if size == 0:
        raise CaffeCompatError(f"{p}: {WHAT} file is empty")
    return size


# --- writing ------------------------------------------------------------------


def _blob_chunks(number: int, array: np.ndarray, diff: np.ndarray | None) -> Iterator[bytes | memoryview]:
    """A BlobProto field (`number` is the layer's blobs field) written from the arrays' buffers."""
    a = np.ascontiguousarray(array, dtype="<f4")
    meta = caffe_pb2.BlobProto()
    meta.shape.dim[:] = [int(d) for d in a.shape]
    head = meta.SerializeToString()
    parts: list[bytes | memoryview] = [head]
    for field_number, values in ((_BLOB_DATA, a), (_BLOB_DIFF, diff)):
        if values is None:
            continue
        v = np.ascontiguousarray(values, dtype="<f4")
        if v.size:
            parts.append(encode_varint(field_number << 3 | _LEN) + encode_varint(v.nbytes))
            parts.append(memoryview(v).cast("B"))
    body_len = sum(len(x) for x in parts)
    yield encode_varint(number << 3 | _LEN) + encode_varint(body_len)
    yield from parts


def write_weights(
    path: str | os.PathLike,
    net_structure: caffe_pb2.NetParameter,
    blobs: dict[str, list[np.ndarray]],
    diffs: dict[str, list[np.ndarray]] | None = None,
) -> None:
    """Write a caffemodel: the layers of `net_structure`, with the arrays in `blobs` as their blobs.

    A layer named in `blobs` gets those arrays (float32, BlobShape of the array's
    shape) in place of any blobs it had; `diffs`, when given, adds the gradients
    under the same names and shapes. Other layers are written as they are.
    The file is written atomically, straight from the arrays' memory.
    """
    diffs = diffs or {}
    names = [lay.name for lay in net_structure.layer] + [lay.name for lay in net_structure.layers]
    for label, mapping in (("blobs", blobs), ("diffs", diffs)):
        unknown = [k for k in mapping if k not in names]
        if unknown:
            raise CaffeCompatError(
                f"{path}: {label} given for {', '.join(map(repr, unknown))}, which the net has no "
                "layer of that name"
            )
    for name, d in diffs.items():
        data = blobs.get(name)
        if data is None or len(d) != len(data) or any(
            np.shape(x) != np.shape(y) for x, y in zip(d, data)
        ):
            raise CaffeCompatError(
                f"{path}: layer {name!r}: diffs must match its blobs in number and shape"
            )
    top = caffe_pb2.NetParameter()
    top.CopyFrom(net_structure)
    top.ClearField("layer")
    top.ClearField("layers")

    def chunks() -> Iterator[bytes | memoryview]:
        yield top.SerializeToString()
        for number, layers in ((_NET_LAYERS, net_structure.layers), (_NET_LAYER, net_structure.layer)):
            blobs_field = _LAYER_BLOBS[number]
            for lay in layers:
                if lay.name not in blobs:
                    yield _len_field(number, lay.SerializeToString())
                    continue
                meta = type(lay)()
                meta.CopyFrom(lay)
                meta.ClearField("blobs")
                head = meta.SerializeToString()
                layer_diffs = diffs.get(lay.name)
                body: list[bytes | memoryview] = [head]
                for i, a in enumerate(blobs[lay.name]):
                    body.extend(_blob_chunks(blobs_field, a, None if layer_diffs is None else layer_diffs[i]))
                yield encode_varint(number << 3 | _LEN) + encode_varint(sum(len(x) for x in body))
                yield from body

    protofile.write_atomic(path, chunks())

