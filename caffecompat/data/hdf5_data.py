"""Caffe's HDF5Data layer: rows of HDF5 datasets named after the layer's tops, in batches.

`source` is a text file listing .h5 files (whitespace-separated). Each file
holds one dataset per top, all with the same number of rows; a batch takes
the next batch_size rows, moving on to the next file at the end of one and
back to the first after the last. With shuffle, the file order is shuffled at
the start and after each pass over the files, and the row order each time a
file is (re)started. Like Caffe, the layer does no transformation and does
not prefetch.

HDF5 lets a file point at other files: an ExternalLink (a dataset in another
.h5), a soft link, a dataset whose storage is an external raw file, a virtual
dataset made of other files' datasets. Caffe follows them all, so a dataset
given to train on could read any local file. These are refused unless the
environment variable CAFFECOMPAT_HDF5_ALLOW_LINKS=1 allows them; link loops
and dangling links are then one-line errors.
"""

from __future__ import annotations

import os

import h5py
import numpy as np

from caffecompat import parallel
from caffecompat.data.source import DataSource, child_rng
from caffecompat.errors import CaffeCompatError
from caffecompat.glog import info
from caffecompat.proto import caffe_pb2

ALLOW_LINKS_ENV = "CAFFECOMPAT_HDF5_ALLOW_LINKS"


def links_allowed() -> bool:
    """Whether HDF5Data may follow links and external storage into other files (CAFFECOMPAT_HDF5_ALLOW_LINKS=1)."""
    return os.environ.get(ALLOW_LINKS_ENV, "").strip().lower() in ("1", "true", "yes")


def _link_problem(f: h5py.File, name: str) -> str | None:
    """What in the path `name` of `f` points outside the file (a link or external storage), or None."""
    group: h5py.Group = f
    parts = [p for p in name.split("/") if p]
    for i, part in enumerate(parts):
        link = group.get(part, getlink=True)
        where = "/".join(parts[: i + 1])
        if isinstance(link, h5py.ExternalLink):
            return f"'{where}' is an ExternalLink to {link.filename}:{link.path}"
        if isinstance(link, h5py.SoftLink):
            return f"'{where}' is a soft link to {link.path}"
        if link is None:
            return None
        item = group[part]
        if i < len(parts) - 1:
            if not isinstance(item, h5py.Group):
                return None
            group = item
            continue
        if isinstance(item, h5py.Dataset):
            if item.external:
                return f"dataset '{where}' keeps its data in external file(s) {[e[0] for e in item.external]}"
            if item.is_virtual:
                return f"dataset '{where}' is a virtual dataset made of other files' data"
    return None


