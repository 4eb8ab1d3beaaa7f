"""Data-parallel training over MPI (caffecompat.parallel): Caffe's multi-GPU rules, launch, signals, failures.

The reference for N processes is one process with iter_size N*K reading a
database in which the records of each iteration are, in order, the ones each
rank reads in Caffe's round-robin share (DataLayer::Skip): Caffe's sum of the
ranks' gradients scaled by 1/N followed by the update's 1/iter_size is that
process's 1/(N*K). The MPI runs need `pip install 'caffecompat[mpi]'`; the
share, -gpu and launcher rules are tested without it.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import lmdb
import numpy as np
import pytest
from google.protobuf import text_format

from caffecompat import parallel
from caffecompat.data import make_source
from caffecompat.errors import CaffeCompatError
from caffecompat.formats.caffemodel import read_caffemodel
from caffecompat.parallel import group as mpi_group
from caffecompat.parallel import launch
from caffecompat.proto import caffe_pb2
from tests.conftest import GOLDEN
from tests.golden_train import parse_log

REPO = Path(__file__).resolve().parent.parent
TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
ITERS = 20


def _mpiexec() -> str:
    try:
        import mpi4py  # noqa: F401

        return launch.find_mpiexec()
    except (ImportError, CaffeCompatError):
        pytest.skip("needs the MPI extra: pip install 'caffecompat[mpi]' (mpi4py and mpich, with mpiexec)")


@pytest.fixture
def solver_rank():
    """Pretend to be rank `r` of `n` (what an MPI group sets), restored afterwards."""
    def set_rank(r: int, n: int) -> None:
        parallel._set(r, n, r)

    yield set_rank
    parallel._set(0, 1, 0)


# -- each rank's share of the records (no MPI needed) ---------------------------------------------

def _records(path: Path) -> list[tuple[bytes, bytes]]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        records = list(txn.cursor())
    env.close()
    return records


def _data_layer(source: Path, batch: int) -> caffe_pb2.LayerParameter:
    lp = caffe_pb2.LayerParameter(name="data", type="Data", top=["data", "label"])
    lp.data_param.source = str(source)
    lp.data_param.batch_size = batch
    lp.data_param.backend = caffe_pb2.DataParameter.LMDB
    return lp


@pytest.mark.parametrize(("rank", "count"), [(1, 2), (2, 3)])
def test_each_rank_reads_its_round_robin_share_of_the_records(golden, solver_rank, rank, count):
    records = _records(golden / "lmdb" / "train_32")
    labels = [caffe_pb2.Datum.FromString(v).label for _, v in records]
    solver_rank(rank, count)
    batch, batches = 16, 25  # 25 x 16 x 3 records: past the end of the 160-record database twice
    src = make_source(_data_layer(golden / "lmdb" / "train_32", batch), TRAIN, np.random.default_rng(0))
    got = [src.next_batch() for _ in range(batches)]
    src.close()
    # DataLayer::Skip: the record at running offset o goes to rank o % count, epochs included.
    want = [labels[o % len(labels)] for o in range(rank, batch * batches * count, count)]
    assert np.concatenate([b[1] for b in got]).tolist() == want
    first = caffe_pb2.Datum.FromString(records[rank][1])
    pixels = np.frombuffer(first.data, np.uint8).reshape(first.channels, first.height, first.width)
    np.testing.assert_array_equal(got[0][0][0], pixels.astype(np.float32))
    # TEST nets (only rank 0 runs them) read every record.
    src = make_source(_data_layer(golden / "lmdb" / "train_32", batch), TEST, np.random.default_rng(0))
    assert src.next_batch()[1].tolist() == labels[:batch]
    src.close()


def test_hdf5_rows_are_shared_round_robin(tmp_path, monkeypatch, solver_rank):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["data"] = np.arange(5, dtype=np.float32)[:, None]
        f["label"] = np.arange(5, dtype=np.float32)
    (tmp_path / "list.txt").write_text("a.h5\n")
    monkeypatch.chdir(tmp_path)
    lp = caffe_pb2.LayerParameter(name="h5", type="HDF5Data", top=["data", "label"])
    lp.hdf5_data_param.source = "list.txt"
    lp.hdf5_data_param.batch_size = 4
    solver_rank(1, 2)
    src = make_source(lp, TRAIN, np.random.default_rng(0))
    # Rows at running offsets 1, 3, 5, ... of the endless row stream 0 1 2 3 4 0 1 2 ...
    assert [src.next_batch()[1].tolist() for _ in range(2)] == [[1, 3, 0, 2], [4, 1, 3, 0]]
    src.close()


# -- -gpu lists, -processes and the missing extra (no MPI needed) ---------------------------------

class _Group(mpi_group.Group):
    def __init__(self, size: int, local_rank: int, local_size: int) -> None:
        self.size, self.local_rank, self.local_size = size, local_rank, local_size


def test_each_process_takes_the_gpu_at_its_local_rank():
    assert launch.gpu_list("") == []
    assert launch.gpu_list("0, 2,3") == [0, 2, 3]
    # Caffe's solver i runs on the i-th listed device; with MPI, i is the rank on its machine.
    assert [launch.device_for([2, 3], _Group(4, r, 2), "2,3") for r in (0, 1)] == [2, 3]
    assert launch.device_for([5], _Group(1, 0, 1), "5") == 5
    assert launch.device_for([], _Group(2, 1, 2), "") is None
    with pytest.raises(CaffeCompatError, match=r"-gpu 0,1,2 lists 3 device\(s\) but 2 processes .*\(mpiexec -n 3"):
        launch.device_for([0, 1, 2], _Group(2, 0, 2), "0,1,2")
    for bad in ("0,x", "0,0", "-1"):
        with pytest.raises(CaffeCompatError, match=f"-gpu {bad}"):
            launch.gpu_list(bad)
    assert launch.processes_wanted(0, "0,1,2,3") == 4
    assert launch.processes_wanted(3, "") == 3
    assert launch.processes_wanted(0, "1") == 1
    with pytest.raises(CaffeCompatError, match="disagree"):
        launch.processes_wanted(2, "0,1,2")


def test_gpu_all_without_a_cuda_device_says_so(monkeypatch):
    monkeypatch.setattr(launch, "cuda_device_count", lambda: 0)
    with pytest.raises(CaffeCompatError, match="-gpu all: no CUDA device found"):
        launch.gpu_list("all")
    monkeypatch.setattr(launch, "cuda_device_count", lambda: 3)
    assert launch.gpu_list("all") == [0, 1, 2]


def test_a_multi_process_launch_without_mpi4py_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py fails
    monkeypatch.setenv("PMI_SIZE", "4")
    with pytest.raises(CaffeCompatError, match=r"one of 4 processes, but mpi4py is not installed: .*\[mpi\]"):
        mpi_group.join()
    with pytest.raises(CaffeCompatError, match=r"mpi4py, which is not installed: .*caffecompat\[mpi\]"):
        launch.supervise(["train", "-solver", "s.prototxt"], 2)
    monkeypatch.setenv("PMI_SIZE", "1")
    assert mpi_group.join().size == 1


# -- equivalence with iter_size on one process -------------------------------------------------------

def _net(golden: Path, tmp: Path, train_source: Path, name: str) -> Path:
    text = (golden / "train" / "net.prototxt").read_text()
    text = text.replace('"lmdb/train_32"', f'"{train_source}"').replace('"lmdb/val_32"', f'"{golden}/lmdb/val_32"')
    text = text.replace('"mean/', f'"{golden}/mean/')
    path = tmp / f"{name}.prototxt"
    path.write_text(text)
    return path


def _solver(golden: Path, tmp: Path, recipe: str, name: str, net: Path, iter_size: int, **fields) -> Path:
    param = caffe_pb2.SolverParameter()
    text_format.Parse((golden / "train" / f"solver_{recipe}.prototxt").read_text(), param)
    param.net = str(net)
    param.max_iter = ITERS
    param.iter_size = iter_size
    param.snapshot_prefix = str(tmp / name)
    param.snapshot = 0
    del param.test_iter[:]
    param.test_interval = 0
    for key, value in fields.items():
        if key == "test_iter":
            param.test_iter.append(value)
        else:
            setattr(param, key, value)
    path = tmp / f"solver_{name}.prototxt"
    path.write_text(text_format.MessageToString(param))
    return path


def _reordered_db(golden: Path, path: Path, ranks: int, iter_size: int, batch: int = 16) -> Path:
    """The database whose iteration i holds rank 0's records of iteration i, then rank 1's, ... (in pass order)."""
    records = [v for _, v in _records(golden / "lmdb" / "train_32")]
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        position = 0
        for it in range(ITERS):
            for rank in range(ranks):
                for k in range(iter_size):
                    for j in range(batch):
                        offset = ((it * iter_size + k) * batch + j) * ranks + rank  # in the ranks' shared stream
                        txn.put(f"{position:08d}".encode(), records[offset % len(records)])
                        position += 1
    env.close()
    return path


# name: (golden recipe, ranks, iter_size of each rank, solver fields, the one process's own fields)
RUNS = {
    "sgd": ("sgd_step", 2, 1, {"test_interval": 10, "test_iter": 2, "snapshot": 12}, {}),
    "sgd_layerwise_off": ("sgd_step", 2, 1, {"layer_wise_reduce": False}, {}),
    "nesterov": ("nesterov_multistep", 2, 2, {}, {}),
    "adam": ("adam_fixed", 2, 1, {}, {}),
    "adagrad": ("adagrad_inv", 2, 1, {}, {}),
    "rmsprop": ("rmsprop_poly", 2, 1, {}, {}),
    "adadelta": ("adadelta_exp", 2, 2, {}, {}),
    # ApplyUpdate clips the reduced diff (the sum over ranks / N) before dividing by iter_size, so one process
    # clips the plain sum at N times the threshold (clip_gradients 1 in the recipe).
    "clip_l1": ("sgd_itersize_clip_l1_sigmoid", 2, 2, {}, {"clip_gradients": 2.0}),
    "sgd_resume": ("sgd_step", 2, 1, {}, {}),  # resumes from sgd's iteration-12 snapshot
    "sgd3": ("sgd_step", 3, 1, {}, {}),
}


def _run_mpi(mpiexec: str, ranks: int, runs: list[dict], out: Path) -> None:
    config = out / f"runs{ranks}.json"
    config.write_text(json.dumps(runs))
    done = subprocess.run([mpiexec, "-n", str(ranks), sys.executable, "-m", "tests.mpi_driver", str(config), str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]


def _load(out: Path, name: str, rank: int) -> dict:
    with np.load(out / f"{name}.rank{rank}.npz") as z:
        return {k: z[k] for k in z.files}


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Every run of RUNS on its ranks under mpiexec, and on one process with iter_size ranks x K."""
    from tests import mpi_driver

    if not GOLDEN.exists():
        pytest.skip(f"reference data not found at {GOLDEN}")
    mpiexec = _mpiexec()
    out = tmp_path_factory.mktemp("mpi")
    net_mpi = _net(GOLDEN, out, GOLDEN / "lmdb" / "train_32", "net_mpi")
    init = str(GOLDEN / "train" / "init.caffemodel")
    resume = str(out / "sgd_mpi_iter_12.solverstate")
    mpi_runs: dict[int, list[dict]] = {}
    single_runs = []
    for name, (recipe, ranks, k, fields, alone) in RUNS.items():
        db = out / f"db_{ranks}x{k}"
        if not db.exists():
            _reordered_db(GOLDEN, db, ranks, k)
        net_single = _net(GOLDEN, out, db, f"net_{ranks}x{k}")
        start = {"weights": "", "snapshot": resume} if name == "sgd_resume" else {"weights": init, "snapshot": ""}
        mpi_runs.setdefault(ranks, []).append(
            {"name": f"{name}_mpi", "solver": str(_solver(GOLDEN, out, recipe, f"{name}_mpi", net_mpi, k, **fields)),
             **start})
        single_runs.append(
            {"name": f"{name}_single",
             "solver": str(_solver(GOLDEN, out, recipe, f"{name}_single", net_single, ranks * k,
                                   **{**fields, **alone})), **start})
    # The reduction of a GPU's diffs, through host memory, on the CPU net shown as one (mpi_driver.HostStaged).
    staged = _solver(GOLDEN, out, "sgd_step", "sgd_staged_mpi", net_mpi, 1)
    mpi_runs[2].append({"name": "sgd_staged_mpi", "solver": str(staged), "weights": init, "host_staged": True})
    for ranks, runs in mpi_runs.items():
        _run_mpi(mpiexec, ranks, runs, out)
    # One thread, as each rank of this 2-core machine has: the same kernels, so only the sum's order differs.
    from caffecompat.runtime import providers

    threads, providers.INTRA_OP_THREADS = providers.INTRA_OP_THREADS, 1
    try:
        for run in single_runs:
            mpi_driver.train(run, out)
    finally:
        providers.INTRA_OP_THREADS = threads
    return out


