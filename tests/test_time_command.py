"""`caffecompat time` prints Caffe's benchmark lines for the forward, backward and per-layer times."""

from __future__ import annotations

import io

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
