"""Caffe's DummyData layer: tops of given shapes filled by fillers (zeros by default).

Shapes come from `shape` (once, or once per top) or the legacy
num/channels/height/width lists (each once, or once per top). Fillers come
from `data_filler` (none: constant 0; one: shared by all tops; or one per
top). Constant tops are filled once; the others are refilled every batch.
"""

from __future__ import annotations

import numpy as np

from caffecompat.data.source import DataSource, child_rng
from caffecompat.errors import CaffeCompatError
from caffecompat.net.fillers import fill
from caffecompat.proto import caffe_pb2


class DummyDataSource(DataSource):
    """Batches of a `type: "DummyData"` layer: one float32 array per top."""

    def __init__(self, layer: caffe_pb2.LayerParameter, phase: int, rng: np.random.Generator) -> None:
        super().__init__(layer)
        param = layer.dummy_data_param
        n = len(layer.top)
        if n == 0:
            raise CaffeCompatError(f"{self.where}: needs at least one top")
        fillers = list(param.data_filler)
        if len(fillers) not in (0, 1, n):
            raise CaffeCompatError(f"{self.where}: {len(fillers)} data_filler entries for {n} tops; give "
                                   f"0, 1 or {n}")
        if not fillers:
            fillers = [caffe_pb2.FillerParameter(type="constant", value=0)]
        self.fillers = [fillers[i if len(fillers) > 1 else 0] for i in range(n)]
        legacy = {f: list(getattr(param, f)) for f in ("num", "channels", "height", "width")}
        if any(legacy.values()):
            if len(param.shape):
                raise CaffeCompatError(f"{self.where}: dummy_data_param sets both shape and the legacy "
                                       "num/channels/height/width; use one")
            for field, values in legacy.items():
                if len(values) not in (1, n):
                    raise CaffeCompatError(f"{self.where}: dummy_data_param.{field} is given {len(values)} "
                                           f"times; give it once or once per top ({n})")
            self._shapes = [tuple(int(v[i if len(v) > 1 else 0]) for v in legacy.values()) for i in range(n)]
        else:
            if len(param.shape) not in (1, n):
                raise CaffeCompatError(f"{self.where}: dummy_data_param.shape is given {len(param.shape)} "
                                       f"times; give it once or once per top ({n})")
            self._shapes = [tuple(int(d) for d in param.shape[i if len(param.shape) > 1 else 0].dim)
                            for i in range(n)]
        self.rng = child_rng(rng)
        self._check_memory(2, "filled once and copied for each batch,")
        # DummyData refills only non-constant tops each forward; constant ones are filled once.
        self._fixed: list[np.ndarray | None] = [
            self._fill(i) if f.type == "constant" else None for i, f in enumerate(self.fillers)
        ]

    def _fill(self, i: int) -> np.ndarray:
        return fill(self.fillers[i], self._shapes[i], self.rng, where=f"{self.where} top '{self.tops[i]}'")

    def next_batch(self) -> list[np.ndarray]:
        """One array per top: the constant ones as filled at the start, the others freshly filled."""
        return [fixed.copy() if fixed is not None else self._fill(i) for i, fixed in enumerate(self._fixed)]
