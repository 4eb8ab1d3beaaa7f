"""Where extract-features puts the blobs it reads: Datum databases as Caffe's extract_features writes
them, or .npy / HDF5 arrays.

Caffe's record for item n of a blob is a Datum whose channels, height and
width are the blob's legacy dimensions 1 to 3 (1 for axes the blob does not
have), holding the item's values in `float_data` and nothing else, under the
key `%010d` of the item's index; the transaction is committed every 1000
records. The array formats keep the blob's own shape, items stacked on axis 0:
one .npy file per blob, or one HDF5 dataset per blob named after it (several
blobs may share an HDF5 file, ready for an HDF5Data layer whose tops are the
blob names).
"""

from __future__ import annotations

import os

import numpy as np

from caffecompat import outfiles
from caffecompat.data import db as dbs
from caffecompat.errors import CaffeCompatError
from caffecompat.proto import caffe_pb2

# extract_features.cpp commits its transactions every 1000 records.
COMMIT_EVERY = 1000
FORMATS = ("lmdb", "leveldb", "npy", "hdf5")


def legacy_shape(shape: tuple[int, ...], blob: str) -> tuple[int, int, int, int]:
    """Blob::LegacyShape for axes 0..3: a missing axis is 1; more than 4 axes cannot be a Datum."""
    if len(shape) > 4:
        raise CaffeCompatError(f"blob '{blob}' has {len(shape)} axes ({' x '.join(map(str, shape))}); a Datum "
                               "holds at most 4 (num x channels x height x width): extract it to npy or hdf5")
    full = tuple(shape) + (1,) * (4 - len(shape))
    return full  # type: ignore[return-value]


def feature_datum(values: np.ndarray, legacy: tuple[int, int, int, int]) -> bytes:
    """The serialized Datum of one item: channels/height/width and float_data, as extract_features sets them."""
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = legacy[1], legacy[2], legacy[3]
    datum.float_data.extend(np.asarray(values, np.float32).reshape(-1).tolist())
    return datum.SerializeToString()


def feature_key(index: int) -> bytes:
    """caffe::format_int(index, 10)."""
    return f"{index:010d}".encode()


class DatumSink:
    """One blob's records in a new LMDB or LevelDB database."""

    def __init__(self, path: str, backend: str, blob: str, overwrite: bool) -> None:
        self.path, self.blob = path, blob
        self.writer = dbs.open_writer(path, backend, overwrite)
        self.count = 0

    def add(self, batch: np.ndarray) -> bool:
        """Write the items of one batch; True when a transaction was committed on a multiple of 1000."""
        legacy = legacy_shape(batch.shape, self.blob)
        items = np.asarray(batch, np.float32).reshape(legacy[0], -1)
        committed = False
        for item in items:
            self.writer.put(feature_key(self.count), feature_datum(item, legacy))
            self.count += 1
            if self.count % COMMIT_EVERY == 0:
                self.writer.commit()
                committed = True
        return committed

    def finish(self) -> None:
        self.writer.finish()

    def abort(self) -> None:
        self.writer.abort()


class ArrayFile:
    """Blobs stacked on axis 0 into arrays, in one .npy or HDF5 file written under a temporary name."""

    def __init__(self, path: str, kind: str, overwrite: bool) -> None:
        if os.path.lexists(path) and not overwrite:
            raise CaffeCompatError(f"{path} already exists; choose another name or pass -overwrite to replace it")
        outfiles.check_writable(path, f"{kind} file")
        self.path, self.kind = path, kind
        self.tmp = str(outfiles.new_temp(path, f"{kind} file"))
        self.arrays: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self.h5 = None

    def allocate(self, blob: str, total: int, item_shape: tuple[int, ...]) -> None:
        """Room for `total` items of `blob`."""
        shape = (total, *item_shape)
        try:
            if self.kind == "npy":
                self.arrays[blob] = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32, shape=shape)
            else:
                import h5py

                if self.h5 is None:
                    self.h5 = h5py.File(self.tmp, "w", locking=False)  # the temporary holds our own lock
                self.arrays[blob] = self.h5.create_dataset(blob, shape=shape, dtype=np.float32)
        except OSError as e:
            self.abort()
            raise CaffeCompatError(f"{self.path}: cannot write the {self.kind} file: "
                                   f"{outfiles.os_reason(e, os.path.dirname(os.path.abspath(self.path)))}") from None
        self.counts[blob] = 0

    def add(self, blob: str, batch: np.ndarray) -> None:
        start = self.counts[blob]
        n = batch.shape[0] if batch.ndim else 1
        self.arrays[blob][start:start + n] = np.asarray(batch, np.float32).reshape((n, *batch.shape[1:]))
        self.counts[blob] = start + n

    def finish(self) -> None:
        for array in self.arrays.values():
            if isinstance(array, np.memmap):
                array.flush()
        self.arrays.clear()
        if self.h5 is not None:
            self.h5.close()
            self.h5 = None
        outfiles.commit(self.tmp, self.path, f"{self.kind} file")

    def abort(self) -> None:
        self.arrays.clear()
        if self.h5 is not None:
            try:
                self.h5.close()
            except OSError:
                pass  # the file is being discarded anyway
            self.h5 = None
        outfiles.discard(self.tmp)
