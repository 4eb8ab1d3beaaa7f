"""Caffe's MemoryData layer: batches of the arrays a Python script hands the net with set_input_arrays.

    net.set_input_arrays(data, labels)   # float32, C-contiguous, N x C x H x W and N x 1 x 1 x 1

The layer's tops are `data` (batch_size x channels x height x width) and
`label` (batch_size). Batches are taken in order and wrap around at the end
of the arrays, as MemoryDataLayer::Forward moves its position. `caffecompat
train`/`test` have no Python caller to give arrays, so a net with this layer
fails at its first batch with a message saying what to use instead.
"""

from __future__ import annotations

import numpy as np

from caffecompat.data.source import DataSource
from caffecompat.errors import CaffeCompatError
from caffecompat.proto import caffe_pb2


class MemorySource(DataSource):
    """MemoryDataLayer: `reset(data, labels)` gives the arrays, `next_batch()` the next batch_size items."""

    def __init__(self, layer: caffe_pb2.LayerParameter) -> None:
        super().__init__(layer)
        p = layer.memory_data_param
        self.batch, self.chw = int(p.batch_size), (int(p.channels), int(p.height), int(p.width))
        # MemoryDataLayer::DataLayerSetUp: CHECK_GT on batch_size, channels, height and width.
        if min(self.batch, *self.chw) <= 0:
            raise CaffeCompatError(f"{self.where}: batch_size, channels, height and width must be given and "
                                   "positive in memory_data_param")
        if len(layer.top) != 2:
            raise CaffeCompatError(f"{self.where}: needs exactly two tops (data and label), has {len(layer.top)}")
        self._shapes = [(self.batch, *self.chw), (self.batch,)]
        self.data: np.ndarray | None = None
        self.labels: np.ndarray | None = None
        self.pos = 0

    def check_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """pycaffe's set_input_arrays checks (_caffe.cpp's CheckContiguousArray, MemoryDataLayer::Reset)."""
        c, h, w = self.chw
        for name, array, dims in (("data", data, (c, h, w)), ("labels", labels, (1, 1, 1))):
            if not isinstance(array, np.ndarray):
                raise CaffeCompatError(f"set_input_arrays ({self.where}): {name} must be a numpy array, got "
                                       f"{type(array).__name__}")
            if not array.flags.c_contiguous:
                raise CaffeCompatError(f"set_input_arrays ({self.where}): {name} array must be C contiguous; "
                                       "pass np.ascontiguousarray(...)")
            if array.ndim != 4:
                raise CaffeCompatError(f"set_input_arrays ({self.where}): {name} array must be 4-d, it has shape "
                                       f"{list(array.shape)}")
            if array.dtype != np.float32:
                raise CaffeCompatError(f"set_input_arrays ({self.where}): {name} array must be float32, it is "
                                       f"{array.dtype}; pass .astype(np.float32)")
            if tuple(array.shape[1:]) != dims:
                raise CaffeCompatError(f"set_input_arrays ({self.where}): {name} array has shape "
                                       f"{list(array.shape)}, the layer needs N x {' x '.join(map(str, dims))}")
        if len(data) != len(labels):
            raise CaffeCompatError(f"set_input_arrays ({self.where}): data and labels must have the same first "
                                   f"dimension ({len(data)} and {len(labels)})")
        # MemoryDataLayer::Reset: CHECK_EQ(n % batch_size_, 0) (and n > 0).
        if len(data) == 0 or len(data) % self.batch:
            raise CaffeCompatError(f"set_input_arrays ({self.where}): first dimensions of input arrays must be a "
                                   f"positive multiple of batch size ({self.batch}); got {len(data)}")

    def reset(self, data: np.ndarray, labels: np.ndarray) -> None:
        """MemoryDataLayer::Reset: take the arrays (no copy) and start from their first item."""
        self.check_arrays(data, labels)
        self.data, self.labels, self.pos = data, labels.reshape(-1), 0

    def next_batch(self) -> list[np.ndarray]:
        if self.data is None:
            raise CaffeCompatError(f"{self.where}: no data yet: a MemoryData layer is fed from Python, "
                                   "net.set_input_arrays(data, labels) (solver.net for a solver) before "
                                   "forward/step; `caffecompat train`/`test` cannot feed it: use a Data, HDF5Data "
                                   "or ImageData layer there")
        a, b = self.pos, self.pos + self.batch
        # MemoryDataLayer::Forward: pos_ = (pos_ + batch_size_) % n_.
        self.pos = b % len(self.data)
        return [self.data[a:b], self.labels[a:b]]

    def close(self) -> None:
        self.data = self.labels = None
