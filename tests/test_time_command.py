"""`caffecompat time` prints Caffe's benchmark lines for the forward, backward and per-layer times."""

from __future__ import annotations

import io
import re

import pytest

from caffecompat import glog
from caffecompat.cli import main


def test_time_command_reports_passes_and_layers(golden, monkeypatch):
    monkeypatch.chdir(golden)
    stream = io.StringIO()
    glog.set_stream(stream)
    try:
        assert main(["time", "-model", "train/net.prototxt", "-iterations", "2"]) == 0
    finally:
        glog.set_stream(None)
    log = stream.getvalue()
    for text in ("Initial loss: ", "Iteration: 2 forward-backward time: ", "Average Forward pass: ",
                 "Average Backward pass: ", "Average Forward-Backward: ", "*** Benchmark ends ***"):
        assert text in log
    assert "conv1\tforward: " in log and "ip2\tforward: " in log


def _ms(log: str, label: str) -> list[float]:
    return [float(m) for m in re.findall(rf"{re.escape(label)}(\S+) ms\.", log)]


def test_time_figures_add_up_as_caffes(golden, monkeypatch):
    # tools/caffe.cpp time(): forward_timer and backward_timer split each iteration, iter_timer spans
    # both, and total_timer spans all iterations: Forward-Backward = Total / iterations ~ Forward + Backward.
    monkeypatch.chdir(golden)
    stream = io.StringIO()
    glog.set_stream(stream)
    try:
        assert main(["time", "-model", "train/net.prototxt", "-iterations", "6"]) == 0
    finally:
        glog.set_stream(None)
    log = stream.getvalue()
    (forward,) = _ms(log, "Average Forward pass: ")
    (backward,) = _ms(log, "Average Backward pass: ")
    (both,) = _ms(log, "Average Forward-Backward: ")
    (total,) = _ms(log, "Total Time: ")
    iterations = _ms(log, "forward-backward time: ")
    assert len(iterations) == 6 and forward > 0 and backward > 0
    assert abs(both - (forward + backward)) <= 0.15 * both + 2.0, (forward, backward, both)
    assert total == pytest.approx(6 * both, rel=1e-3)
    # The total is the iterations' own time (plus logging), not the iterations and an extra forward each.
    assert abs(total - sum(iterations)) <= 0.15 * total + 2.0, (total, iterations)
