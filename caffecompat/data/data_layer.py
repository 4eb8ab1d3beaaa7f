"""Caffe's Data layer: Datum records from an LMDB or LevelDB database, transformed, in batches.

Records are read in the database's key order and wrap to the first at the
end (DataLayer::Next). The top shapes come from the first record, as Caffe's
DataLayerSetUp peeks it; every record must have that size. Decoding and
transforming run on a few threads (OpenCV and numpy release the GIL) while
the random draws stay on the loader thread, so the output is deterministic.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from caffecompat import parallel
from caffecompat.data import datum as datum_codec
from caffecompat.data import db as dbs
from caffecompat.data.source import PrefetchingSource, child_rng
from caffecompat.data.transformer import Transformer
from caffecompat.errors import CaffeCompatError, printable
from caffecompat.glog import error, info
from caffecompat.proto import caffe_pb2

# Threads decoding and transforming the items of one batch.
DECODE_THREADS = max(1, min(4, os.cpu_count() or 1))


def color_mode(param: caffe_pb2.TransformationParameter) -> datum_codec.ColorMode:
    """How encoded records are decoded: force_color, force_gray, else the image's own channels."""
    if param.force_color:
        return datum_codec.ColorMode.COLOR
    if param.force_gray:
        return datum_codec.ColorMode.GRAY
    return datum_codec.ColorMode.NATIVE


def key_text(key: bytes) -> str:
    """A record key for messages, non-printable characters escaped (a key must not drive the terminal)."""
    return printable(key)


class DataLayerSource(PrefetchingSource):
    """Batches of a `type: "Data"` layer: data N x C x H x W and, with a second top, labels (N,)."""

    def __init__(self, layer: caffe_pb2.LayerParameter, phase: int, rng: np.random.Generator,
                 threads: int = DECODE_THREADS) -> None:
        super().__init__(layer)
        param = layer.data_param
        if len(layer.top) not in (1, 2):
            raise CaffeCompatError(f"{self.where}: has {len(layer.top)} tops; a Data layer has 1 (data) "
                                   "or 2 (data, label)")
        # DataParameter's backend defaults to LEVELDB, as in Caffe.
        backend = dbs.backend_name(param.backend, f"{self.where} data_param.backend")
        if param.batch_size <= 0:
            raise CaffeCompatError(f"{self.where}: data_param.batch_size must be positive")
        if not param.source:
            raise CaffeCompatError(f"{self.where}: data_param.source is not set")
        self.source = param.source
        self.batch_size = int(param.batch_size)
        self.labels = len(layer.top) == 2
        self._batch_keys: dict[int, list[bytes]] = {}  # id of a recent label batch -> its records' keys
        self._keys_lock = threading.Lock()
        self.db = dbs.open_reader(os.path.abspath(param.source), backend, f"{self.where} data_param.source")
        try:
            info(*dbs.opened_line(backend, param.source))
            self.transformer = Transformer(layer.transform_param, phase, child_rng(rng), self.where)
            self.mode = color_mode(layer.transform_param)
            key, value = self.db.first()
            first = datum_codec.parse(value, self._what(key))
            if not first.encoded and self.mode is not datum_codec.ColorMode.NATIVE:
                # Caffe logs this for raw records and ignores the flags.
                error("data_transformer.cpp:152", "force_color and force_gray only for encoded datum")
            self.in_shape = datum_codec.shape_of(first, self.mode, self._what(key))
            self.first_key = key
            out = self.transformer.check(self.in_shape)
            self._shapes = [(self.batch_size, *out)] + ([(self.batch_size,)] if self.labels else [])
            info("data_layer.cpp:45", "output data size: " + ",".join(map(str, self._shapes[0])))
            self._records = parallel.share(self.db.cycle(self._restarted), phase)
            self._start_pool(threads)
            self._start(int(param.prefetch))
        except BaseException:
            self._on_close()
            raise

    def _what(self, key: bytes) -> str:
        return f"{self.where}: {self.source} record '{key_text(key)}'"

    def _restarted(self) -> None:
        info("data_layer.cpp:73", "Restarting data prefetching from start.")

    def _load_batch(self) -> list[np.ndarray]:
        records = [next(self._records) for _ in range(self.batch_size)]
        decoded = self._map(self._decode, records)
        data = np.empty(self._shapes[0], dtype=np.float32)
        # Random draws in item order on this thread, so batches repeat whatever the thread timing.
        draws = [self.transformer.draw(img.shape[1], img.shape[2]) for img, _ in decoded]
        self._map(lambda i: self.transformer.apply(decoded[i][0], draws[i], data[i]), list(range(len(draws))))
        if not self.labels:
            return [data]
        labels = np.array([label for _, label in decoded], dtype=np.float32)
        with self._keys_lock:
            self._batch_keys[id(labels)] = [key for key, _ in records]
            while len(self._batch_keys) > 64:
                self._batch_keys.pop(next(iter(self._batch_keys)))
        return [data, labels]

    def record_of(self, batch: np.ndarray, index: int) -> str:
        """Where item `index` of a label batch this source made came from: its database and record key."""
        with self._keys_lock:
            keys = self._batch_keys.get(id(batch))
        if keys is None or not 0 <= index < len(keys):
            return f"from {self.source}"
        return f"{self.source} record '{key_text(keys[index])}'"

    def _decode(self, record: tuple[bytes, bytes]) -> tuple[np.ndarray, int]:
        key, value = record
        what = self._what(key)
        parsed = datum_codec.parse(value, what)
        img = datum_codec.to_array(parsed, self.mode, what)
        check_shape(self.transformer, img.shape, self._shapes[0][1:], what,
                    f"the first record '{key_text(self.first_key)}'", self.in_shape)
        return img, parsed.label

    def _on_close(self) -> None:
        self._stop_pool()
        records = getattr(self, "_records", None)
        if records is not None:
            records.close()
        self.db.close()


def check_shape(transformer: Transformer, shape: tuple[int, ...], out: tuple[int, ...], what: str,
                first: str, first_shape: tuple[int, ...]) -> None:
    """An item must transform to the batch's shape: same size as the first, or (with crop) any size >= crop."""
    try:
        got = transformer.check(shape)  # type: ignore[arg-type]
    except CaffeCompatError as e:
        raise CaffeCompatError(f"{what}: {str(e).removeprefix(transformer.where + ': ')}") from None
    if got != tuple(out):
        raise CaffeCompatError(
            f"{what} is {' x '.join(map(str, shape))} but {first} is {' x '.join(map(str, first_shape))}; "
            "all images of a batch must have the same size (resize them, e.g. convert-lmdb "
            "-resize_height/-resize_width, or set crop_size)"
        )