class HDF5DataSource(DataSource):
    """Batches of a `type: "HDF5Data"` layer: one float32 array per top."""

    def __init__(self, layer: caffe_pb2.LayerParameter, phase: int, rng: np.random.Generator) -> None:
        super().__init__(layer)
        param = layer.hdf5_data_param
        if layer.HasField("transform_param"):
            raise CaffeCompatError(f"{self.where}: HDF5Data does not transform data; remove transform_param")
        if not layer.top:
            raise CaffeCompatError(f"{self.where}: needs at least one top (each names a dataset)")
        if param.batch_size <= 0:
            raise CaffeCompatError(f"{self.where}: hdf5_data_param.batch_size must be positive")
        if not param.source:
            raise CaffeCompatError(f"{self.where}: hdf5_data_param.source is not set")
        self.batch_size = int(param.batch_size)
        self.shuffle = bool(param.shuffle)
        self.rng = child_rng(rng)
        self.list_path = param.source
        info("hdf5_data_layer.cpp:81", f"Loading list of HDF5 filenames from: {param.source}")
        try:
            with open(os.path.abspath(param.source), encoding="utf-8", errors="surrogateescape") as f:
                names = f.read().split()
        except (FileNotFoundError, ValueError):  # ValueError: a NUL character in the name
            raise CaffeCompatError(f"{self.where}: no such HDF5 list file: {param.source}") from None
        except OSError as e:
            raise CaffeCompatError(f"{self.where}: cannot read HDF5 list file {param.source}: "
                                   f"{e.strerror}") from None
        if not names:
            raise CaffeCompatError(f"{self.where}: {param.source} lists no HDF5 files")
        cwd = os.getcwd()
        self.files = [os.path.join(cwd, n) for n in names]
        info("hdf5_data_layer.cpp:95", f"Number of HDF5 files: {len(self.files)}")
        self.file_order = np.arange(len(self.files))
        if self.shuffle:
            self.rng.shuffle(self.file_order)
        self.file_pos = 0
        self.phase, self.offset = phase, 0  # rows read so far, for this rank's share (parallel.keeps)
        self._load(self.files[self.file_order[0]])
        self._row_shapes = [a.shape[1:] for a in self.arrays]
        self._shapes = [(self.batch_size, *s) for s in self._row_shapes]

    def _load(self, path: str) -> None:
        """Read every top's dataset of one file into memory and reset the row order."""
        try:
            with h5py.File(path, "r") as f:
                arrays = []
                allowed = links_allowed()
                for top in self.tops:
                    problem = None if allowed else _link_problem(f, top)
                    if problem:
                        raise CaffeCompatError(
                            f"{self.where}: {path}: {problem}, which could read any file; caffecompat reads "
                            f"only data inside the listed files: copy the data in, or set {ALLOW_LINKS_ENV}=1 "
                            "to follow it as Caffe does")
                    if top not in f or not isinstance(f[top], h5py.Dataset):
                        raise CaffeCompatError(f"{self.where}: {path} has no dataset '{top}' (the datasets "
                                               "are named after the layer's tops)")
                    ds = f[top]
                    if ds.dtype.kind not in "fiub" or ds.ndim < 1:
                        raise CaffeCompatError(f"{self.where}: {path} dataset '{top}' is {ds.dtype} with "
                                               f"shape {list(ds.shape)}; expected numbers with at least 1 axis")
                    arrays.append(np.asarray(ds[()], dtype=np.float32))
        except (FileNotFoundError, ValueError):  # ValueError: a NUL character in the name
            raise CaffeCompatError(f"{self.where}: no such HDF5 file: {path} (listed in {self.list_path})") \
                from None
        except OSError as e:
            raise CaffeCompatError(f"{self.where}: cannot open HDF5 file {path}: {e}") from None
        except (KeyError, RuntimeError, TypeError) as e:  # a link loop, a link to nothing, in h5py's words
            raise CaffeCompatError(f"{self.where}: cannot read HDF5 file {path}: {' '.join(str(e).split())} "
                                   "(a damaged file, or a broken or looping link)") from None
        rows = arrays[0].shape[0]
        for top, a in zip(self.tops, arrays):
            if a.shape[0] != rows:
                raise CaffeCompatError(f"{self.where}: {path} dataset '{top}' has {a.shape[0]} rows but "
                                       f"'{self.tops[0]}' has {rows}; every dataset needs the same count")
        if rows == 0:
            raise CaffeCompatError(f"{self.where}: {path} datasets have no rows")
        if hasattr(self, "_row_shapes"):
            for top, a, shape in zip(self.tops, arrays, self._row_shapes):
                if a.shape[1:] != shape:
                    raise CaffeCompatError(
                        f"{self.where}: {path} dataset '{top}' rows are {list(a.shape[1:])} but the first "
                        f"file's are {list(shape)}; every file needs the same row shape"
                    )
        self.arrays = arrays
        self.row_order = np.arange(rows)
        if self.shuffle:
            self.rng.shuffle(self.row_order)
        self.row = 0

    def _next(self) -> None:
        # HDF5DataLayer::Next: past the last row, go to the next file (wrapping, reshuffling the
        # file order after a full pass), and reshuffle the rows.
        self.offset += 1
        self.row += 1
        if self.row < len(self.row_order):
            return
        if len(self.files) > 1:
            self.file_pos += 1
            if self.file_pos == len(self.files):
                self.file_pos = 0
                if self.shuffle:
                    self.rng.shuffle(self.file_order)
            self._load(self.files[self.file_order[self.file_pos]])
        self.row = 0
        if self.shuffle:
            self.rng.shuffle(self.row_order)

    def next_batch(self) -> list[np.ndarray]:
        """The next batch_size rows of every top."""
        out = [np.empty(shape, dtype=np.float32) for shape in self._shapes]
        for i in range(self.batch_size):
            while not parallel.keeps(self.offset, self.phase):
                self._next()
            r = self.row_order[self.row]
            for o, a in zip(out, self.arrays):
                o[i] = a[r]
            self._next()
        return out

    def close(self) -> None:
        """Drop the loaded file's arrays."""
        self.arrays = []
