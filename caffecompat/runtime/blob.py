"""Blob: a Caffe blob as pycaffe shows it, a float32 `data` array and a `diff` array of one shape.

The segmented runtime (runtime.segments) reads every layer's inputs from
Blobs and writes its outputs into them, and Python layers receive them as
their bottoms, tops and parameters, so what user code writes into `.data` or
`.diff` is what the next layer reads, as in Caffe. The arrays are C-contiguous
float32 and keep their identity across passes (outputs are copied into them),
so a reference taken once stays valid until the blob is reshaped to another
size. A parameter blob may wrap buffers owned by someone else (the solver's
parameters and diffs), given with `Blob.wrap`.
"""

from __future__ import annotations

import numpy as np

Shape = tuple[int, ...]


class Blob:
    """Caffe's Blob<float>: `data`, `diff`, `shape`, `count`, the legacy num/channels/height/width, `reshape`."""

    __slots__ = ("_data", "_diff", "__weakref__")

    def __init__(self, shape: Shape | list[int] = ()) -> None:
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"blob shape {list(shape)} has a negative dimension")
        self._data = np.zeros(shape, np.float32)
        self._diff = np.zeros(shape, np.float32)

    @classmethod
    def wrap(cls, data: np.ndarray, diff: np.ndarray | None = None) -> Blob:
        """A Blob over existing float32 C-contiguous arrays (no copy); `diff` defaults to fresh zeros."""
        blob = cls.__new__(cls)
        blob._bind(data, diff if diff is not None else np.zeros(data.shape, np.float32))
        return blob

    def _bind(self, data: np.ndarray, diff: np.ndarray) -> None:
        """Make this Blob show `data` and `diff` (Caffe's ShareData / ShareDiff)."""
        for a in (data, diff):
            if a.dtype != np.float32 or not a.flags.c_contiguous:
                raise ValueError("internal: blob buffers are C-contiguous float32")
        self._data, self._diff = data, diff

    @property
    def data(self) -> np.ndarray:
        """The blob's values (writable, float32)."""
        return self._data

    @property
    def diff(self) -> np.ndarray:
        """The blob's gradient (writable, float32)."""
        return self._diff

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._data.shape)

    @property
    def count(self) -> int:
        return int(self._data.size)

    def _legacy(self, index: int) -> int:
        # Blob::LegacyShape: axes past the blob's own count as 1 (blobs of at most 4 axes).
        if self._data.ndim > 4:
            raise ValueError(f"num/channels/height/width are for blobs of at most 4 axes; this one has shape "
                             f"{list(self.shape)}: use .shape")
        return int(self._data.shape[index]) if index < self._data.ndim else 1

    @property
    def num(self) -> int:
        return self._legacy(0)

    @property
    def channels(self) -> int:
        return self._legacy(1)

    @property
    def height(self) -> int:
        return self._legacy(2)

    @property
    def width(self) -> int:
        return self._legacy(3)

    def reshape(self, *shape: int) -> None:
        """Blob::Reshape: same size keeps the values (reinterpreted), another size gives fresh zeros."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(int(d) for d in shape)
        if shape == self.shape:
            return
        if any(d < 0 for d in shape):
            raise ValueError(f"Blob.reshape{shape}: a dimension is negative")
        if int(np.prod(shape, dtype=np.int64)) == self.count:
            self._data = self._data.reshape(shape)
            self._diff = self._diff.reshape(shape)
        else:
            self._data = np.zeros(shape, np.float32)
            self._diff = np.zeros(shape, np.float32)

    def __repr__(self) -> str:
        return f"<Blob shape={list(self.shape)}>"


class BlobVec(list):
    """A layer's list of parameter blobs (pycaffe's BlobVec): `add_blob(*shape)` appends a new one."""

    def add_blob(self, *shape: int) -> None:
        """Append a zero-filled Blob of `shape` (a Python layer's own parameters, made in its setup)."""
        self.append(Blob(shape))
