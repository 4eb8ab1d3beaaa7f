"""`caffecompat train` / `test` as a user meets them: bad input is one clear line, interrupts snapshot."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.protobuf import text_format

from caffecompat.cli import main
from caffecompat.proto import caffe_pb2


def _solver(golden: Path, tmp_path: Path, **fields) -> Path:
    solver = caffe_pb2.SolverParameter()
    text_format.Parse((golden / "train" / "solver_sgd_step.prototxt").read_text(), solver)
    solver.snapshot_prefix = str(tmp_path / "snap")
    for key, value in fields.items():
        if value is None:
            solver.ClearField(key)
        else:
            setattr(solver, key, value)
    path = tmp_path / "solver.prototxt"
    path.write_text(text_format.MessageToString(solver))
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err[-2000:]
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(("fields", "expected"), [
    ({"net": None}, "names no net"),
    ({"type": "Momentum"}, "unknown solver type"),
    ({"lr_policy": "cosine"}, "lr_policy"),
    ({"type": "RMSProp"}, "momentum"),
    ({"lr_policy": "sigmoid", "gamma": -0.1, "stepsize": 5}, "gamma"),
])
def test_bad_solver_is_one_line(golden, tmp_path, monkeypatch, capsys, fields, expected):
    solver = _solver(golden, tmp_path, **fields)
    monkeypatch.chdir(golden)
    assert main(["train", "-solver", str(solver)]) == 1
    assert expected in _one_error_line(capsys)


def test_weights_with_another_shape_name_the_layer(golden, tmp_path, monkeypatch, capsys):
    net = caffe_pb2.NetParameter()
    text_format.Parse((golden / "train" / "net.prototxt").read_text(), net)
    next(lp for lp in net.layer if lp.name == "ip1").inner_product_param.num_output = 32
    (tmp_path / "net.prototxt").write_text(text_format.MessageToString(net))
    solver = _solver(golden, tmp_path, net=str(tmp_path / "net.prototxt"))
    monkeypatch.chdir(golden)
    assert main(["train", "-solver", str(solver), "-weights", "train/init.caffemodel"]) == 1
    line = _one_error_line(capsys)
    assert "'ip1'" in line and "[48, 1176]" in line and "[32, 1176]" in line and "rename the layer" in line


def test_snapshot_of_another_net_is_refused(golden, tmp_path, monkeypatch, capsys):
    solver = _solver(golden, tmp_path, net="train/net_bn.prototxt")
    monkeypatch.chdir(golden)
    status = main(["train", "-solver", str(solver), "-snapshot", "train/out/sgd_step_iter_12.solverstate"])
    assert status == 1
    line = _one_error_line(capsys)
    assert "sgd_step_iter_12" in line


def test_snapshot_and_weights_together_are_refused(golden, tmp_path, monkeypatch, capsys):
    solver = _solver(golden, tmp_path)
    monkeypatch.chdir(golden)
    assert main(["train", "-solver", str(solver), "-weights", "train/init.caffemodel",
                 "-snapshot", "train/out/sgd_step_iter_12.solverstate"]) == 1
    assert "not both" in _one_error_line(capsys)


def test_missing_solver_file(tmp_path, capsys):
    assert main(["train", "-solver", str(tmp_path / "nope.prototxt")]) == 1
    assert "nope.prototxt" in _one_error_line(capsys)


def test_gpu_without_cuda_stops_unless_fallback_allowed(golden, tmp_path, monkeypatch, capsys):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    solver = _solver(golden, tmp_path, max_iter=1, test_interval=0, snapshot=0, snapshot_after_train=False)
    solver_text = solver.read_text().replace("test_iter: 2\n", "")
    solver.write_text(solver_text)
    monkeypatch.chdir(golden)
    assert main(["train", "-solver", str(solver), "-gpu", "0"]) == 1
    assert "CUDA" in _one_error_line(capsys)
    assert main(["train", "-solver", str(solver), "-gpu", "0", "-allow_cpu_fallback"]) == 0


def test_gpu_list_without_cuda_stops_before_any_rank_starts(golden, tmp_path, monkeypatch, capsys):
    import onnxruntime

    from caffecompat.parallel import launch

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    solver = _solver(golden, tmp_path, max_iter=1)
    monkeypatch.chdir(golden)

    def no_ranks(*args, **kwargs):
        raise AssertionError("the ranks were started")

    monkeypatch.setattr(launch, "supervise", no_ranks)
    start = time.monotonic()
    assert main(["train", "-solver", str(solver), "-gpu", "0,1,2,3"]) == 1
    assert time.monotonic() - start < 5
    line = _one_error_line(capsys)
    assert "-gpu 0,1,2,3 asks for CUDA" in line and "-allow_cpu_fallback" in line


def test_gpu_list_naming_a_missing_device_stops_before_any_rank_starts(golden, tmp_path, monkeypatch, capsys):
    import onnxruntime

    from caffecompat.parallel import launch

    # A CUDA build on a machine with two devices (both stood in for: this test machine may have none).
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider",
                                                                         "CPUExecutionProvider"])
    monkeypatch.setattr(launch, "cuda_device_count", lambda: 2)
    monkeypatch.setattr(launch, "supervise", lambda *a, **k: pytest.fail("the ranks were started"))
    monkeypatch.chdir(golden)
    assert main(["train", "-solver", str(_solver(golden, tmp_path)), "-gpu", "0,1,2,3"]) == 1
    assert "-gpu 0,1,2,3: device 2 does not exist: this machine has 2 CUDA device(s) (0-1)" in _one_error_line(capsys)


def test_sigint_with_snapshot_effect_leaves_a_loadable_snapshot(golden, tmp_path):
    solver = _solver(golden, tmp_path, max_iter=100000, snapshot=0, test_interval=0)
    solver.write_text(solver.read_text().replace("test_iter: 2\n", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "caffecompat.cli", "train", "-solver", str(solver),
         "-weights", "train/init.caffemodel", "-sigint_effect", "snapshot"],
        cwd=golden, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        for line in proc.stderr:
            if "] Iteration 3 (" in line:
                break
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 60
        snapshots = []
        while time.monotonic() < deadline and not snapshots:
            snapshots = sorted(tmp_path.glob("snap_iter_*.solverstate"))
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert snapshots, "no snapshot after SIGINT"
    model = snapshots[0].with_suffix(".caffemodel")
    assert model.exists()
    status = subprocess.run([sys.executable, "-m", "caffecompat.cli", "test", "-model", "train/net.prototxt",
                             "-weights", str(model), "-iterations", "1"], cwd=golden, capture_output=True,
                            text=True)
    assert status.returncode == 0, status.stderr[-2000:]
    assert "accuracy = " in status.stderr
