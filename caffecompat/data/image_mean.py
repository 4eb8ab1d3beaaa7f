"""Caffe's compute_image_mean: the mean image of an LMDB or LevelDB image database.

Pixels are summed per position in float32, record after record, and the sums
divided by the record count in float32, exactly as Caffe's float BlobProto
arithmetic does; encoded records are decoded with their own channels first.
The result is a 1 x C x H x W BlobProto in the legacy num/channels/height/width
form Caffe writes.
"""

from __future__ import annotations

import numpy as np

from caffecompat.data import datum as datum_codec
from caffecompat.data import db as dbs
from caffecompat.errors import CaffeCompatError
from caffecompat.formats import protofile
from caffecompat.formats.blob import array_to_blob
from caffecompat.glog import info
from caffecompat.progress import Progress
from caffecompat.proto import caffe_pb2


def compute_mean(db_path: str, backend: str = "lmdb", progress: bool = True) -> tuple[np.ndarray, int]:
    """(mean image 1 x C x H x W float32, number of records) of the database at `db_path`."""
    backend = dbs.backend_name(backend, f"-backend {backend}")
    where = ""  # messages name the database itself
    reader = dbs.open_reader(db_path, backend, where)
    try:
        info(*dbs.opened_line(backend, db_path))
        total = reader.count()
        if total == 0:
            raise CaffeCompatError(f"{'LevelDB' if backend == 'leveldb' else 'LMDB'} database {db_path} has no records")
        info("compute_image_mean.cpp:70", "Starting iteration")
        bar = Progress("compute-mean", total, unit="images") if progress else None
        sums: np.ndarray | None = None
        first_key = b""
        count = 0
        for key, value in reader.records():
            what = f"{db_path} record '{key.decode('utf-8', errors='replace')}'"
            img = datum_codec.to_array(datum_codec.parse(value, what), datum_codec.ColorMode.NATIVE, what)
            if sums is None:
                sums = np.zeros(img.shape, dtype=np.float32)
                first_key = key
            elif img.shape != sums.shape:
                raise CaffeCompatError(
                    f"{what} is {' x '.join(map(str, img.shape))} but the first record "
                    f"'{first_key.decode('utf-8', errors='replace')}' is "
                    f"{' x '.join(map(str, sums.shape))}; a mean needs images of one size"
                )
            # Caffe adds each pixel to a float sum, one record at a time.
            sums += img
            count += 1
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
    finally:
        reader.close()
    assert sums is not None
    # The sums are divided by the count in float arithmetic.
    return (sums / np.float32(count))[np.newaxis], count


def channel_means(mean: np.ndarray) -> list[float]:
    """compute_image_mean's per-channel mean_value: a float32 running sum over the channel, / H*W."""
    _, c, h, w = mean.shape
    flat = mean.reshape(c, h * w)
    return [float(np.add.accumulate(flat[i], dtype=np.float32)[-1] / np.float32(h * w)) for i in range(c)]


def write_mean(path: str, mean: np.ndarray) -> None:
    """Write a 1 x C x H x W mean as Caffe does: a BlobProto with legacy num/channels/height/width."""
    protofile.write_atomic(path, as_blob(mean).SerializeToString(), "mean file")


def as_blob(mean: np.ndarray) -> caffe_pb2.BlobProto:
    """The mean as Caffe's BlobProto (legacy 4-D dims)."""
    blob = array_to_blob(mean)
    blob.ClearField("shape")
    blob.num, blob.channels, blob.height, blob.width = (int(d) for d in mean.shape)
    return blob
