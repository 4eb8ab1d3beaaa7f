"""Caffe's WindowData layer (window_data_layer.cpp): R-CNN's batches of foreground and background windows.

The window file (window_data_param.source) repeats, per image:
    # image_index
    img_path            (root_folder is prepended as text)
    channels
    height
    width
    num_windows
    class_index overlap x1 y1 x2 y2      (num_windows lines)
A window with overlap >= fg_threshold is foreground (its class must be > 0);
one with overlap < bg_threshold is background (label 0); the others are
dropped. image_index is the image's position in the file (Caffe indexes its
image list with it).

Each batch holds batch_size - int(batch_size * fg_fraction) background windows,
then the foreground ones, each drawn uniformly (a 32-bit draw modulo the list
size), mirrored with probability 1/2 when transform_param.mirror is set (in
every phase, as Caffe). A window is cut from the colour image and warped to
crop_size x crop_size with cv::resize; with context_pad (or crop_mode
"square", which first makes the box square) the box is widened so that
context_pad pixels of context surround it after warping, clipped to the image,
and the part outside the image stays zero. Pixels are (value - mean) *
window_data_param.scale, the mean from transform_param's mean_file (its
centre crop, offset by the padding) or mean_value. Caffe's float32 arithmetic
and round-half-away-from-zero are reproduced.
"""

from __future__ import annotations

import math
import os

import numpy as np

from caffecompat.data import image_io
from caffecompat.data.source import PrefetchingSource, child_rng
from caffecompat.errors import CaffeCompatError
from caffecompat.glog import info, warning
from caffecompat.proto import caffe_pb2

F32 = np.float32
IMAGE, LABEL, OVERLAP, X1, Y1, X2, Y2 = range(7)  # WindowDataLayer's window fields


def c_round(x: float) -> int:
    """C's round(): halves away from zero."""
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def parse_window_file(path: str, root: str, fg_threshold: float, bg_threshold: float,
                      where: str) -> tuple[list[tuple[str, list[int]]], list[list[float]], list[list[float]]]:
    """(images as (path, [channels, height, width]), foreground windows, background windows) of a window file."""
    try:
        with open(path) as f:
            tokens = f.read().split()
    except OSError as e:
        raise CaffeCompatError(f"{where}: Failed to open window file {path} ({e.strerror or e}); "
                               "fix window_data_param.source") from None
    if len(tokens) < 2:
        raise CaffeCompatError(f"{where}: Window file is empty: {path}")
    images: list[tuple[str, list[int]]] = []
    fg: list[list[float]] = []
    bg: list[list[float]] = []
    pos = 0

    def take(kind, what: str):
        nonlocal pos
        if pos >= len(tokens):
            raise CaffeCompatError(f"{where}: window file {path} ends early: expected {what} of image "
                                   f"#{len(images)}")
        try:
            value = kind(tokens[pos])
        except ValueError:
            raise CaffeCompatError(f"{where}: window file {path}: expected {what} of image #{len(images)}, "
                                   f"got '{tokens[pos]}'") from None
        pos += 1
        return value

    fg_t, bg_t = F32(fg_threshold), F32(bg_threshold)
    while pos < len(tokens):
        # Caffe reads `# image_index` and CHECKs the hashtag.
        if tokens[pos] != "#":
            raise CaffeCompatError(f"{where}: window file {path}: expected '#' before image #{len(images)}, got "
                                   f"'{tokens[pos]}'")
        pos += 1
        index = take(int, "the image index")
        image_path = root + take(str, "the image path")
        size = [take(int, "the channels"), take(int, "the height"), take(int, "the width")]
        images.append((image_path, size))
        num_windows = take(int, "the number of windows")
        for _ in range(num_windows):
            label = take(int, "a window's class")
            overlap = F32(take(float, "a window's overlap"))
            x1, y1, x2, y2 = (take(int, "a window's coordinates") for _ in range(4))
            window = [float(index), float(label), float(overlap), float(x1), float(y1), float(x2), float(y2)]
            if overlap >= fg_t:
                # WindowDataLayer::DataLayerSetUp: CHECK_GT(label, 0) for a foreground window.
                if label <= 0:
                    raise CaffeCompatError(f"{where}: window file {path}: image #{len(images) - 1} has a window of "
                                           f"overlap {overlap:g} >= fg_threshold with class {label}; foreground "
                                           "classes must be > 0")
                fg.append(window)
            elif overlap < bg_t:
                # A background window: label and overlap forced to 0.
                window[LABEL] = window[OVERLAP] = 0.0
                bg.append(window)
        if index % 100 == 0:
            info("window_data_layer.cpp:148", f"num: {index} {image_path} {size[0]} {size[1]} {size[2]} "
                 f"windows to process: {num_windows}")
    return images, fg, bg


