"""BlobProto <-> numpy, and .binaryproto files (mean images, blob vectors).

A blob's shape is either a BlobShape (`shape { dim: ... }`) or, in files
written before 2015, the legacy 4-D num/channels/height/width fields.
Data is float (`data`) or double (`double_data`); both load as float32.
"""

from __future__ import annotations

import os

import numpy as np

from caffecompat.errors import CaffeCompatError
from caffecompat.formats import protofile
from caffecompat.proto import caffe_pb2

MAX_BLOB_AXES = 32  # Caffe's kMaxBlobAxes
MAX_BLOB_COUNT = 2**31 - 1  # Blob::Reshape: CHECK_LE(shape[i], INT_MAX / count_), "blob size exceeds INT_MAX"


def check_shape(shape: tuple[int, ...], where: str, fix: str = "the file is damaged or not Caffe's") -> int:
    """The element count of a blob shape read from a file, in Python integers; a shape Caffe's
    Blob::Reshape refuses (a negative dim, more than kMaxBlobAxes axes, a count beyond INT_MAX)
    raises a CaffeCompatError naming `where`."""
    if len(shape) > MAX_BLOB_AXES:
        raise CaffeCompatError(f"{where}: its shape has {len(shape)} axes; Caffe's blobs have at most "
                               f"{MAX_BLOB_AXES} (kMaxBlobAxes): {fix}")
    count = 1
    for d in shape:
        if d < 0:
            raise CaffeCompatError(f"{where}: its shape {list(shape)} has a negative dimension; {fix}")
        count *= d
    if count > MAX_BLOB_COUNT:
        raise CaffeCompatError(f"{where}: its shape {list(shape)} holds {count} values, beyond Caffe's limit of "
                               f"{MAX_BLOB_COUNT} (INT_MAX) per blob: {fix}")
    return count


def blob_shape(blob: caffe_pb2.BlobProto, where: str = "blob") -> tuple[int, ...]:
    """The blob's shape: legacy num/channels/height/width when any is set, else BlobShape; checked
    by `check_shape` (errors name `where`)."""
    # Caffe's Blob::FromProto: any legacy field makes the blob 4-D N x C x H x W,
    # even when a BlobShape is present too.
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        shape: tuple[int, ...] = (blob.num, blob.channels, blob.height, blob.width)
    else:
        # With neither, the blob is 0-axis (one value): Caffe writes single-value blobs that way.
        shape = tuple(int(d) for d in blob.shape.dim)
    check_shape(shape, where)
    return shape


def blob_to_array(blob: caffe_pb2.BlobProto, diff: bool = False, where: str = "blob") -> np.ndarray:
    """The blob's data (or diff) as a float32 array of its shape."""
    shape = blob_shape(blob, where)
    count = check_shape(shape, where)
    single, double = (blob.diff, blob.double_diff) if diff else (blob.data, blob.double_data)
    if len(double if len(double) else single) != count:
        raise CaffeCompatError(
            f"{where}: holds {len(double if len(double) else single)} values but its shape {list(shape)} needs {count}"
        )
    values = np.asarray(double if len(double) else single, dtype=np.float32)
    return values.reshape(shape)


def array_to_blob(
    array: np.ndarray, blob: caffe_pb2.BlobProto | None = None, diff: np.ndarray | None = None
) -> caffe_pb2.BlobProto:
    """Fill (or make) a BlobProto with `array` as float data and a BlobShape."""
    blob = caffe_pb2.BlobProto() if blob is None else blob
    a = np.ascontiguousarray(array, dtype=np.float32)
    blob.shape.dim[:] = [int(d) for d in a.shape]
    del blob.data[:]
    blob.MergeFromString(_packed_floats(_DATA_FIELD, a))
    if diff is not None:
        del blob.diff[:]
        blob.MergeFromString(_packed_floats(_DIFF_FIELD, np.ascontiguousarray(diff, dtype=np.float32)))
    return blob


# BlobProto field numbers of the packed float arrays (see proto/caffe.proto).
_DATA_FIELD = 5
_DIFF_FIELD = 6


def encode_varint(n: int) -> bytes:
    """Protobuf's base-128 varint encoding of a non-negative integer."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _packed_floats(field: int, a: np.ndarray) -> bytes:
    """Wire bytes of one packed `repeated float` field: merging them is ~40x faster than extend()."""
    if a.size == 0:
        return b""
    raw = a.astype("<f4", copy=False).tobytes()
    return encode_varint(field << 3 | 2) + encode_varint(len(raw)) + raw


def read_binaryproto(path: str | os.PathLike) -> np.ndarray:
    """A .binaryproto file (one BlobProto, e.g. a mean image) as a float32 array."""
    blob = protofile.read_binary(path, caffe_pb2.BlobProto, "binaryproto")
    return blob_to_array(blob, where=str(path))


def write_binaryproto(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write one BlobProto holding `array` to `path` (atomically)."""
    protofile.write_binary(path, array_to_blob(array))


def read_blob_vector(path: str | os.PathLike) -> list[np.ndarray]:
    """A BlobProtoVector file as a list of float32 arrays."""
    vec = protofile.read_binary(path, caffe_pb2.BlobProtoVector, "blob vector binaryproto")
    return [blob_to_array(b, where=f"{path} blob #{i}") for i, b in enumerate(vec.blobs)]
