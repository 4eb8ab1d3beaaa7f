"""debug_info: true logs Net::ForwardDebugInfo / BackwardDebugInfo lines with the right numbers.

References: the mean |x| of each blob as pycaffe computes it layer by layer
(forward(start=L, end=L), so in-place layers show the value their own Forward
wrote), and Caffe's own first TRAIN pass in ../shared/caffe-golden/train/grad
(blob diffs, parameter diffs and the initial weights).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from caffecompat.formats.blob import blob_to_array
from caffecompat.formats.caffemodel import read_caffemodel
from caffecompat.proto import caffe_pb2
from tests.cli_run import run_cli

_LINE = re.compile(r"\]     \[(Forward|Backward)\] Layer (\S+), (top blob|bottom blob|param blob) (\S+) "
                   r"(data|diff): (\S+)$")
_ALL = re.compile(r"^E.*\]     \[Backward\] All net params \(data, diff\): L1 norm = \((\S+), (\S+)\); "
                  r"L2 norm = \((\S+), (\S+)\)$")


def _mean_abs(x: np.ndarray) -> float:
    return float(np.abs(np.asarray(x, np.float64)).mean())


def _solver(golden: Path, tmp_path: Path, **fields) -> Path:
    solver = caffe_pb2.SolverParameter()
    text_format.Parse((golden / "train" / "solver_sgd_step.prototxt").read_text(), solver)
    solver.snapshot_prefix = str(tmp_path / "snap")
    solver.snapshot = 0
    solver.snapshot_after_train = False
    solver.debug_info = True
    for key, value in fields.items():
        if isinstance(value, list):
            getattr(solver, key)[:] = value
        else:
            setattr(solver, key, value)
    path = tmp_path / "solver.prototxt"
    path.write_text(text_format.MessageToString(solver))
    return path


def _first_pass(log: str) -> tuple[list[tuple], tuple[float, ...]]:
    """The debug lines of iteration 0 (before its display line) and its all-params summary."""
    head = log.split("] Iteration 0 (", 1)[0]
    lines = [m.groups() for m in map(_LINE.search, head.splitlines()) if m]
    summary = [tuple(map(float, m.groups())) for m in map(_ALL.search, head.splitlines()) if m]
    assert len(summary) == 1
    return lines, summary[0]


def test_train_debug_info_matches_pycaffe_and_caffe(golden, tmp_path, monkeypatch):
    import caffecompat as caffe

    monkeypatch.chdir(golden)
    solver = _solver(golden, tmp_path, max_iter=1, test_interval=0, test_iter=[])
    status, log = run_cli(["train", "-solver", str(solver), "-weights", "train/init.caffemodel"])
    assert status == 0, log[-2000:]
    lines, (l1_data, l1_diff, l2_data, l2_diff) = _first_pass(log)

    # Forward: each layer's tops right after its own Forward, then its parameter blobs.
    net = caffe.Net("train/net.prototxt", "train/init.caffemodel", caffe.TRAIN)
    net.forward(end="data")
    expected = []
    for name, layer in zip(net._layer_names, net.layers):
        if name != "data":
            net.forward(start=name, end=name)
        expected += [("top blob", top, _mean_abs(net.blobs[top].data)) for top in net.top_names[name]]
        expected += [("param blob", str(k), _mean_abs(b.data)) for k, b in enumerate(layer.blobs)]
    forward = [(kind, blob, float(v)) for way, _, kind, blob, _, v in lines if way == "Forward"]
    assert [f[:2] for f in forward] == [e[:2] for e in expected]
    for (kind, blob, ours), (_, _, theirs) in zip(forward, expected):
        assert ours == pytest.approx(theirs, rel=2e-5, abs=1e-9), (kind, blob)
    assert "[Forward] Layer relu1, top blob conv1 data: " in log  # in place: its own line after conv1's

    # Backward, last layer first: bottom diffs (Caffe's blob diffs after Backward hold the diff the
    # earliest consumer wrote) and each layer's parameter diffs, against Caffe's own pass.
    names = (golden / "train/grad/blob_names.txt").read_text().split()
    caffe_diffs = dict(zip(names, read_blob_vector_diffs(golden / "train/grad/blob_diffs.binaryproto")))
    model = read_caffemodel(golden / "train/grad/params_with_diff.caffemodel")
    caffe_params = {lp.name: lp.blobs for lp in model.layer if lp.blobs}
    backward = [(layer, kind, blob, float(v)) for way, layer, kind, blob, _, v in lines if way == "Backward"]
    assert [b[0] for b in backward if b[1] == "bottom blob"] == [
        "loss", "ip2", "relu3", "ip1", "pool2", "relu2", "conv2", "norm1", "pool1", "relu1"]
    first_consumer = {}
    for name, bottoms in reversed(list(net.bottom_names.items())):
        for b in bottoms:
            first_consumer[b] = name
    checked = 0
    for layer, kind, blob, ours in backward:
        if kind == "bottom blob" and first_consumer[blob] == layer:
            theirs = _mean_abs(caffe_diffs[blob])
        elif kind == "param blob":
            theirs = _mean_abs(blob_to_array(caffe_params[layer][int(blob)], diff=True))
        else:
            continue
        assert ours == pytest.approx(theirs, rel=1e-4), (layer, kind, blob)
        checked += 1
    assert checked == 7 + 8  # every bottom with a diff (ip2 ... conv1; not data, label) and every learnable blob

    # Net::Backward's summary: L1 / L2 norms of every parameter's data and diff.
    data = [blob_to_array(b) for blobs in caffe_params.values() for b in blobs]
    diff = [blob_to_array(b, diff=True) for blobs in caffe_params.values() for b in blobs]
    assert l1_data == pytest.approx(sum(np.abs(d).sum(dtype=np.float64) for d in data), rel=1e-5)
    assert l1_diff == pytest.approx(sum(np.abs(d).sum(dtype=np.float64) for d in diff), rel=1e-4)
    assert l2_data == pytest.approx(np.sqrt(sum(np.square(d, dtype=np.float64).sum() for d in data)), rel=1e-5)
    assert l2_diff == pytest.approx(np.sqrt(sum(np.square(d, dtype=np.float64).sum() for d in diff)), rel=1e-4)


def read_blob_vector_diffs(path: Path) -> list[np.ndarray]:
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(path.read_bytes())
    return [blob_to_array(b, diff=True) for b in vec.blobs]


def test_debug_info_only_on_displayed_iterations_and_every_test_pass(golden, tmp_path, monkeypatch):
    monkeypatch.chdir(golden)
    # iter_size 2: both passes of a displayed iteration log; display 2: iteration 1 logs nothing.
    solver = _solver(golden, tmp_path, max_iter=2, display=2, iter_size=2, test_interval=2, test_iter=[2])
    status, log = run_cli(["train", "-solver", str(solver), "-weights", "train/init.caffemodel"])
    assert status == 0, log[-2000:]
    blocks = log.split("] Iteration ")
    train_loss_lines = [ln for ln in log.splitlines() if "[Forward] Layer loss, top blob loss data" in ln]
    summaries = [ln for ln in log.splitlines() if "All net params" in ln]
    # Test at 0 (2 passes) and at 2 (2 passes), and iteration 0's two passes; Solve's final display
    # forward keeps the debug_info of the last iteration (1, not displayed): no lines.
    assert len(summaries) == 2, summaries
    assert len(train_loss_lines) == 2 + 2 + 2
    assert all("[Backward]" not in b for b in blocks if b.startswith("1,"))
    # The second pass's parameter diff line shows the diff of both passes together (iter_size adds them).
    conv1_bias = [float(ln.rsplit(" ", 1)[1]) for ln in log.splitlines()
                  if "[Backward] Layer conv1, param blob 1 diff" in ln]
    assert len(conv1_bias) == 2 and conv1_bias[1] != conv1_bias[0]


def test_without_debug_info_nothing_is_logged(golden, tmp_path, monkeypatch):
    monkeypatch.chdir(golden)
    solver = _solver(golden, tmp_path, max_iter=1, test_interval=0, test_iter=[], debug_info=False)
    status, log = run_cli(["train", "-solver", str(solver), "-weights", "train/init.caffemodel"])
    assert status == 0 and "[Forward]" not in log and "All net params" not in log



def test_net_debug_info_in_caffe_test_matches_pycaffe(golden, tmp_path, monkeypatch):
    # caffe test: Net::Init takes debug_info from the net prototxt, and every Forward logs its layers.
    import caffecompat as caffe

    monkeypatch.chdir(golden)
    model = tmp_path / "net.prototxt"
    model.write_text("debug_info: true\n" + (golden / "train/net.prototxt").read_text())
    status, log = run_cli(["test", "-model", str(model), "-weights", "train/init.caffemodel", "-iterations", "1"])
    assert status == 0, log[-2000:]
    lines = [m.groups() for m in map(_LINE.search, log.splitlines()) if m]
    net = caffe.Net(str(model), "train/init.caffemodel", caffe.TEST)
    net.forward(end="data")
    expected = []
    for name, layer in zip(net._layer_names, net.layers):
        if name != "data":
            net.forward(start=name, end=name)
        expected += [(name, top, _mean_abs(net.blobs[top].data)) for top in net.top_names[name]]
        expected += [(name, str(k), _mean_abs(b.data)) for k, b in enumerate(layer.blobs)]
    assert [(layer, blob) for _, layer, _, blob, _, _ in lines] == [e[:2] for e in expected]
    assert any(layer.endswith("_split") for layer, _, _ in expected)  # Caffe's split layers log too
    for (_, layer, _, blob, _, ours), (_, _, theirs) in zip(lines, expected):
        assert float(ours) == pytest.approx(theirs, rel=2e-5, abs=1e-9), (layer, blob)
    assert "[Backward]" not in log


def test_batchnorm_statistics_show_after_their_forward(golden, tmp_path, monkeypatch):
    # BatchNormLayer::Forward_cpu (training) updates its blobs before ForwardDebugInfo reads them:
    # the scale factor blob becomes moving_average_fraction * s + 1, the mean maf * m + batch mean.
    monkeypatch.chdir(golden)
    solver = _solver(golden, tmp_path, net="train/net_bn.prototxt", max_iter=1, test_interval=0, test_iter=[])
    status, log = run_cli(["train", "-solver", str(solver), "-weights", "train/init_bn.caffemodel"])
    assert status == 0, log[-2000:]
    lines, _ = _first_pass(log)
    logged = {(layer, blob): float(v) for way, layer, kind, blob, _, v in lines
              if way == "Forward" and kind == "param blob"}
    init = {lp.name: lp.blobs for lp in read_caffemodel(golden / "train/init_bn.caffemodel").layer}
    for bn in ("bn1", "bn2"):
        factor = float(blob_to_array(init[bn][2]).reshape(-1)[0])
        assert logged[(bn, "2")] == pytest.approx(abs(np.float32(0.999) * np.float32(factor) + 1), rel=1e-6)