@pytest.mark.parametrize("name", list(RUNS))
def test_n_processes_train_as_one_process_with_iter_size_n(trained, name):
    recipe, ranks, k, _, _ = RUNS[name]
    first = 12 if name == "sgd_resume" else 0
    single = _load(trained, f"{name}_single", 0)
    mine = [_load(trained, f"{name}_mpi", r) for r in range(ranks)]
    # Every pass of every iteration: rank r's k-th pass is the single process's pass r*K + k.
    one = single["passes"][single["passes"][:, 0] < ITERS]
    assert one[:, 0].tolist() == [it for it in range(first, ITERS) for _ in range(ranks * k)]
    for r, run in enumerate(mine):
        passes = run["passes"][run["passes"][:, 0] < ITERS]
        assert passes[:, 0].tolist() == [it for it in range(first, ITERS) for _ in range(k)]
        for it in range(ITERS - first):
            got = passes[it * k:(it + 1) * k, 1]
            want = one[it * ranks * k + r * k:it * ranks * k + (r + 1) * k, 1]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"rank {r}, iteration {it + first}")
        assert int(run["iteration"]) == ITERS
    # The same update on every rank: weights and history stay identical, and equal the single process's.
    keys = [key for key in single if key[:2] in ("w:", "h0", "h1")]
    assert keys and all(key in mine[0] for key in keys)
    for key in keys:
        for r in range(1, ranks):
            np.testing.assert_array_equal(mine[r][key], mine[0][key], err_msg=f"rank {r} {key}")
        assert _relative(mine[0][key], single[key]) <= 1e-5, key


