"""Caffe's DataTransformer: crop, mirror, mean subtraction and scale, in Caffe's order.

For each item Caffe draws, in this order: mirror (a coin flip, whenever
`mirror: true`, in either phase), then the crop's row and column offsets (at
TRAIN only; TEST crops the centre). Then every output pixel is
`(pixel - mean) * scale` in float32, where the mean is the mean image at the
same (uncropped) position or the channel's mean_value, and a mirrored item
has its columns reversed. Draws come from one numpy Generator, so a seeded
run repeats exactly (Caffe's own random stream cannot be reproduced).
"""

from __future__ import annotations

import os

import numpy as np

from caffecompat.errors import CaffeCompatError
from caffecompat.formats.blob import read_binaryproto
from caffecompat.glog import info
from caffecompat.proto import caffe_pb2


class Transformer:
    """One layer's TransformationParameter, applied to C x H x W images."""

    def __init__(self, param: caffe_pb2.TransformationParameter, phase: int,
                 rng: np.random.Generator, where: str) -> None:
        self.where = where
        self.phase = phase
        self.rng = rng
        self.crop = int(param.crop_size)
        self.mirror = bool(param.mirror)
        self.scale = np.float32(param.scale)
        if param.force_color and param.force_gray:
            raise CaffeCompatError(f"{where}: transform_param sets both force_color and force_gray; "
                                   "choose one")
        self.force_color = bool(param.force_color)
        self.force_gray = bool(param.force_gray)
        self.mean: np.ndarray | None = None
        self.mean_file = ""
        if param.HasField("mean_file"):
            if len(param.mean_value):
                raise CaffeCompatError(f"{where}: transform_param sets both mean_file and mean_value; "
                                       "Caffe allows only one")
            self.mean_file = param.mean_file
            info("data_transformer.cpp:25", f"Loading mean file from: {param.mean_file}")
            try:
                mean = read_binaryproto(os.path.abspath(param.mean_file))
            except CaffeCompatError as e:
                raise CaffeCompatError(f"{where}: transform_param.mean_file: {e}") from None
            if mean.ndim == 4 and mean.shape[0] == 1:
                mean = mean[0]
            if mean.ndim != 3:
                raise CaffeCompatError(
                    f"{where}: mean file {param.mean_file} holds a blob of shape {list(mean.shape)}; "
                    "expected 1 x C x H x W (as compute-mean writes)"
                )
            self.mean = np.ascontiguousarray(mean, dtype=np.float32)
        self.mean_values = np.asarray(param.mean_value, dtype=np.float32)

    def check(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """Validate an input C x H x W against crop and mean; returns the output C x h x w."""
        c, h, w = shape
        if c <= 0:
            raise CaffeCompatError(f"{self.where}: images have {c} channels")
        if self.crop and (h < self.crop or w < self.crop):
            raise CaffeCompatError(
                f"{self.where}: crop_size {self.crop} is larger than the {h} x {w} images; "
                "lower crop_size or resize the images"
            )
        if self.mean is not None and self.mean.shape != (c, h, w):
            raise CaffeCompatError(
                f"{self.where}: mean file {self.mean_file} is {' x '.join(map(str, self.mean.shape))} "
                f"but the images are {c} x {h} x {w}; the mean image must match the uncropped images"
            )
        if self.mean_values.size not in (0, 1, c):
            raise CaffeCompatError(
                f"{self.where}: {self.mean_values.size} mean_value entries for {c}-channel images; "
                f"give either 1 mean_value or {c} (one per channel)"
            )
        return (c, self.crop, self.crop) if self.crop else (c, h, w)

    def draw(self, h: int, w: int) -> tuple[bool, int, int]:
        """This item's (mirror, row offset, column offset), drawn in Caffe's order."""
        mirror = bool(self.rng.integers(2)) if self.mirror else False
        if not self.crop:
            return mirror, 0, 0
        if self.phase == caffe_pb2.TRAIN:
            # Random crop at TRAIN: offsets uniform in [0, H - crop] and [0, W - crop].
            h_off = int(self.rng.integers(h - self.crop + 1))
            w_off = int(self.rng.integers(w - self.crop + 1))
        else:
            # Centre crop at TEST, rounding the offsets down.
            h_off, w_off = (h - self.crop) // 2, (w - self.crop) // 2
        return mirror, h_off, w_off

    def apply(self, img: np.ndarray, draw: tuple[bool, int, int], out: np.ndarray) -> None:
        """Write the transformed `img` (C x H x W, uint8 or float32) into `out` (C x h x w float32)."""
        mirror, h_off, w_off = draw
        _, h, w = out.shape
        rows, cols = slice(h_off, h_off + h), slice(w_off, w_off + w)
        x = img[:, rows, cols]
        # Mean subtraction comes before scaling: (pixel - mean) * scale, in float32.
        if self.mean is not None:
            x = np.subtract(x, self.mean[:, rows, cols], dtype=np.float32)
        elif self.mean_values.size:
            x = np.subtract(x, self.mean_values.reshape(-1, 1, 1), dtype=np.float32)
        else:
            x = x.astype(np.float32)
        if self.scale != 1:
            x *= self.scale
        # Mirroring reverses the columns of the output.
        out[...] = x[:, :, ::-1] if mirror else x

    def __call__(self, img: np.ndarray, out: np.ndarray) -> None:
        """Draw and apply in one step."""
        self.apply(img, self.draw(img.shape[1], img.shape[2]), out)
