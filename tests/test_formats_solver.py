"""Solver prototxt reading (caffecompat.formats.solver)."""

from __future__ import annotations

import pytest

from caffecompat.errors import CaffeCompatError
from caffecompat.formats.solver import complete_snapshot_prefix, read_solver_prototxt
from caffecompat.proto import caffe_pb2


def test_bvlc_and_golden_solvers_parse(bvlc, golden):
    paths = sorted(bvlc.rglob("*solver*.prototxt")) + sorted((golden / "train").glob("solver_*.prototxt"))
    assert len(paths) >= 15
    for path in paths:
        solver = read_solver_prototxt(path, resolve_snapshot_prefix=False)
        assert solver.HasField("base_lr"), path
        assert not solver.HasField("solver_type"), path


def test_solver_type_enum_is_upgraded(tmp_path):
    path = tmp_path / "old_solver.prototxt"
    path.write_text('net: "n.prototxt"\nbase_lr: 0.01\nsolver_type: NESTEROV\nsnapshot_prefix: "s"\n')
    solver = read_solver_prototxt(path)
    assert solver.type == "Nesterov" and not solver.HasField("solver_type")


def test_snapshot_prefix_defaults_like_caffe(tmp_path):
    path = tmp_path / "my_solver.prototxt"
    path.write_text("base_lr: 0.1\n")
    assert read_solver_prototxt(path).snapshot_prefix == str(tmp_path / "my_solver")
    assert not read_solver_prototxt(path, resolve_snapshot_prefix=False).HasField("snapshot_prefix")
    solver = caffe_pb2.SolverParameter(snapshot_prefix=str(tmp_path))
    complete_snapshot_prefix(solver, path)
    assert solver.snapshot_prefix == str(tmp_path / "my_solver")
    solver = caffe_pb2.SolverParameter(snapshot_prefix="out/run")
    complete_snapshot_prefix(solver, path)
    assert solver.snapshot_prefix == "out/run"


def test_malformed_solver(tmp_path):
    path = tmp_path / "s.prototxt"
    path.write_text("base_lr: 0.1\nmax_iter: ten\n")
    with pytest.raises(CaffeCompatError, match=r"s.prototxt:2:\d+"):
        read_solver_prototxt(path)