def test_layer_wise_reduce_does_not_change_results(trained):
    on, off = _load(trained, "sgd_mpi", 0), _load(trained, "sgd_layerwise_off_mpi", 0)
    for key in (key for key in on if key.startswith("w:")):
        np.testing.assert_array_equal(on[key], off[key])


def test_gpu_diffs_are_reduced_through_host_memory(trained):
    staged, plain = _load(trained, "sgd_staged_mpi", 1), _load(trained, "sgd_mpi", 1)
    assert int(staged["staged"]) == ITERS * 8  # every parameter's diff written back after each reduction
    for key in (key for key in plain if key.startswith("w:")):
        np.testing.assert_array_equal(staged[key], plain[key])


def test_only_rank_0_tests_displays_and_snapshots(trained, monkeypatch):
    from caffecompat import glog
    from caffecompat.cli import main

    rank0, rank1 = _load(trained, "sgd_mpi", 0), _load(trained, "sgd_mpi", 1)
    assert int(rank0["test_nets"]) == 1 and int(rank1["test_nets"]) == 0
    assert str(rank0["snapshotted"]) == str(trained / "sgd_mpi_iter_20.solverstate")
    assert str(rank1["snapshotted"]) == ""
    assert sorted(p.name for p in trained.glob("sgd_mpi_iter_*")) == [
        f"sgd_mpi_iter_{i}.{ext}" for i in (12, 20) for ext in ("caffemodel", "solverstate")]
    quiet = (trained / "sgd_mpi.rank1.log").read_text()
    assert "Iteration" not in quiet and "Test net output" not in quiet
    log = parse_log((trained / "sgd_mpi.rank0.log").read_text())
    reference = parse_log((trained / "sgd_single.rank0.log").read_text())
    assert sorted(log.test) == sorted(reference.test) == [0, 10, 20]
    assert sorted(log.train) == list(range(ITERS + 1))
    for it in log.test:
        for output, value in reference.test[it].items():
            assert log.test[it][output] == pytest.approx(value, rel=1e-4, abs=1e-5), (it, output)
    # Rank 0's last test equals `caffecompat test` of the weights it snapshotted then.
    monkeypatch.chdir(trained)
    stream = io.StringIO()
    glog.set_stream(stream)
    try:
        assert main(["test", "-model", "net_mpi.prototxt", "-weights", "sgd_mpi_iter_20.caffemodel",
                     "-iterations", "2"]) == 0
    finally:
        glog.set_stream(None)
    scores = dict(re.findall(r"caffe\.cpp:321\] (\w+) = (\S+)", stream.getvalue()))
    for output in ("accuracy", "accuracy_top3", "loss"):
        assert log.test[ITERS][output] == pytest.approx(float(scores[output]), rel=1e-5), output
    saved = {b.name: b for b in read_caffemodel(str(trained / "sgd_mpi_iter_20.caffemodel")).layer}
    np.testing.assert_array_equal(np.asarray(saved["ip2"].blobs[1].data, np.float32), rank0["w:ip2#1"])


