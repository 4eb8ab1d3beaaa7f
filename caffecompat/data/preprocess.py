"""Images to a deploy net's input for `caffecompat classify`: Caffe's preprocessing, pycaffe's crops.

An image is read with OpenCV as Caffe's tools read it (BGR, 0-255; grey for
one-channel nets), then, in this order:

1. resized to the image size (`images_dim`) with cv::resize's bilinear filter,
   as convert-lmdb -resize_height/-resize_width does, when its size differs;
2. channels reordered (`channel_swap`, for nets trained on RGB) and multiplied
   by `raw_scale` (pycaffe's order);
3. cropped to the net's input size: the centre crop (DataTransformer's TEST
   crop, offsets rounded down), or the ten crops of pycaffe's oversample (the
   four corners and the centre, and the same five mirrored);
4. the mean subtracted and the result multiplied by `scale`, as
   DataTransformer does: `(pixel - mean) * scale` in float32, with a mean image
   of the resized image's size taken at the crop's own position (a mean of the
   crop's size is used as it is), or a value per channel; a mirrored crop is
   mirrored after the subtraction, as DataTransformer mirrors.

Scores of a crop set are averaged per image (pycaffe's Classifier.predict).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from caffecompat.data import image_io
from caffecompat.errors import CaffeCompatError
from caffecompat.formats.blob import read_binaryproto

F32 = np.float32


def read_mean(path: str) -> np.ndarray:
    """A mean from a .binaryproto (1 x C x H x W, as compute-mean writes) or a .npy (C x H x W, or C values)."""
    if path.lower().endswith(".npy"):
        try:
            mean = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise CaffeCompatError(f"-mean_file {path}: no such file") from None
        except (OSError, ValueError) as e:
            raise CaffeCompatError(f"-mean_file {path}: not a .npy array ({e})") from None
    else:
        mean = read_binaryproto(path)
    mean = np.asarray(mean, F32)
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim not in (1, 3):
        raise CaffeCompatError(f"-mean_file {path}: holds an array of shape {list(mean.shape)}; expected "
                               "1 x C x H x W (compute-mean's .binaryproto), C x H x W, or C values (.npy)")
    return mean


@dataclass
class Preprocessor:
    """Turns images into net input crops; see the module docstring for the steps."""

    channels: int  # the net input's C
    crop: tuple[int, int]  # the net input's H, W
    images_dim: tuple[int, int]  # the size images are resized to before cropping
    mean: np.ndarray | None = None  # C x H x W (images_dim or crop size) or C values
    scale: float = 1.0
    raw_scale: float = 1.0
    channel_swap: tuple[int, ...] | None = None
    oversample: bool = False

    def __post_init__(self) -> None:
        c, (h, w), (ih, iw) = self.channels, self.crop, self.images_dim
        if c not in (1, 3):
            raise CaffeCompatError(f"the net's input has {c} channels; classify reads images in colour (3) or "
                                   "grey (1)")
        if ih < h or iw < w:
            raise CaffeCompatError(f"-images_dim {ih},{iw} is smaller than the net's input {h} x {w}: images "
                                   "are cropped to the net's input size, so give at least that")
        if self.channel_swap is not None and sorted(self.channel_swap) != list(range(c)):
            raise CaffeCompatError(f"-channel_swap {','.join(map(str, self.channel_swap))}: give an order of the "
                                   f"{c} channels 0..{c - 1}, e.g. 2,1,0")
        self.mean_at_image = False
        if self.mean is not None:
            m = self.mean
            if m.ndim == 1:
                if m.size not in (1, c):
                    raise CaffeCompatError(f"{m.size} mean values for {c}-channel images; give 1 or {c}")
                self.mean = m.reshape(-1, 1, 1)
            elif m.shape == (c, ih, iw):
                self.mean_at_image = True
            elif m.shape != (c, h, w):
                raise CaffeCompatError(
                    f"the mean image is {' x '.join(map(str, m.shape))} but images are resized to {c} x {ih} x {iw} "
                    f"(-images_dim) and cropped to the net's input {c} x {h} x {w}; give a mean of one of these "
                    "sizes, -images_dim of the mean's size, or -mean_value")
        self.scale = F32(self.scale)
        self.raw_scale = F32(self.raw_scale)

    @property
    def crops_per_image(self) -> int:
        return 10 if self.oversample else 1

    def offsets(self) -> list[tuple[int, int, bool]]:
        """(row, column, mirrored) of each crop of an image."""
        (h, w), (ih, iw) = self.crop, self.images_dim
        centre = ((ih - h) // 2, (iw - w) // 2)
        if not self.oversample:
            return [(*centre, False)]
        # pycaffe's oversample: the four corners, then the centre; then the same five mirrored.
        five = [(0, 0), (0, iw - w), (ih - h, 0), (ih - h, iw - w), centre]
        return [(y, x, False) for y, x in five] + [(y, x, True) for y, x in five]

    def read(self, path: str) -> np.ndarray:
        """The image at `path` as C x H x W float32 of images_dim, after resize, channel swap and raw scale."""
        img = image_io.read_image(path, 0, 0, self.channels == 3)
        ih, iw = self.images_dim
        if img.shape[:2] != (ih, iw):
            img = cv2.resize(img, (iw, ih))
        x = image_io.to_chw(img)
        if self.channel_swap is not None:
            x = x[list(self.channel_swap)]
        x = x.astype(F32)
        if self.raw_scale != 1:
            x *= self.raw_scale
        return x

    def crops(self, image: np.ndarray, out: np.ndarray) -> None:
        """Write the image's crops, transformed, into `out` (crops_per_image x C x h x w)."""
        h, w = self.crop
        for i, (y, x, mirror) in enumerate(self.offsets()):
            patch = image[:, y:y + h, x:x + w]
            if self.mean is not None:
                mean = self.mean[:, y:y + h, x:x + w] if self.mean_at_image else self.mean
                patch = np.subtract(patch, mean, dtype=F32)
            if self.scale != 1:
                patch = patch * self.scale
            out[i] = patch[:, :, ::-1] if mirror else patch


def default_images_dim(crop: tuple[int, int], mean: np.ndarray | None) -> tuple[int, int]:
    """The net's input size, or a mean image's size when it is larger (the images it was computed on)."""
    if mean is not None and mean.ndim == 3 and mean.shape[1] >= crop[0] and mean.shape[2] >= crop[1]:
        return int(mean.shape[1]), int(mean.shape[2])
    return crop


def parse_ints(value: str, flag: str, count: int | None = None) -> tuple[int, ...]:
    """'2,1,0' -> (2, 1, 0), or an error naming the flag."""
    try:
        out = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise CaffeCompatError(f"{flag} {value}: expected comma-separated whole numbers") from None
    if count is not None and len(out) != count:
        raise CaffeCompatError(f"{flag} {value}: expected {count} numbers")
    return out
