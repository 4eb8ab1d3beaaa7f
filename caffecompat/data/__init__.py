"""Caffe's data layers as batch sources for the training and test code.

    source = make_source(layer, caffe_pb2.TRAIN, rng)
    source.top_shapes()   # [(N, C, H, W), (N,)], known before the first batch
    data, label = source.next_batch()
    source.close()

Relative paths in the layer (source, mean_file, root_folder, listed files)
resolve against the working directory when the source is made, as in Caffe.
Errors in the user's data raise CaffeCompatError naming the layer and file.
"""

from __future__ import annotations

import numpy as np

from caffecompat.data.source import DataSource
from caffecompat.errors import NotSupportedError
from caffecompat.proto import caffe_pb2

# Layer types make_source handles.
SOURCE_TYPES = frozenset({"Data", "ImageData", "HDF5Data", "DummyData", "MemoryData", "WindowData"})


def make_source(layer: caffe_pb2.LayerParameter, phase: int, rng: np.random.Generator) -> DataSource:
    """The batch source of a data layer for `phase` (caffe_pb2.TRAIN or TEST).

    `rng` is the solver's seeded Generator: the source draws its own seed from
    it once, here, so runs with the same seed give the same batches.
    """
    if layer.type == "Data":
        from caffecompat.data.data_layer import DataLayerSource

        return DataLayerSource(layer, phase, rng)
    if layer.type == "ImageData":
        from caffecompat.data.image_data import ImageDataSource

        return ImageDataSource(layer, phase, rng)
    if layer.type == "HDF5Data":
        from caffecompat.data.hdf5_data import HDF5DataSource

        return HDF5DataSource(layer, phase, rng)
    if layer.type == "DummyData":
        from caffecompat.data.dummy_data import DummyDataSource

        return DummyDataSource(layer, phase, rng)
    if layer.type == "WindowData":
        from caffecompat.data.window_data import WindowDataSource

        return WindowDataSource(layer, phase, rng)
    if layer.type == "MemoryData":
        from caffecompat.data.memory_data import MemorySource

        return MemorySource(layer)
    raise NotSupportedError(f"data layer type '{layer.type}' (layer '{layer.name}'); data layers "
                            f"supported are {', '.join(sorted(SOURCE_TYPES))}")


__all__ = ["SOURCE_TYPES", "DataSource", "make_source"]