class WindowDataSource(PrefetchingSource):
    """Batches of a `type: "WindowData"` layer: data N x C x crop x crop and labels (N,)."""

    def __init__(self, layer: caffe_pb2.LayerParameter, phase: int, rng: np.random.Generator) -> None:
        super().__init__(layer)
        p, t = layer.window_data_param, layer.transform_param
        if len(layer.top) != 2:
            raise CaffeCompatError(f"{self.where}: has {len(layer.top)} tops; a WindowData layer has exactly 2 "
                                   "(data, label)")
        if not p.source:
            raise CaffeCompatError(f"{self.where}: window_data_param.source (the window file) is not set")
        if p.batch_size <= 0:
            raise CaffeCompatError(f"{self.where}: window_data_param.batch_size must be positive")
        # Caffe reads crop_size, mirror and the mean from transform_param (the window_data_param copies are
        # what UpgradeNetDataTransformation moves there), but the scale from window_data_param.
        for name in ("crop_size", "mirror", "mean_file"):
            if p.HasField(name) and not t.HasField(name):
                raise CaffeCompatError(f"{self.where}: window_data_param.{name} is the deprecated place; "
                                       f"set transform_param.{name} (Caffe reads it there)")
        if t.HasField("scale") and t.scale != 1:
            warning("window_data_layer.cpp:219", f"{self.where}: transform_param.scale is ignored by WindowData; "
                    "it scales by window_data_param.scale")
        if p.crop_mode not in ("warp", "square"):
            warning("window_data_layer.cpp:247", f"{self.where}: crop_mode '{p.crop_mode}' is neither 'warp' nor "
                    "'square'; Caffe warps")
        self.batch_size, self.crop = int(p.batch_size), int(t.crop_size)
        # DataLayerSetUp: CHECK_GT(crop_size, 0).
        if self.crop <= 0:
            raise CaffeCompatError(f"{self.where}: transform_param.crop_size must be positive (the warped size)")
        self.context_pad = int(p.context_pad)
        if 2 * self.context_pad >= self.crop and self.context_pad > 0:
            raise CaffeCompatError(f"{self.where}: context_pad {self.context_pad} leaves no room in crop_size "
                                   f"{self.crop}; it must be below crop_size / 2")
        self.square = p.crop_mode == "square"
        self.mirror = bool(t.mirror)
        self.scale = F32(p.scale)
        self.fg_fraction = F32(p.fg_fraction)
        self.cache = bool(p.cache_images)
        info("window_data_layer.cpp:53", "Window data layer:\n"
             f"  foreground (object) overlap threshold: {p.fg_threshold:g}\n"
             f"  background (non-object) overlap threshold: {p.bg_threshold:g}\n"
             f"  foreground sampling fraction: {p.fg_fraction:g}\n"
             f"  cache_images: {int(self.cache)}\n"
             f"  root_folder: {p.root_folder}")
        self.images, self.fg, self.bg = parse_window_file(os.path.abspath(p.source), p.root_folder, p.fg_threshold,
                                                          p.bg_threshold, self.where)
        self.cwd = os.getcwd()
        for w in self.fg + self.bg:
            if not 0 <= int(w[IMAGE]) < len(self.images):
                raise CaffeCompatError(f"{self.where}: window file {p.source}: image index {int(w[IMAGE])} is not "
                                       f"the position of an image in the file (0..{len(self.images) - 1}); Caffe "
                                       "indexes its image list with it")
        hist: dict[int, int] = {0: len(self.bg)}
        for w in self.fg:
            hist[int(w[LABEL])] = hist.get(int(w[LABEL]), 0) + 1
        info("window_data_layer.cpp:157", f"Number of images: {len(self.images)}")
        for label in sorted(hist):
            info("window_data_layer.cpp:161", f"class {label} has {hist[label]} samples")
        info("window_data_layer.cpp:165", f"Amount of context padding: {self.context_pad}")
        info("window_data_layer.cpp:168", f"Crop mode: {p.crop_mode}")
        self.channels = self.images[-1][1][0]
        self._shapes = [(self.batch_size, self.channels, self.crop, self.crop), (self.batch_size,)]
        info("window_data_layer.cpp:180", "output data size: " + ",".join(map(str, self._shapes[0])))
        self.mean, self.mean_values = self._mean(t)
        # load_batch: CHECK_GT(fg_windows_.size(), 0) and CHECK_GT(bg_windows_.size(), 0).
        for what, windows in (("foreground", self.fg), ("background", self.bg)):
            if not windows:
                raise CaffeCompatError(f"{self.where}: window file {p.source} has no {what} windows (overlap "
                                       f"{'>= fg_threshold' if what == 'foreground' else '< bg_threshold'}); "
                                       "a batch needs both")
        self._cached: dict[int, bytes] = {}
        if self.cache:
            for i, (path, _) in enumerate(self.images):
                self._cached[i] = self._read_bytes(path)
        self._check_memory(2, "prefetching")
        self.rng = child_rng(rng)
        self._start(int(layer.data_param.prefetch))

    def _mean(self, t: caffe_pb2.TransformationParameter) -> tuple[np.ndarray | None, np.ndarray | None]:
        if t.HasField("mean_file"):
            if len(t.mean_value):
                raise CaffeCompatError(f"{self.where}: Cannot specify mean_file and mean_value at the same time")
            from caffecompat.formats.blob import read_binaryproto

            info("window_data_layer.cpp:196", f"Loading mean file from: {t.mean_file}")
            try:
                mean = read_binaryproto(os.path.abspath(t.mean_file))
            except CaffeCompatError as e:
                raise CaffeCompatError(f"{self.where}: transform_param.mean_file: {e}") from None
            mean = mean.reshape(mean.shape[-3:]) if mean.ndim >= 3 else mean
            off = (mean.shape[-1] - self.crop) // 2
            if mean.ndim != 3 or mean.shape[0] != self.channels or off < 0 or off + self.crop > mean.shape[1]:
                raise CaffeCompatError(f"{self.where}: mean file {t.mean_file} of shape {list(mean.shape)} cannot "
                                       f"give the centre {self.crop}x{self.crop} crop of {self.channels} channels "
                                       "that WindowData subtracts")
            return np.ascontiguousarray(mean, F32), None
        if len(t.mean_value):
            values = np.asarray(t.mean_value, F32)
            if len(values) not in (1, self.channels):
                raise CaffeCompatError(f"{self.where}: Specify either 1 mean_value or as many as channels: "
                                       f"{self.channels}")
            return None, np.broadcast_to(values, (self.channels,)).astype(F32)
        return None, None

    def _read_bytes(self, path: str) -> bytes:
        try:
            return image_io.read_file(os.path.join(self.cwd, path))
        except (image_io.ImageReadError, OSError) as e:
            raise CaffeCompatError(f"{self.where}: Could not open or find file {path} ({e})") from None

    def _image(self, index: int) -> np.ndarray:
        path = self.images[index][0]
        data = self._cached.get(index)
        if data is None:
            data = self._read_bytes(path)
        try:
            img = image_io.decode(data, image_io.color_flag(True), path)
        except image_io.ImageReadError as e:
            raise CaffeCompatError(f"{self.where}: {e}") from None
        if img.ndim == 2:
            img = img[:, :, None]
        if img.shape[2] != self.channels:
            raise CaffeCompatError(f"{self.where}: image {path} reads with {img.shape[2]} channels (colour) but the "
                                   f"window file's last image says {self.channels}; Caffe's top has that many")
        return img

    def _rand(self) -> int:
        # PrefetchRand: one 32-bit draw of the layer's own generator.
        return int(self.rng.integers(0, 2**32))

    def warp(self, img: np.ndarray, window: list[float], mirror: bool, out: np.ndarray) -> None:
        """Cut `window` out of the H x W x C image, warp it with context, and write (pixel - mean) * scale
        into `out` (C x crop x crop, zero-filled)."""
        crop, pad = self.crop, self.context_pad
        x1, y1, x2, y2 = (int(window[k]) for k in (X1, Y1, X2, Y2))
        rows, cols = img.shape[:2]
        pad_w = pad_h = 0
        size_w = size_h = crop
        if pad > 0 or self.square:
            # load_batch: widen the box so that after warping exactly context_pad pixels of context surround it.
            context_scale = F32(crop) / F32(crop - 2 * pad)
            half_h, half_w = F32(y2 - y1 + 1) / F32(2.0), F32(x2 - x1 + 1) / F32(2.0)
            cx, cy = F32(x1) + half_w, F32(y1) + half_h
            if self.square:
                half_h = half_w = max(half_h, half_w)
            x1, x2 = c_round(cx - half_w * context_scale), c_round(cx + half_w * context_scale)
            y1, y2 = c_round(cy - half_h * context_scale), c_round(cy + half_h * context_scale)
            unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
            px1, py1 = max(0, -x1), max(0, -y1)
            px2, py2 = max(0, x2 - cols + 1), max(0, y2 - rows + 1)
            x1, x2, y1, y2 = x1 + px1, x2 - px2, y1 + py1, y2 - py2
            if x1 < 0 or y1 < 0 or x2 >= cols or y2 >= rows or x2 < x1 or y2 < y1:
                raise CaffeCompatError(f"{self.where}: window {window[X1:]} of image "
                                       f"{self.images[int(window[IMAGE])][0]} lies outside the {cols}x{rows} image")
            scale_x, scale_y = F32(crop) / F32(unclipped_w), F32(crop) / F32(unclipped_h)
            size_w, size_h = c_round(F32(x2 - x1 + 1) * scale_x), c_round(F32(y2 - y1 + 1) * scale_y)
            px1, px2 = c_round(F32(px1) * scale_x), c_round(F32(px2) * scale_x)
            py1 = c_round(F32(py1) * scale_y)
            pad_h = py1
            # Mirroring mirrors the padding too.
            pad_w = px2 if mirror else px1
            # The warped region plus the padding must fit the crop (rounding may overshoot).
            size_h = min(size_h, crop - pad_h)
            size_w = min(size_w, crop - pad_w)
        if x2 < x1 or y2 < y1 or x2 >= cols or y2 >= rows or x1 < 0 or y1 < 0:
            raise CaffeCompatError(f"{self.where}: window {window[X1:]} of image "
                                   f"{self.images[int(window[IMAGE])][0]} lies outside the {cols}x{rows} image")
        if size_w <= 0 or size_h <= 0:
            raise CaffeCompatError(f"{self.where}: window {window[X1:]} of image "
                                   f"{self.images[int(window[IMAGE])][0]} warps to an empty region")
        warped = image_io.resize(np.ascontiguousarray(img[y1:y2 + 1, x1:x2 + 1]), size_h, size_w)
        if warped.ndim == 2:
            warped = warped[:, :, None]
        if mirror:
            warped = warped[:, ::-1]
        pixels = warped.transpose(2, 0, 1).astype(F32)
        region = (slice(None), slice(pad_h, pad_h + size_h), slice(pad_w, pad_w + size_w))
        if self.mean is not None:
            off = (self.mean.shape[2] - crop) // 2
            mean = self.mean[:, off + pad_h:off + pad_h + size_h, off + pad_w:off + pad_w + size_w]
            out[region] = (pixels - mean) * self.scale
        elif self.mean_values is not None:
            out[region] = (pixels - self.mean_values[:, None, None]) * self.scale
        else:
            out[region] = pixels * self.scale

    def _load_batch(self) -> list[np.ndarray]:
        data = np.zeros(self._shapes[0], F32)
        labels = np.zeros(self._shapes[1], F32)
        # load_batch: int(batch_size * fg_fraction) foreground windows, background first.
        num_fg = int(F32(self.batch_size) * self.fg_fraction)
        item = 0
        for windows, count in ((self.bg, self.batch_size - num_fg), (self.fg, num_fg)):
            for _ in range(count):
                window = windows[self._rand() % len(windows)]
                mirror = self.mirror and self._rand() % 2 == 1
                self.warp(self._image(int(window[IMAGE])), window, mirror, data[item])
                labels[item] = window[LABEL]
                item += 1
        return [data, labels]
