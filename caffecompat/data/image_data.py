"""Caffe's ImageData layer: images named in a list file, read with OpenCV, transformed, in batches.

The list holds `path label` lines; each path is appended to root_folder as
plain text (Caffe concatenates, so root_folder usually ends with '/'). Images
are read in colour (BGR) or grey per is_color and resized to
new_height x new_width when both are set. With shuffle the list is shuffled
at the start and again at the start of each epoch.
"""

from __future__ import annotations

import os

import numpy as np

from caffecompat import parallel
from caffecompat.data import image_io, listfile
from caffecompat.data.data_layer import DECODE_THREADS, check_shape
from caffecompat.data.source import PrefetchingSource, child_rng
from caffecompat.data.transformer import Transformer
from caffecompat.errors import CaffeCompatError
from caffecompat.glog import info, warning
from caffecompat.proto import caffe_pb2


class ImageDataSource(PrefetchingSource):
    """Batches of a `type: "ImageData"` layer: data N x C x H x W and labels (N,)."""

    def __init__(self, layer: caffe_pb2.LayerParameter, phase: int, rng: np.random.Generator,
                 threads: int = DECODE_THREADS) -> None:
        super().__init__(layer)
        param = layer.image_data_param
        if len(layer.top) != 2:
            raise CaffeCompatError(f"{self.where}: has {len(layer.top)} tops; an ImageData layer has "
                                   "exactly 2 (data, label)")
        self.new_height, self.new_width = int(param.new_height), int(param.new_width)
        if (self.new_height > 0) != (self.new_width > 0):
            raise CaffeCompatError(f"{self.where}: set image_data_param new_height and new_width together "
                                   "(or neither)")
        if param.batch_size <= 0:
            raise CaffeCompatError(f"{self.where}: image_data_param.batch_size must be positive")
        if not param.source:
            raise CaffeCompatError(f"{self.where}: image_data_param.source is not set")
        self.batch_size = int(param.batch_size)
        self.is_color = bool(param.is_color)
        self.shuffle = bool(param.shuffle)
        # Caffe prepends root_folder as text; relative results resolve against the working directory.
        self.root = param.root_folder
        self.cwd = os.getcwd()
        self.list_path = param.source
        self.transformer = Transformer(layer.transform_param, phase, child_rng(rng), self.where)
        info("image_data_layer.cpp:38", f"Opening file {param.source}")
        try:
            self.lines = listfile.read_list(os.path.abspath(param.source), "image list")
        except CaffeCompatError as e:
            raise CaffeCompatError(f"{self.where}: {e}") from None
        self._shuffle_rng = child_rng(rng)
        if self.shuffle:
            info("image_data_layer.cpp:53", "Shuffling data")
            self._shuffle()
        elif phase == caffe_pb2.TRAIN and parallel.solver_rank() > 0 and not param.rand_skip:
            # ImageDataLayer has no per-rank share: every rank reads the whole list, in its own shuffled order.
            warning("image_data_layer.cpp:60", "Shuffling or skipping recommended for multi-GPU")
        info("image_data_layer.cpp:63", f"A total of {len(self.lines)} images.")
        self.pos = 0
        if param.rand_skip:
            # ImageData's rand_skip: start at a random line in [0, rand_skip).
            skip = int(rng.integers(param.rand_skip))
            info("image_data_layer.cpp:70", f"Skipping first {skip} data points.")
            if skip >= len(self.lines):
                raise CaffeCompatError(f"{self.where}: rand_skip drew {skip} but the list has only "
                                       f"{len(self.lines)} images; lower rand_skip")
            self.pos = skip
        first = self._read(self.lines[self.pos])
        self.in_shape = first.shape
        self.first_name = self.lines[self.pos][0]
        out = self.transformer.check(self.in_shape)
        self._shapes = [(self.batch_size, *out), (self.batch_size,)]
        info("image_data_layer.cpp:90", "output data size: " + ",".join(map(str, self._shapes[0])))
        self._start_pool(threads)
        self._start(int(layer.data_param.prefetch))

    def _shuffle(self) -> None:
        order = self._shuffle_rng.permutation(len(self.lines))
        self.lines = [self.lines[i] for i in order]

    def _what(self, line: tuple[str, int, int]) -> str:
        return f"{self.where}: {self.list_path}:{line[2]}"

    def _read(self, line: tuple[str, int, int]) -> np.ndarray:
        path = os.path.join(self.cwd, self.root + line[0])
        try:
            img = image_io.read_image(path, self.new_height, self.new_width, self.is_color)
        except image_io.ImageReadError as e:
            raise CaffeCompatError(f"{self._what(line)}: {e}") from None
        return image_io.to_chw(img)

    def _load_batch(self) -> list[np.ndarray]:
        lines = []
        for _ in range(self.batch_size):
            lines.append(self.lines[self.pos])
            self.pos += 1
            if self.pos == len(self.lines):
                # The end of the list: start over, reshuffled when shuffle is on.
                self.pos = 0
                if self.shuffle:
                    self._shuffle()
        imgs = self._map(self._decode, lines)
        data = np.empty(self._shapes[0], dtype=np.float32)
        draws = [self.transformer.draw(img.shape[1], img.shape[2]) for img in imgs]
        self._map(lambda i: self.transformer.apply(imgs[i], draws[i], data[i]), list(range(len(imgs))))
        return [data, np.array([line[1] for line in lines], dtype=np.float32)]

    def _decode(self, line: tuple[str, int, int]) -> np.ndarray:
        img = self._read(line)
        check_shape(self.transformer, img.shape, self._shapes[0][1:], f"{self._what(line)}: {line[0]}",
                    f"the first image {self.first_name}", self.in_shape)
        return img

    def _on_close(self) -> None:
        self._stop_pool()