# -- the command line: launch, signals, failures -------------------------------------------------------

def _long_solver(golden: Path, tmp: Path, train_source: str = "lmdb/train_32") -> Path:
    text = (golden / "train" / "net.prototxt").read_text().replace('"lmdb/train_32"', f'"{train_source}"')
    net = tmp / "net.prototxt"
    net.write_text(text.replace('"lmdb/val_32"', f'"{golden}/lmdb/val_32"'))
    param = caffe_pb2.SolverParameter()
    text_format.Parse((golden / "train" / "solver_sgd_step.prototxt").read_text(), param)
    param.net = str(net)
    param.max_iter = 1_000_000
    param.snapshot = 0
    param.test_interval = 0
    del param.test_iter[:]
    param.snapshot_prefix = str(tmp / "snap")
    path = tmp / "solver.prototxt"
    path.write_text(text_format.MessageToString(param))
    return path


class _Run:
    """A training command started in the background; its stderr read line by line."""

    def __init__(self, command: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if m := re.search(pattern, line):
                return m
            assert time.monotonic() < deadline, f"no {pattern!r} in time:\n{''.join(self.lines[-30:])}"
        raise AssertionError(f"ended before {pattern!r}:\n{''.join(self.lines[-30:])}")

    def pid(self, rank: int) -> int:
        return int(re.search(rf"group\.py:1\] rank {rank}: pid (\d+)", "".join(self.lines))[1])

    def finish(self, timeout: float) -> tuple[int, str, float]:
        start = time.monotonic()
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"still running {timeout} s later:\n{''.join(self.lines[-30:])}") from None
        self.lines.append(err)
        return self.proc.returncode, out + "".join(self.lines), time.monotonic() - start


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if "error" in line.lower()]


