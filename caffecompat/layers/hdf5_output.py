"""HDF5Output (Caffe's hdf5_output_layer.cpp): writes its two bottoms to hdf5_output_param.file_name.

It has no tops and runs on the host, between ONNX segments, as Python layers
do (caffecompat.runtime.python_layers). Caffe's rules, reproduced:
- LayerSetUp creates the file with H5F_ACC_TRUNC: building the net empties it.
- Forward copies bottom 0 and bottom 1 into 4-D (num, channels, height, width)
  float blobs (the legacy accessors: missing axes are 1, more than 4 is an
  error) and makes the datasets "data" and "label" with H5LTmake_dataset.
- A dataset of that name already made fails (Caffe's CHECK "Failed to make
  float dataset data"): only the first Forward after the net is built writes,
  the second is an error, and the file keeps the first batch.
- Backward does nothing.
"""

from __future__ import annotations

import os

import numpy as np

from caffecompat.errors import CaffeCompatError, NotSupportedError
from caffecompat.glog import info
from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register
from caffecompat.runtime.blob import Blob, BlobVec

DATASETS = ("data", "label")  # Caffe's HDF5_DATA_DATASET_NAME, HDF5_DATA_LABEL_NAME


def legacy_shape(shape: Shape, layer: str) -> tuple[int, int, int, int]:
    """Blob::num/channels/height/width: the first four axes, 1 where the blob has fewer."""
    if len(shape) > 4:
        raise CaffeCompatError(f"layer '{layer}' (HDF5Output): bottom of shape {list(shape)} has more than 4 axes; "
                               "Caffe's HDF5Output writes num x channels x height x width (Reshape the bottom)")
    full = (*shape, 1, 1, 1, 1)
    return full[0], full[1], full[2], full[3]


class HDF5OutputHost:
    """The host-side object of one HDF5Output layer (setup/reshape/forward/backward on the net's Blobs)."""

    def __init__(self, param) -> None:
        self.param = param
        self.blobs = BlobVec()
        self.file_name = param.hdf5_output_param.file_name

    def _where(self) -> str:
        return f"layer '{self.param.name}' (HDF5Output), hdf5_output_param.file_name '{self.file_name}'"

    def setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        import h5py

        if not self.file_name:
            raise CaffeCompatError(f"{self._where()}: give the file to write in hdf5_output_param.file_name")
        # HDF5OutputLayer::LayerSetUp: H5Fcreate(file_name, H5F_ACC_TRUNC).
        try:
            h5py.File(self.file_name, "w").close()
        except OSError as e:
            raise CaffeCompatError(f"{self._where()}: cannot create the file ({e.strerror or e}); check that its "
                                   f"folder {os.path.dirname(os.path.abspath(self.file_name))} exists and is "
                                   "writable") from None

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        # HDF5OutputLayer::Reshape does nothing.
        return

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        import h5py

        data, label = bottom[0].data, bottom[1].data
        shapes = [legacy_shape(data.shape, self.param.name), legacy_shape(label.shape, self.param.name)]
        # Forward_cpu: CHECK_EQ(bottom[0]->num(), bottom[1]->num()).
        if shapes[0][0] != shapes[1][0]:
            raise CaffeCompatError(f"{self._where()}: data and label must have the same batch size, got "
                                   f"{shapes[0][0]} and {shapes[1][0]}")
        info("hdf5_output_layer.cpp:33", f"Saving HDF5 file {self.file_name}")
        with h5py.File(self.file_name, "a") as f:
            for name, array, shape in zip(DATASETS, (data, label), shapes):
                if name in f:
                    # hdf5_save_nd_dataset: H5LTmake_dataset of an existing name fails, a CHECK in Caffe.
                    raise CaffeCompatError(f"{self._where()}: Failed to make float dataset {name}: Caffe's HDF5Output "
                                           "writes one batch per net (the second Forward fails); the file keeps the "
                                           "first batch. Run one iteration, or write the blobs from pycaffe")
                f.create_dataset(name, data=np.ascontiguousarray(array, np.float32).reshape(shape))
        info("hdf5_output_layer.cpp:38", f"Successfully saved {shapes[0][0]} rows")

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        # HDF5OutputLayer::Backward_cpu returns at once.
        return


@register("HDF5Output")
class HDF5Output(Layer):
    """Writes bottoms 0 and 1 as datasets "data" and "label"; run on the host (no ONNX lowering)."""

    min_bottoms = max_bottoms = 2
    min_tops = max_tops = 0

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        from caffecompat.runtime.python_layers import host_of

        return host_of(node).top_shapes(node)

    def allow_force_backward(self, node: LayerNode, bottom_index: int) -> bool:
        return False

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        raise NotSupportedError(f"layer {node.label} of type HDF5Output in an ONNX graph: it writes a file at "
                                "each Forward, so it runs in caffecompat.Net, the solvers and caffecompat train/test, "
                                "not in an ONNX file (remove the layer to convert the net)")

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        return
