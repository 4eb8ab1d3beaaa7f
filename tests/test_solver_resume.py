"""Resume is exact: N iterations straight equal N/2, a snapshot, `train -snapshot` and N/2 more, bit for bit.

The net reads one HDF5 batch again and again and has no random layer, so what
a solverstate does not hold (the data cursor, which Caffe restarts on resume,
and random state) cannot differ between the two runs. Every solver type, both
snapshot formats, iter_size 2 and a multistep policy (current_step) are
covered; Adam and AdaDelta keep two history blobs per parameter, stored by
Caffe as every parameter's first blob, then every parameter's second.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from caffecompat.errors import CaffeCompatError
from caffecompat.formats.caffemodel import read_weights
from caffecompat.formats.hdf5_snapshot import read_hdf5_weights
from caffecompat.solver.solverstate import read_solverstate, split_history
from tests.cli_run import run_cli

NET = """name: "resume"
layer { name: "data" type: "HDF5Data" top: "data" top: "label"
        hdf5_data_param { source: "list.txt" batch_size: 4 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "ip1" type: "InnerProduct" bottom: "conv1" top: "ip1"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
"""

# Each solver type's own fields (Caffe's example values); every run also has L2 decay and iter_size 2.
SOLVERS = {
    "SGD": "momentum: 0.9",
    "Nesterov": "momentum: 0.9",
    "AdaGrad": "delta: 1e-6",
    "RMSProp": "rms_decay: 0.95 delta: 1e-6",
    "AdaDelta": "momentum: 0.95 delta: 1e-6",
    "Adam": "momentum: 0.9 momentum2: 0.999 delta: 1e-8",
}
ITERS = 6


def _workdir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(5)
    with h5py.File(tmp_path / "batch.h5", "w") as f:
        f["data"] = rng.normal(size=(4, 2, 5, 5)).astype(np.float32)
        f["label"] = np.array([0, 1, 2, 1], np.float32)
    (tmp_path / "list.txt").write_text("batch.h5\n")
    (tmp_path / "net.prototxt").write_text(NET)
    return tmp_path


def _solver(work: Path, name: str, solver_type: str, hdf5: bool, prefix: str) -> str:
    (work / prefix).mkdir(exist_ok=True)
    text = (f'net: "net.prototxt"\ntype: "{solver_type}"\n{SOLVERS[solver_type]}\n'
            f'base_lr: {1.0 if solver_type == "AdaDelta" else 0.05}\n'
            'lr_policy: "multistep" gamma: 0.5 stepvalue: 2 stepvalue: 4\n'
            f"weight_decay: 0.01\niter_size: 2\nmax_iter: {ITERS}\ndisplay: 1\nrandom_seed: 7\n"
            f'snapshot: {ITERS // 2}\nsnapshot_prefix: "{prefix}/s"\n'
            + ("snapshot_format: HDF5\n" if hdf5 else ""))
    path = work / f"{name}.prototxt"
    path.write_text(text)
    return path.name


def _weights(path: Path) -> dict[str, list[np.ndarray]]:
    if path.suffix == ".h5":
        return {name: [blobs[i] for i in sorted(blobs)] for name, blobs in read_hdf5_weights(path)}
    return {name: list(blobs) for name, blobs in read_weights(path).layers}


def _assert_same_snapshot(a: Path, b: Path, suffix: str) -> None:
    model, state = f"_iter_{ITERS}.caffemodel{suffix}", f"_iter_{ITERS}.solverstate{suffix}"
    wa, wb = _weights(Path(f"{a}{model}")), _weights(Path(f"{b}{model}"))
    assert list(wa) == list(wb)
    for layer in wa:
        for x, y in zip(wa[layer], wb[layer], strict=True):
            np.testing.assert_array_equal(x, y, err_msg=layer)
    sa, sb = read_solverstate(f"{a}{state}"), read_solverstate(f"{b}{state}")
    assert (sa.iteration, sa.current_step) == (sb.iteration, sb.current_step) == (ITERS, 2)
    assert len(sa.history) == len(sb.history) > 0
    for i, (x, y) in enumerate(zip(sa.history, sb.history)):
        np.testing.assert_array_equal(x, y, err_msg=f"history blob {i}")
    # The run moved the weights and filled every history blob (nothing trivially equal).
    assert all(np.any(h != 0) for h in sa.history)


@pytest.mark.parametrize("hdf5", [False, True], ids=["binaryproto", "hdf5"])
@pytest.mark.parametrize("solver_type", list(SOLVERS))
def test_resume_equals_straight_run(tmp_path, monkeypatch, solver_type, hdf5):
    work = _workdir(tmp_path)
    monkeypatch.chdir(work)
    suffix = ".h5" if hdf5 else ""
    status, log = run_cli(["train", "-solver", _solver(work, "straight", solver_type, hdf5, "a")])
    assert status == 0, log[-2000:]
    half = f"a/s_iter_{ITERS // 2}.solverstate{suffix}"
    assert Path(half).is_file() and Path(f"a/s_iter_{ITERS // 2}.caffemodel{suffix}").is_file()
    status, log = run_cli(["train", "-solver", _solver(work, "resumed", solver_type, hdf5, "b"), "-snapshot", half])
    assert status == 0, log[-2000:]
    assert f"Restoring previous solver status from {half}" in log
    # The resumed run starts at the snapshot's iteration and shows the multistep rate it had reached.
    base = 1.0 if solver_type == "AdaDelta" else 0.05
    assert f"Iteration {ITERS // 2}, lr = {base * 0.5:g}\n" in log
    assert "Iteration 2, lr" not in log
    _assert_same_snapshot(work / "a" / "s", work / "b" / "s", suffix)


def test_hdf5_snapshot_layout_is_caffes(tmp_path, monkeypatch):
    # Net::ToHDF5 and SGDSolver::SnapshotSolverStateToHDF5: data/<layer>/<i>, iter, learned_net,
    # current_step, history/0..2N-1 with Adam's m blobs (history_[i]) before its v blobs (history_[i+N]).
    work = _workdir(tmp_path)
    monkeypatch.chdir(work)
    status, log = run_cli(["train", "-solver", _solver(work, "adam", "Adam", True, "a")])
    assert status == 0, log[-2000:]
    assert "Snapshotting solver state to HDF5 file a/s_iter_6.solverstate.h5" in log
    with h5py.File(work / "a/s_iter_6.caffemodel.h5") as f:
        assert sorted(f["data"]) == ["conv1", "data", "ip1", "loss", "relu1"]
        assert sorted(f["data/conv1"]) == ["0", "1"] and f["data/conv1/0"].shape == (4, 2, 3, 3)
        weights = [np.asarray(f[f"data/{layer}/{i}"]) for layer in ("conv1", "ip1") for i in ("0", "1")]
    with h5py.File(work / "a/s_iter_6.solverstate.h5") as f:
        assert int(np.asarray(f["iter"]).reshape(-1)[0]) == 6
        assert int(np.asarray(f["current_step"]).reshape(-1)[0]) == 2
        assert f["learned_net"][()] == b"a/s_iter_6.caffemodel.h5"
        # H5LTmake_dataset_string's layout: NUL-terminated, the terminator counted in the size.
        string_type = f["learned_net"].id.get_type()
        assert string_type.get_strpad() == h5py.h5t.STR_NULLTERM and string_type.get_size() == 25
        history = [np.asarray(f[f"history/{i}"]) for i in range(len(f["history"]))]
    assert [h.shape for h in history] == [w.shape for w in weights] * 2
    # Adam's v (an average of squared gradients) is never negative; m is, somewhere.
    assert all(np.all(v >= 0) for v in history[4:]) and any(np.any(m < 0) for m in history[:4])


@pytest.mark.parametrize("name", ["adam_fixed", "adadelta_exp"])
def test_caffe_two_blob_solverstate_restores_in_caffes_order(golden, tmp_path, monkeypatch, name):
    from google.protobuf import text_format

    from caffecompat.proto import caffe_pb2
    from caffecompat.solver.loop import Solver

    path = golden / "train" / "out" / f"{name}_iter_24.solverstate"
    caffe = read_solverstate(path)
    param = caffe_pb2.SolverParameter()
    text_format.Parse((golden / "train" / f"solver_{name}.prototxt").read_text(), param)
    param.snapshot_prefix = str(tmp_path / "again")
    monkeypatch.chdir(golden)
    solver = Solver(param, f"train/solver_{name}.prototxt")
    try:
        solver.restore(str(path))
        assert solver.iter == 24
        restored = solver.history
        for mine, theirs in zip(restored, split_history(caffe.history, len(restored)), strict=True):
            for a, b in zip(mine, theirs, strict=True):
                np.testing.assert_array_equal(a, b)
        solver.snapshot()
    finally:
        solver.close()
    again = read_solverstate(tmp_path / "again_iter_24.solverstate")
    for a, b in zip(again.history, caffe.history, strict=True):
        np.testing.assert_array_equal(a, b)


def test_hdf5_solverstate_of_another_net_is_one_line(tmp_path, monkeypatch, capsys):
    work = _workdir(tmp_path)
    monkeypatch.chdir(work)
    assert run_cli(["train", "-solver", _solver(work, "adam", "Adam", True, "a")])[0] == 0
    # The same state for a solver with one history blob per parameter: the count differs.
    status, log = run_cli(["train", "-solver", _solver(work, "sgd", "SGD", True, "b"),
                           "-snapshot", "a/s_iter_3.solverstate.h5"])
    assert status == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds 8 history blobs but this net and solver need 4" in err[0], err
    with pytest.raises(CaffeCompatError, match="no such solverstate file"):
        read_solverstate(work / "a/s_iter_99.solverstate.h5")


def _mpiexec() -> str:
    try:
        import mpi4py  # noqa: F401

        from caffecompat.parallel import launch

        return launch.find_mpiexec()
    except (ImportError, CaffeCompatError):
        pytest.skip("needs the MPI extra: pip install 'caffecompat[mpi]' (mpi4py and mpich, with mpiexec)")


def _train_processes(work: Path, *args: str) -> None:
    caffecompat = Path(sys.executable).with_name("caffecompat")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(caffecompat), "train", "-processes", "2", *args], cwd=work, capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]


@pytest.mark.parametrize("hdf5", [False, True], ids=["binaryproto", "hdf5"])
def test_resume_equals_straight_run_under_two_processes(tmp_path, hdf5):
    _mpiexec()
    work = _workdir(tmp_path)
    suffix = ".h5" if hdf5 else ""
    _train_processes(work, "-solver", _solver(work, "straight", "Adam", hdf5, "a"))
    _train_processes(work, "-solver", _solver(work, "resumed", "Adam", hdf5, "b"),
                     "-snapshot", f"a/s_iter_{ITERS // 2}.solverstate{suffix}")
    _assert_same_snapshot(work / "a" / "s", work / "b" / "s", suffix)
