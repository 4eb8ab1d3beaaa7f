"""`caffecompat parse-log` (Caffe's parse_log.py), `caffecompat plot` and `train -plot`.

parse-log is checked against columns computed here from the golden logs' parsed
form (train/logs/<run>.json) with parse_log.py's documented row rules, and against a
few values read off the logs' time stamps by hand.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import struct
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format

from caffecompat import glog
from caffecompat.cli import main
from caffecompat.proto import caffe_pb2
from caffecompat.traininglog import parse_log, read_log

RUNS = ["adadelta_exp", "adagrad_inv", "adam_fixed", "bn_sgd_fixed", "deconv_sgd", "finetune_step",
        "nesterov_multistep", "rmsprop_poly", "sgd_itersize_clip_l1_sigmoid", "sgd_step", "sgd_step_resume"]


def _expected(golden_json: dict) -> tuple[list[dict], list[dict]]:
    """parse_log.py's rows from the golden parsed log, by its rules (not its code):

    - a train row per displayed iteration with Train net outputs; a test row per test;
    - LearningRate is the last `lr =` line before the row: Caffe prints iteration k's rate after
      iteration k's outputs, so a train row has the previous iteration's rate and a test at
      iteration k (run before iteration k's step) too; the first row takes the second's;
    - a table's first row is written only once a second row starts (a lone row is lost).
    """
    lr = {e["iter"]: e["lr"] for e in golden_json["train"] if "lr" in e}

    def rows(entries: list[dict]) -> list[dict]:
        out = [{"NumIters": float(e["iter"]), "LearningRate": lr.get(e["iter"] - 1, math.nan), **e["outputs"]}
               for e in entries if e.get("outputs")]
        if len(out) > 1:
            out[0]["LearningRate"] = out[1]["LearningRate"]
        return out if len(out) > 1 else []

    return rows(golden_json["train"]), rows(golden_json["test"])


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _same(ours: list[dict], expected: list[dict]) -> None:
    assert len(ours) == len(expected)
    for o, e in zip(ours, expected):
        assert list(o) == ["NumIters", "Seconds", "LearningRate", *list(e)[2:]]
        for key, value in e.items():
            assert o[key] == pytest.approx(value, rel=1e-6, nan_ok=True), key


@pytest.mark.parametrize("run", RUNS)
def test_parse_log_matches_parse_log_py_rules(golden, tmp_path, run):
    log = golden / "train" / "logs" / f"{run}.log"
    assert main(["parse-log", str(log), str(tmp_path)]) == 0
    train, test = _expected(json.loads(log.with_suffix(".json").read_text()))
    _same(_read_csv(tmp_path / f"{run}.log.train"), train)
    if test:
        _same(_read_csv(tmp_path / f"{run}.log.test"), test)
    else:
        # sgd_step_resume tests once (iteration 20): parse_log.py never writes that lone row.
        assert not (tmp_path / f"{run}.log.test").exists()


def test_parse_log_csv_text_and_seconds(golden, tmp_path):
    log = golden / "train" / "logs" / "sgd_step.log"
    assert main(["parse-log", str(log), str(tmp_path)]) == 0
    train = (tmp_path / "sgd_step.log.train").read_bytes()
    test = (tmp_path / "sgd_step.log.test").read_bytes()
    # Excel dialect (CRLF), floats as Python prints them. Seconds from the log by hand: "Solving" at
    # 22:19:17.393155; iteration 0's train output at 17.422804; the tests' first outputs at 17.407027,
    # 17.645681 and 17.938993.
    assert train.startswith(b"NumIters,Seconds,LearningRate,loss\r\n0.0,0.029649,0.01,2.32056\r\n")
    assert test == (b"NumIters,Seconds,LearningRate,accuracy,accuracy_top3,loss\r\n"
                    b"0.0,0.013872,0.005,0.1,0.175,2.31344\r\n"
                    b"10.0,0.252526,0.005,0.225,0.525,2.25812\r\n"
                    b"20.0,0.545838,0.0025,0.275,0.6,2.19421\r\n")
    assert main(["parse-log", str(log), str(tmp_path / "missing")]) == 1


def test_parse_log_reads_both_date_forms(golden, tmp_path):
    # Older glog writes I1121 (month, day), newer I20261121: both give the same tables.
    log = golden / "train" / "logs" / "adam_fixed.log"
    old = tmp_path / "old" / "adam_fixed.log"
    old.parent.mkdir()
    old.write_text(re.sub(r"^([IWEF])2026(\d{4} )", r"\1\2", log.read_text(), flags=re.M))
    assert main(["parse-log", str(log), str(tmp_path), "-delimiter", ";"]) == 0
    assert main(["parse-log", str(old), str(old.parent), "--delimiter=;"]) == 0
    for suffix in ("train", "test"):
        new_text = (tmp_path / f"adam_fixed.log.{suffix}").read_text()
        assert new_text == (old.parent / f"adam_fixed.log.{suffix}").read_text()
        assert new_text.startswith("NumIters;Seconds;LearningRate;")


def test_parse_log_year_rollover_and_stray_lines(tmp_path):
    log = tmp_path / "caffe.INFO"
    log.write_text(
        "I1231 23:59:59.000000  1 solver.cpp:289] Solving Net\n"
        "I1231 23:59:59.500000  1 solver.cpp:239] Iteration 0 (0 iter/s, 0s/1 iters), loss = 1\n"
        "I1231 23:59:59.500000  1 solver.cpp:258]     Train net output #0: loss = 1 (* 1 = 1 loss)\n"
        "I1231 23:59:59.600000  1 sgd_solver.cpp:112] Iteration 0, lr = 0.1\n"
        "\n"
        "a continuation line\n"
        "I0101 00:00:01.000000  1 solver.cpp:239] Iteration 1 (1 iter/s, 1s/1 iters), loss = 0.5\n"
        "I0101 00:00:01.000000  1 solver.cpp:258]     Train net output #0: loss = 0.5 (* 1 = 0.5 loss)\n"
        "I0101 00:00:01.100000  1 sgd_solver.cpp:112] Iteration 1, lr = 0.05\n")
    train, test = parse_log(log)
    assert [(r["NumIters"], r["Seconds"], r["LearningRate"], r["loss"]) for r in train] == [
        (0.0, 0.5, 0.1, 1.0), (1.0, 2.0, 0.1, 0.5)]
    assert test == []


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_writes_png_svg_pdf_of_the_asked_size(golden, tmp_path):
    pytest.importorskip("matplotlib")
    logs = [str(golden / "train" / "logs" / f"{r}.log") for r in ("sgd_step", "adam_fixed")]
    png = tmp_path / "curves.png"
    assert main(["plot", *logs, "-o", str(png), "-width", "641", "-height=479", "-smooth", "3", "-lr"]) == 0
    assert _png_size(png) == (641, 479)
    assert main(["plot", logs[0], "-o", str(tmp_path / "c.svg"), "-x", "seconds"]) == 0
    assert (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml")
    assert main(["plot", logs[0], "-o", str(tmp_path / "c.pdf")]) == 0
    assert (tmp_path / "c.pdf").read_bytes()[:5] == b"%PDF-"
    assert main(["plot", logs[0], "-o", str(tmp_path / "c.jpeg")]) == 1
    assert main(["plot", str(golden / "train" / "logs" / "test_sgd_step.log"), "-o", str(png)]) == 1


def test_plot_series_hold_the_log_values(golden):
    pytest.importorskip("matplotlib")
    from caffecompat.commands.plot import Options, build_figure, trailing_mean

    expected = json.loads((golden / "train" / "logs" / "adam_fixed.json").read_text())
    log = read_log(golden / "train" / "logs" / "adam_fixed.log")
    fig = build_figure([("adam", log)], Options(smooth=4))
    loss_ax, acc_ax, top3_ax = fig.axes
    lines = {line.get_label(): line for ax in fig.axes for line in ax.lines}
    raw = lines["adam train (raw)"]
    # Every displayed loss, iterations 0..24 (the last from Solve's final display line).
    assert list(raw.get_xdata()) == [e["iter"] for e in expected["train"]]
    assert list(raw.get_ydata()) == [e["loss"] for e in expected["train"]]
    losses = [e["loss"] for e in expected["train"]]
    assert lines["adam train (mean of 4)"].get_ydata()[5] == pytest.approx(sum(losses[2:6]) / 4)
    assert trailing_mean([1.0, 2.0, 3.0, 6.0], 2) == [1.0, 1.5, 2.5, 4.5]
    for name, ax in (("loss", loss_ax), ("accuracy", acc_ax), ("accuracy_top3", top3_ax)):
        line = lines[f"adam test {name}"]
        assert line in ax.lines
        assert list(line.get_xdata()) == [t["iter"] for t in expected["test"]]
        assert list(line.get_ydata()) == [t["outputs"][name] for t in expected["test"]]
    seconds = build_figure([("adam", log)], Options(x_axis="seconds")).axes[0].lines[0].get_xdata()
    assert seconds[0] == pytest.approx(log.loss.seconds[0]) and list(seconds) == sorted(seconds)
    assert fig.axes[-1].get_xlabel() == "iterations"


def test_plot_without_matplotlib_says_how_to_install(golden, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    status = main(["plot", str(golden / "train" / "logs" / "sgd_step.log"), "-o", str(tmp_path / "c.png")])
    assert status == 1
    assert "pip install 'caffecompat[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


def test_train_plot_keeps_a_curve(golden, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    solver = caffe_pb2.SolverParameter()
    text_format.Parse((golden / "train" / "solver_sgd_step.prototxt").read_text(), solver)
    solver.snapshot_prefix = str(tmp_path / "sgd")
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(text_format.MessageToString(solver))
    monkeypatch.chdir(golden)
    png = tmp_path / "live.png"
    stream = io.StringIO()
    glog.set_stream(stream)
    try:
        status = main(["train", "-solver", str(solver_file), "-weights", "train/init.caffemodel", "-iterations",
                       "3", "-plot", str(png), "-plot_interval", "0"])
    finally:
        glog.set_stream(None)
    assert status == 0
    assert _png_size(png) == (1000, 900)  # three panels: loss, accuracy, accuracy_top3
    assert not glog._listeners
    # The curve drawn is the log written: read back, the same losses.
    log_file = tmp_path / "train.log"
    log_file.write_text(stream.getvalue())
    assert read_log(log_file).loss.iters == [0, 1, 2, 3]


def test_train_plot_failure_never_stops_training(golden, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from caffecompat.commands import plot
    from caffecompat.errors import CaffeCompatError

    def full_disk(fig, path):
        raise CaffeCompatError(f"{path}: cannot write the figure: no space left on device")

    monkeypatch.setattr(plot, "save_figure", full_disk)
    solver = caffe_pb2.SolverParameter()
    text_format.Parse((golden / "train" / "solver_sgd_step.prototxt").read_text(), solver)
    solver.snapshot_prefix = str(tmp_path / "sgd")
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(text_format.MessageToString(solver))
    monkeypatch.chdir(golden)
    stream = io.StringIO()
    glog.set_stream(stream)
    try:
        status = main(["train", "-solver", str(solver_file), "-weights", "train/init.caffemodel", "-iterations",
                       "2", "-plot", str(tmp_path / "live.png"), "-plot_interval", "0"])
    finally:
        glog.set_stream(None)
    assert status == 0
    warnings = [line for line in stream.getvalue().splitlines() if line.startswith("W") and "-plot" in line]
    assert len(warnings) == 1 and "no space left on device" in warnings[0]
    assert "training goes on without them" in warnings[0]
    assert (tmp_path / "sgd_iter_2.caffemodel").exists()