def test_kill_9_of_a_rank_stops_the_job_with_one_line_naming_it(golden, tmp_path):
    _mpiexec()
    run = _Run([sys.executable, "-m", "caffecompat.cli", "train", "-processes", "2", "-solver",
                str(_long_solver(golden, tmp_path)), "-weights", "train/init.caffemodel"], golden)
    run.wait_for(r"\] Iteration 3 \(")
    victim = run.pid(1)
    os.kill(victim, signal.SIGKILL)
    status, text, took = run.finish(30)
    assert status == 1 and took < 30
    assert _errors(text) == [f"caffecompat train: error: rank 1 of 2 (pid {victim} on {os.uname().nodename}) was "
                             "killed by signal 9 (SIGKILL: by hand, or by the kernel's out-of-memory killer, see "
                             "dmesg); the launcher stopped the other ranks (resume from the last snapshot with "
                             "-snapshot)"], text[-3000:]


def test_kill_9_under_mpiexec_ends_the_job_within_seconds(golden, tmp_path):
    run = _Run([_mpiexec(), "-n", "2", sys.executable, "-m", "caffecompat.cli", "train", "-solver",
                str(_long_solver(golden, tmp_path)), "-weights", "train/init.caffemodel"], golden)
    run.wait_for(r"\] Iteration 3 \(")
    os.kill(run.pid(1), signal.SIGKILL)
    status, text, took = run.finish(30)
    assert status != 0 and took < 30
    assert f"PID {run.pid(1)}" in text  # mpiexec's own notice names the process; rank 0 listed its pid


