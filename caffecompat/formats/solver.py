"""Solver definitions (.prototxt): read with Caffe's in-memory upgrade.

Solver state (.solverstate) lives elsewhere; this module only reads the
SolverParameter text a user writes.
"""

from __future__ import annotations

import os
from pathlib import Path

from caffecompat import glog
from caffecompat.formats import protofile, upgrade
from caffecompat.proto import caffe_pb2


def read_solver_prototxt(
    path: str | os.PathLike, resolve_snapshot_prefix: bool = True
) -> caffe_pb2.SolverParameter:
    """Parse a solver prototxt and upgrade it, as ReadSolverParamsFromTextFileOrDie.

    With `resolve_snapshot_prefix` (the default, as `caffe train` reads a
    solver) the snapshot prefix is also completed as Caffe does; the upgrade
    tool turns that off so the file it writes keeps what the user wrote.
    """
    solver = protofile.read_text(path, caffe_pb2.SolverParameter, "solver prototxt")
    upgrade.upgrade_solver(solver, str(path))
    if resolve_snapshot_prefix:
        complete_snapshot_prefix(solver, path)
    return solver


def complete_snapshot_prefix(solver: caffe_pb2.SolverParameter, path: str | os.PathLike) -> None:
    """Caffe's UpgradeSnapshotPrefixProperty, in place.

    No snapshot_prefix: the solver file's path without its extension. A prefix
    naming an existing folder: that folder / the solver file's stem.
    """
    p = Path(path)
    if not solver.HasField("snapshot_prefix"):
        solver.snapshot_prefix = str(p.with_suffix(""))
        glog.info(
            "upgrade_proto.cpp:1108",
            f"snapshot_prefix was not specified and is set to {solver.snapshot_prefix}",
        )
    elif Path(solver.snapshot_prefix).is_dir():
        solver.snapshot_prefix = str(Path(solver.snapshot_prefix) / p.stem)
        glog.info(
            "upgrade_proto.cpp:1113",
            f"snapshot_prefix was a directory and is replaced to {solver.snapshot_prefix}",
        )
