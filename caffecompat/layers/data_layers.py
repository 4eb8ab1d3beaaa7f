"""Data layers in the net: their tops are graph inputs, filled by caffecompat.data (records, transforms).

Their top shapes come from the data source (NetSpec's `source_shapes`), which
peeks at the first record as Caffe's DataLayerSetUp does.
"""

from __future__ import annotations

from caffecompat.layers.registry import Layer, register


class _Source(Layer):
    source = True
    has_backward = False
    max_bottoms = 0
    min_tops = 1


@register("Data")
class Data(_Source):
    """Datum records from an LMDB (caffecompat.data)."""


@register("ImageData")
class ImageData(_Source):
    """Images from a `path label` list file (caffecompat.data)."""


@register("HDF5Data")
class HDF5Data(_Source):
    """Datasets named after the tops, from a list of HDF5 files (caffecompat.data)."""


@register("DummyData")
class DummyData(_Source):
    """Tops filled by fillers on every forward pass (caffecompat.data)."""


@register("MemoryData")
class MemoryData(_Source):
    """Batches of arrays given from Python (caffecompat.Net.set_input_arrays; caffecompat.pycaffe.MemorySource)."""


@register("WindowData")
class WindowData(_Source):
    """R-CNN's foreground/background windows warped out of images listed in a window file (caffecompat.data)."""