def test_a_hung_rank_is_named_and_the_job_stops_after_the_timeout(golden, tmp_path):
    run = _Run([_mpiexec(), "-n", "2", sys.executable, "-m", "caffecompat.cli", "train", "-solver",
                str(_long_solver(golden, tmp_path)), "-weights", "train/init.caffemodel", "-mpi_timeout", "2"], golden)
    run.wait_for(r"\] Iteration 3 \(")
    os.kill(run.pid(1), signal.SIGSTOP)  # alive but silent: no launcher notices
    status, text, took = run.finish(30)
    assert status == 1 and took < 15
    errors = _errors(text)
    assert len(errors) == 1 and re.match(
        r"caffecompat train: error: rank 0 of 2 \(pid \d+ on .*\): waited 2 s during the (gradient reduction|signal "
        r"agreement) at iteration \d+ for rank 1 last seen \d+ s ago at iteration \d+: it died or hangs", errors[0]), \
        errors
    # Rank 1 was stopped once rank 0 displayed iteration 3: both had finished iteration 2 together, so it
    # was last seen there or later, not at 0 (where its rate-limited heartbeat may have been).
    assert int(re.search(r"last seen \d+ s ago at iteration (\d+)", errors[0]).group(1)) >= 2, errors


@pytest.mark.parametrize("launcher", ["mpiexec", "-processes"])
def test_bad_data_in_one_ranks_share_stops_every_rank_with_one_line(golden, tmp_path, launcher):
    records = _records(golden / "lmdb" / "train_32")[:40]
    env = lmdb.open(str(tmp_path / "bad_db"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, (key, value) in enumerate(records):
            txn.put(key, b"\xff\xff not a Datum" if i == 3 else value)  # offset 3: rank 1's second record
    env.close()
    mpiexec = _mpiexec()
    start = [mpiexec, "-n", "2", sys.executable, "-m", "caffecompat.cli", "train"] if launcher == "mpiexec" \
        else [sys.executable, "-m", "caffecompat.cli", "train", "-processes", "2"]
    run = _Run([*start, "-solver", str(_long_solver(golden, tmp_path, str(tmp_path / "bad_db"))),
                "-weights", "train/init.caffemodel"], golden)
    status, text, took = run.finish(60)
    assert status == 1
    errors = _errors(text)
    assert len(errors) == 1, text[-3000:]
    assert errors[0].startswith("caffecompat train: error: rank 1 of 2 (pid ")
    assert records[3][0].decode() in errors[0] and "layer 'data' (Data)" in errors[0]


def test_signals_to_any_rank_act_on_all_after_the_iteration(golden, tmp_path):
    run = _Run([_mpiexec(), "-n", "2", sys.executable, "-m", "caffecompat.cli", "train", "-solver",
                str(_long_solver(golden, tmp_path)), "-weights", "train/init.caffemodel",
                "-sigint_effect", "snapshot", "-sighup_effect", "stop"], golden)
    run.wait_for(r"\] Iteration 3 \(")
    os.kill(run.pid(0), signal.SIGINT)  # rank 0: one snapshot, training goes on
    first = int(run.wait_for(r"Snapshotting solver state to binary proto file .*_iter_(\d+)\.solverstate")[1])
    run.wait_for(rf"\] Iteration {first + 2} \(")
    os.kill(run.pid(1), signal.SIGHUP)  # rank 1: every rank stops after this iteration; rank 0 snapshots
    status, text, _ = run.finish(30)
    assert status == 0, text[-3000:]
    states = sorted(int(re.search(r"_iter_(\d+)", p.name)[1]) for p in tmp_path.glob("snap_iter_*.solverstate"))
    assert len(states) == 2 and states[0] == first and states[1] > first + 2, states
    assert sorted(p.name for p in tmp_path.glob("snap_iter_*")) == [
        f"snap_iter_{i}.{ext}" for i in states for ext in ("caffemodel", "solverstate")]
    assert "Optimization stopped early." in text and not _errors(text)
