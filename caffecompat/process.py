"""pycaffe's process-wide functions that are not about one net: glog from Python, Timer, and multi-process.

    caffe.init_log(); caffe.log("Using devices [0]")       # a glog INFO line, as _caffe.cpp's Log
    t = caffe.Timer(); t.start(); ...; t.stop(); t.ms      # Caffe's Timer (CPU clock)
    caffe.solver_count(), caffe.solver_rank()              # the MPI world under `mpiexec -n N python ...`

Caffe's python/train.py runs one solver per GPU with Python's multiprocessing
and NCCL (`caffe.NCCL`, `set_solver_count`, `set_solver_rank`,
`set_multiprocess`). caffecompat's data-parallel training is MPI's instead
(caffecompat.parallel): every process started by `mpiexec` joins the group
when its solver is made, and the gradients are reduced there. So the counts
read the MPI world; setting them to what the MPI world already is works, any
other value (and NCCL itself) fails with one line saying to launch with
mpiexec.
"""

from __future__ import annotations

import time
from typing import Any

from caffecompat import glog, parallel
from caffecompat.errors import NotSupportedError

_MULTI = "use `mpiexec -n N caffecompat train -solver S` (or `caffecompat train -solver S -processes N`)"


# -- glog from Python ------------------------------------------------------------------------


def init_log(level: int | None = None, stderr: bool | None = None) -> None:
    """_caffe.cpp's init_log(): start glog; `level` sets FLAGS_minloglevel, `stderr` FLAGS_logtostderr."""
    glog.configure("python", minloglevel=None if level is None else int(level),
                   logtostderr=None if stderr is None else bool(stderr))


def log(message: str) -> None:
    """_caffe.cpp's log(s): `s` as one glog INFO line."""
    # Caffe's Log(): LOG(INFO) << s, at _caffe.cpp line 68.
    glog.info("_caffe.cpp:68", str(message))


# -- Timer -----------------------------------------------------------------------------------


class Timer:
    """Caffe's Timer: `start()`, `stop()`, and `ms`, the whole milliseconds between the last start and stop."""

    def __init__(self) -> None:
        self._running = False
        self._has_run = False
        self._start = 0.0
        self._stop = 0.0

    def start(self) -> None:
        """Timer::Start: start timing unless already running."""
        if not self._running:
            self._start = time.perf_counter()
            self._running = True
            self._has_run = True

    def stop(self) -> None:
        """Timer::Stop: stop timing if running."""
        if self._running:
            self._stop = time.perf_counter()
            self._running = False

    @property
    def ms(self) -> float:
        """Timer::MilliSeconds: stops a running timer first; 0 (with a warning) for one never started."""
        if not self._has_run:
            glog.warning("benchmark.cpp:84", "Timer has never been run before reading time.")
            return 0.0
        self.stop()
        # Caffe's Timer::MilliSeconds on the CPU: boost's total_milliseconds(), whole milliseconds.
        return float(int((self._stop - self._start) * 1e3))


# -- several processes -----------------------------------------------------------------------


def _world() -> None:
    # Under an MPI launcher, join its world so the counts say what the solvers will do.
    if parallel.launched_size() is not None:
        parallel.activate()


def solver_count() -> int:
    """Caffe::solver_count(): the MPI world's size under mpiexec, 1 otherwise."""
    _world()
    return parallel.solver_count()


def solver_rank() -> int:
    """Caffe::solver_rank(): this process's rank in the MPI world under mpiexec, 0 otherwise."""
    _world()
    return parallel.solver_rank()


def set_solver_count(count: int) -> None:
    """Caffe::set_solver_count: accepted when it is the MPI world's size (the processes come from mpiexec)."""
    if int(count) != solver_count():
        raise NotSupportedError(f"caffe.set_solver_count({count}) in a run of {solver_count()} process(es): "
                                f"processes are MPI's, not set from Python; {_MULTI}")


def set_solver_rank(rank: int) -> None:
    """Caffe::set_solver_rank: accepted when it is this process's MPI rank."""
    if int(rank) != solver_rank():
        raise NotSupportedError(f"caffe.set_solver_rank({rank}) on rank {solver_rank()}: ranks are MPI's, not set "
                                f"from Python; {_MULTI}")


def set_multiprocess(multiprocess: bool) -> None:
    """Caffe::set_multiprocess: caffecompat's solvers are always one per process, so this changes nothing."""
    # Caffe's multiprocess flag makes each solver process read its own share of the data, which
    # caffecompat's TRAIN data layers always do under MPI (caffecompat.parallel.share).


def has_nccl() -> bool:
    """Whether this build has NCCL: never (caffecompat reduces gradients over MPI)."""
    return False


class NCCL:
    """caffe.NCCL(solver, uid): not supported (it needs CUDA's NCCL); every use says what to run instead."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotSupportedError(f"caffe.NCCL (multi-GPU training through NCCL, which needs CUDA); {_MULTI}")

    @staticmethod
    def new_uid() -> bytes:
        """NCCL::new_uid: not supported."""
        raise NotSupportedError(f"caffe.NCCL.new_uid (multi-GPU training through NCCL, which needs CUDA); "
                                f"{_MULTI}")
