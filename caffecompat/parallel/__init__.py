"""Data-parallel training on several processes over MPI (Caffe's multi-GPU training, P2PSync/NCCL).

`mpiexec -n N caffecompat train ...` (or `caffecompat train -processes N`,
`-gpu 0,1,...`) runs one solver per process. This package holds what every
part of caffecompat may ask about it, as Caffe asks `Caffe::solver_count()`
and `Caffe::solver_rank()`, and the process group the solver reduces its
gradients over:

- `activate()`: called by `caffecompat train` and by the Solver; when this
  process was started by an MPI launcher as one of several, it joins the
  group (mpi4py, `pip install 'caffecompat[mpi]'`) and sets the rank and
  count; otherwise it is a group of one whose collectives do nothing.
- `solver_count()`, `solver_rank()`, `root_solver()`: read by the data layers
  (each TRAIN-phase Data and HDF5Data layer reads its own share of the
  records) and by the solver (only rank 0 tests, displays and snapshots).

caffecompat.parallel.group holds the MPI side (the one Allreduce of the
gradient buffer, agreement on signals, failure handling) and
caffecompat.parallel.launch the launcher side (-processes, -gpu lists).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")
TEST_PHASE = 1  # caffe_pb2.TEST

_rank = 0
_count = 1
_local_rank = 0
_group = None

# Environment variables an MPI launcher sets in each process it starts, giving the job's size
# (MPICH/Hydra and Intel MPI through PMI, Open MPI, MVAPICH2). PMIx launchers (srun --mpi=pmix,
# Open MPI 5) set PMIX_RANK and leave the size to the library.
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def solver_count() -> int:
    """Caffe::solver_count(): how many solvers train together (1 without MPI)."""
    return _count


def solver_rank() -> int:
    """Caffe::solver_rank(): this process's rank, 0 for the root solver."""
    return _rank


def root_solver() -> bool:
    """Caffe::root_solver(): rank 0, the one that tests, displays and snapshots."""
    return _rank == 0


def local_rank() -> int:
    """This process's rank among those of the job on the same machine (its GPU is the -gpu list's entry here)."""
    return _local_rank


def keeps(offset: int, phase: int) -> bool:
    """Whether this rank reads the record at running `offset` (counted over every record read, epochs included)."""
    # DataLayer::Skip / HDF5DataLayer::Skip: with N solvers, rank r reads the records whose offset is r modulo N;
    # TEST-phase layers (only rank 0 tests) read every record.
    return phase == TEST_PHASE or offset % _count == _rank


def share(records: Iterator[T], phase: int) -> Iterator[T]:
    """This rank's share of a layer's endless record stream (`keeps`); the stream itself with one solver."""
    if _count == 1 or phase == TEST_PHASE:
        return records
    return _every(records, phase)


def _every(records: Iterator[T], phase: int) -> Iterator[T]:
    try:
        for offset, record in enumerate(records):
            if keeps(offset, phase):
                yield record
    finally:
        close = getattr(records, "close", None)
        if close is not None:
            close()


def _set(rank: int, count: int, local: int) -> None:
    global _rank, _count, _local_rank
    _rank, _count, _local_rank = rank, count, local


def launched_size() -> int | None:
    """How many processes an MPI launcher says this job has: None when not started by one, 0 when
    started by one that leaves the size to the library (PMIx)."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    if os.environ.get("PMIX_RANK"):
        return 0
    return None


def activate(timeout: float | None = None, work: str = "training"):
    """The process group of this run (created once): MPI when an MPI launcher started several processes.

    Returns a `caffecompat.parallel.group.Group`; a single process gets one whose collectives do nothing.
    `timeout`: seconds a rank waits for a silent peer before stopping the job (default 300); `work`: what
    the ranks do together, for the set-up log.
    """
    global _group
    if _group is None:
        from caffecompat.parallel import group

        _group = group.join(group.DEFAULT_TIMEOUT if timeout is None else timeout, work)
    return _group


def current():
    """The group `activate()` made, or a group of one when nothing activated a multi-process run."""
    if _group is None:
        from caffecompat.parallel.group import Group

        return Group()
    return _group
