"""Inference shared between the processes of an MPI job: `classify` and `extract-features` under
`mpiexec -n N` (or -processes N).

Rule of the split: the work is cut in batches exactly as one process cuts it,
and batch j goes to rank j mod N, so every batch holds the same items as in a
one-process run and gives the same numbers. The ranks hand their results to
rank 0 (an MPI gather of numpy arrays), which alone writes the one output, in
input order, through a temporary file: a rank that fails stops the job with
one line naming it, and nothing is left behind. While a rank works it tells
the others it is alive after every batch (`Group.alive`); a rank waiting for
the others gives up on one silent for -mpi_timeout seconds (hung reading an
image, stopped) and stops the job with one line naming it.

Same numbers means the same per-process thread count: ONNX Runtime splits a
kernel's sums between its threads, so 1 and 2 threads can differ in the last
bit. By default each of N ranks on a machine takes cores / N threads; the
file of `mpiexec -n 2` equals, byte for byte, that of one process with
-threads set to the ranks' count (the set-up log shows both).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import TypeVar

from caffecompat import parallel
from caffecompat.errors import CaffeCompatError
from caffecompat.parallel.group import Group

T = TypeVar("T")


def start(args: argparse.Namespace, argv: Callable[[], list[str]]) -> Group | int:
    """This process's group for the command; or, with -processes N outside mpiexec, the exit status of the N
    ranks this process started and watched (`argv()`: the command line they run)."""
    from caffecompat.parallel import launch

    processes = launch.processes_wanted(getattr(args, "processes", 0), "")
    if processes > 1 and parallel.launched_size() in (None, 1):
        return launch.supervise(argv(), processes)
    group = parallel.activate(getattr(args, "mpi_timeout", None), work="inference")
    group.program = f"caffecompat {argv()[0]}"
    if getattr(args, "processes", 0) and args.processes != group.size:
        error = CaffeCompatError(f"-processes {args.processes}, but mpiexec started {group.size} process(es); "
                                 "give one or the other")
        fail(group, error)  # one line for the job, not one per rank
        raise error
    return group


def takes(group: Group, batch: int) -> bool:
    """Whether this rank runs batch number `batch` (counted from 0): batch mod ranks is its rank."""
    return batch % group.size == group.rank


def gather(group: Group, part: T, what: str) -> list[T]:
    """Every rank's `part`, in rank order, on rank 0 (an empty list on the others)."""
    if group.size == 1:
        return [part]
    group.arrive(what)  # asleep, and stopping the job if a rank falls silent for -mpi_timeout seconds
    mpi = group.MPI  # type: ignore[attr-defined]
    try:
        parts = group.comm.gather(part, root=0)  # type: ignore[attr-defined]
    except mpi.Exception as e:
        raise CaffeCompatError(f"MPI failed while gathering {what}: {' '.join(e.Get_error_string().split())}") \
            from None
    return parts if group.root else []


def in_order(parts: Iterable[list[tuple[int, T]]]) -> list[tuple[int, T]]:
    """The (index, result) pairs of every rank, merged by index."""
    return sorted((pair for part in parts for pair in part), key=lambda pair: pair[0])


def fail(group: Group, error: BaseException) -> None:
    """In a multi-process run, stop every rank because this one failed (one line naming it); else nothing."""
    if group.size > 1 and not isinstance(error, SystemExit):
        group.fail(error)  # type: ignore[attr-defined]
