"""Solver definitions (.prototxt): read with Caffe's in-memory upgrade.

Solver state (.solverstate) lives elsewhere; this module only reads the
SolverParameter text a user writes, with our schema (BVLC's plus the common
forks') or a fork's own caffe.proto (`proto=`, the CLI's -proto).
"""

from __future__ import annotations

import os
from pathlib import Path

from caffecompat import glog
from caffecompat.formats import forks, protofile, upgrade, userproto
from caffecompat.proto import caffe_pb2

_INLINE_NETS = ("net_param", "train_net_param", "test_net_param")


def read_solver_prototxt(
    path: str | os.PathLike, resolve_snapshot_prefix: bool = True, proto: str | os.PathLike | None = None
) -> caffe_pb2.SolverParameter:
    """Parse a solver prototxt and upgrade it, as ReadSolverParamsFromTextFileOrDie.

    With `resolve_snapshot_prefix` (the default, as `caffe train` reads a
    solver) the snapshot prefix is also completed as Caffe does; the upgrade
    tool turns that off so the file it writes keeps what the user wrote.
    `proto` is a fork's caffe.proto to parse the file with. Fork fields the
    solver or its inline nets use and caffecompat does not implement are
    reported together, in one NotSupportedError.
    """
    text = protofile.read_text_file(path, "solver prototxt")
    user = userproto.active(proto)
    problems: list[str] = []
    if user is None:
        solver = protofile.parse_text(text, caffe_pb2.SolverParameter, path, "solver prototxt")
    else:
        schema = userproto.schema(user)
        theirs = protofile.parse_text(text, schema.message_class("SolverParameter"), path, "solver prototxt",
                                      schema=schema.label)
        solver, problems = userproto.to_ours(theirs, caffe_pb2.SolverParameter, schema.label, "solver")
    upgrade.upgrade_solver(solver, str(path))
    problems += forks.solver_problems(solver)
    for name in _INLINE_NETS:
        nets = getattr(solver, name)
        for net in (nets if name == "test_net_param" else [nets] if solver.HasField(name) else []):
            for lp in net.layer:
                forks.translate_ceil_mode(lp, f"{path} ({name})")
            problems += forks.net_problems(net)
    forks.raise_problems(problems, str(path))
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
