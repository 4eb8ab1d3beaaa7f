"""`caffecompat test` reproduces `caffe test`'s log (../shared/caffe-golden/train/logs/test_sgd_step.log)."""

from __future__ import annotations

import io
import re

import pytest

from caffecompat import glog
from caffecompat.cli import main

_LINE = re.compile(r"caffe\.cpp:\d+\] (Batch \d+, \S+ = \S+|Loss: \S+|\S+ = \S+.*)$")


def _results(text: str) -> list[str]:
    return [m[1] for line in text.splitlines() if (m := _LINE.search(line))]


def _split(result: str) -> tuple[str, float]:
    key, _, value = result.rpartition(" ")
    if "(*" in result:
        key, _, rest = result.partition(" = ")
        return key, float(rest.split()[0])
    return key, float(value)


def test_test_command_matches_caffe_log(golden, monkeypatch):
    monkeypatch.chdir(golden)
    stream = io.StringIO()
    glog.set_stream(stream)
    try:
        status = main(["test", "-model", "train/net.prototxt", "-weights", "train/out/sgd_step_iter_24.caffemodel",
                       "-iterations", "2"])
    finally:
        glog.set_stream(None)
    assert status == 0
    ours = _results(stream.getvalue())
    theirs = _results((golden / "train" / "logs" / "test_sgd_step.log").read_text())
    assert len(ours) == len(theirs) == 10
    for a, b in zip(ours, theirs):
        ka, va = _split(a)
        kb, vb = _split(b)
        assert ka == kb
        assert va == pytest.approx(vb, rel=1e-3, abs=1e-3), (a, b)
    assert ours[-1].endswith(" loss)")
