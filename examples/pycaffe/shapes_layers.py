"""Python layers for the pycaffe examples (module `shapes_layers`, found in the working directory or on sys.path).

ShapesData draws a new batch of the `shapes` images (examples/shapes) every
forward: data is BGR, minus 128, divided by 128, as C x H x W; label is the
class. EuclideanLossLayer is Caffe's examples/pycaffe/layers/pyloss.py, the
Python loss layer pycaffe users write.
"""

import json
import sys
from pathlib import Path

import numpy as np

import caffecompat as caffe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "shapes"))
from make_images import CLASSES, draw_shape  # noqa: E402


def to_input(bgr: np.ndarray) -> np.ndarray:
    """A BGR uint8 H x W x 3 image as the nets' input: C x H x W, (x - 128) / 128."""
    return (bgr.transpose(2, 0, 1).astype(np.float32) - 128.0) / 128.0


class ShapesData(caffe.Layer):
    """A data layer: param_str is JSON with batch_size, size and seed."""

    def setup(self, bottom, top):
        params = json.loads(self.param_str)
        self.batch = params["batch_size"]
        self.size = params.get("size", 32)
        self.rng = np.random.default_rng(params.get("seed", 1))
        if bottom:
            raise Exception("ShapesData takes no bottoms")
        top[0].reshape(self.batch, 3, self.size, self.size)
        top[1].reshape(self.batch)

    def reshape(self, bottom, top):
        pass  # the tops keep the shapes setup gave them

    def forward(self, bottom, top):
        for i in range(self.batch):
            label = int(self.rng.integers(len(CLASSES)))
            top[0].data[i] = to_input(draw_shape(label, self.size, self.rng))
            top[1].data[i] = label

    def backward(self, top, propagate_down, bottom):
        pass  # no bottoms


class EuclideanLossLayer(caffe.Layer):
    """loss = sum((bottom0 - bottom1)^2) / num / 2, as Caffe's EuclideanLoss."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.0

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if propagate_down[i]:
                sign = 1 if i == 0 else -1
                bottom[i].diff[...] = sign * self.diff / bottom[i].num
