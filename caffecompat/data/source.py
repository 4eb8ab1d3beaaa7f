"""DataSource, what the training code pulls batches from, and its prefetching form.

A prefetching source keeps `prefetch` batches, as Caffe's
BasePrefetchingDataLayer does: the one the net is using and the rest filled
ahead on a background thread, so a consumer slower than the loader never
waits. The thread owns its own Generator, seeded from the one
passed in when the source is made, so the sequence of batches is the same
on every run with the same seed whatever the timing.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from caffecompat.errors import CaffeCompatError
from caffecompat.proto import caffe_pb2

T = TypeVar("T")
R = TypeVar("R")


def describe(layer: caffe_pb2.LayerParameter) -> str:
    """How messages name a layer: `layer 'data' (Data)`."""
    return f"layer '{layer.name}' ({layer.type})"


def child_rng(rng: np.random.Generator) -> np.random.Generator:
    """A Generator of the source's own, seeded from `rng` (Caffe seeds each layer's RNG from its global one)."""
    return np.random.Generator(np.random.PCG64(int(rng.integers(2**63))))


class DataSource:
    """Batches for one data layer: `top_shapes()`, `next_batch()`, `close()`."""

    def __init__(self, layer: caffe_pb2.LayerParameter) -> None:
        self.name = layer.name
        self.type = layer.type
        self.tops = list(layer.top)
        self.where = describe(layer)
        self._shapes: list[tuple[int, ...]] = []

    def top_shapes(self) -> list[tuple[int, ...]]:
        """The shape of each top, in the layer's top order, as every batch will have it."""
        return list(self._shapes)

    def next_batch(self) -> list[np.ndarray]:
        """The next batch: one float32 array per top."""
        raise NotImplementedError

    def _check_memory(self, copies: int, why: str) -> None:
        """Refuse batches of which `copies` (held at once, for `why`) could not fit in memory."""
        from caffecompat.net.memory import memory_limit
        from caffecompat.outfiles import human_bytes

        for shape in self._shapes:
            if any(d <= 0 for d in shape):
                raise CaffeCompatError(f"{self.where}: top shape {list(shape)} has a dimension below 1")
        batch = sum(math.prod(s) for s in self._shapes) * 4
        needed = batch * copies
        limit = memory_limit()
        if limit is not None and needed > limit[0]:
            raise CaffeCompatError(
                f"{self.where}: a batch of shape {list(self._shapes[0])} takes {human_bytes(batch)}; {why} the "
                f"layer holds {copies} of them ({human_bytes(needed)}), but {limit[1]} allows "
                f"{human_bytes(limit[0])}; reduce the batch size"
            )

    def close(self) -> None:
        """Release files and threads; the source cannot be used afterwards."""

    def __enter__(self) -> DataSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class PrefetchingSource(DataSource):
    """A DataSource whose `_load_batch()` runs on a background thread, `prefetch` batches ahead."""

    _thread: threading.Thread | None = None

    def _start(self, prefetch: int) -> None:
        """Start the loader thread; call at the end of the subclass's constructor."""
        if prefetch < 1:
            raise CaffeCompatError(f"{self.where}: data_param.prefetch must be at least 1")
        self._check_memory(prefetch + 1, f"with data_param.prefetch {prefetch} (batches read ahead)")
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        # BasePrefetchingDataLayer's prefetch_free_ queue: the loader takes a free batch before loading
        # one, and the batch the net used goes back to it when the net takes the next one.
        self._free = threading.Semaphore(prefetch)
        self._current = False
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"prefetch {self.name}", daemon=True)
        self._thread.start()

    def _load_batch(self) -> list[np.ndarray]:
        raise NotImplementedError

    def _start_pool(self, threads: int) -> None:
        """Threads for `_map` (decoding and transforming release the GIL)."""
        self._threads = max(1, threads)
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix=f"decode {self.name}") \
            if self._threads > 1 else None

    def _map(self, fn: Callable[[T], R], items: list[T]) -> list[R]:
        """[fn(x) for x in items], spread over the pool's threads in contiguous chunks, in order."""
        pool = getattr(self, "_pool", None)
        if pool is None or len(items) < 2:
            return [fn(x) for x in items]
        step = -(-len(items) // self._threads)
        futures = [pool.submit(lambda part: [fn(x) for x in part], items[k:k + step])
                   for k in range(0, len(items), step)]
        return [r for f in futures for r in f.result()]

    def _stop_pool(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)
            self._pool = None

    def _on_close(self) -> None:
        """Release what the loader used; runs after the thread has stopped."""

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._free.acquire(timeout=0.1):
                continue
            try:
                item: object = self._load_batch()
            except BaseException as e:  # handed to the consumer, which raises it
                item = _Failed(e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, _Failed):
                return

    def next_batch(self) -> list[np.ndarray]:
        """The next prefetched batch (waits only when the loader is behind)."""
        if self._error is not None:
            raise self._error
        if self._thread is None or self._stop.is_set():
            raise CaffeCompatError(f"{self.where}: data source used after close()")
        if self._current:
            self._free.release()  # Forward: the batch the net used goes back before it takes the next
        self._current = False
        item = self._queue.get()
        if isinstance(item, _Failed):
            self._error = item.error
            raise item.error
        self._current = True
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the loader thread and release its resources."""
        if self._thread is None:
            return
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.05)
        self._thread = None
        self._on_close()

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
