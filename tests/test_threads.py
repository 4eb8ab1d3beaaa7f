"""-threads and the default thread count: what reaches ONNX Runtime's SessionOptions and the solver's update pool.

References: the rule itself, computed by hand for each case (OMP_NUM_THREADS,
the CPU affinity, the ranks on one host), and ONNX Runtime's own
SessionOptions.intra_op_num_threads read back from the sessions made.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import onnxruntime as ort
import pytest

from caffecompat.cli import build_parser
from caffecompat.commands.common import command_line
from caffecompat.errors import CaffeCompatError
from caffecompat.runtime import providers
from caffecompat.solver import updates
from tests.cli_run import run_cli


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(providers, "INTRA_OP_THREADS", 0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_omp_num_threads_wins_over_the_cores(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert providers.default_threads() == (3, "OMP_NUM_THREADS")
    assert providers.default_threads(4) == (3, "OMP_NUM_THREADS")  # OpenMP's count is per process
    monkeypatch.setenv("OMP_NUM_THREADS", "5,2")  # nested levels: the outer one
    assert providers.default_threads()[0] == 5
    assert providers.session_options().intra_op_num_threads == 5
    for bad in ("0", "", "many", "-1"):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        assert providers.default_threads()[1] != "OMP_NUM_THREADS"


def test_the_cores_are_the_affinity_divided_between_the_ranks_here(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert providers.default_threads()[0] == 8
    assert providers.default_threads(3)[0] == 2  # 8 // 3
    assert providers.default_threads(16)[0] == 1  # at least one each
    # A launcher that bound this rank to 2 of the 8 cores has split them already.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5}, raising=False)
    assert providers.default_threads(4)[0] == 2
    assert providers.session_options().intra_op_num_threads == 2


def test_set_threads_reaches_every_new_session_and_the_update_pool():
    providers.set_threads(1)
    assert providers.session_options().intra_op_num_threads == 1
    assert updates.update_threads() == 1
    providers.set_threads(3)
    assert updates.update_threads() == 3
    with pytest.raises(CaffeCompatError, match="-threads 0: must be at least 1"):
        providers.set_threads(0)


def test_pycaffe_sessions_respect_omp_num_threads(monkeypatch, tmp_path):
    import caffecompat as caffe

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    made = []
    real = ort.InferenceSession

    def spy(*args, **kwargs):
        session = real(*args, **kwargs)
        made.append(session.get_session_options().intra_op_num_threads)
        return session

    monkeypatch.setattr(ort, "InferenceSession", spy)
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
        'inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }\n')
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)
    net.blobs["data"].data[...] = np.ones((2, 3), np.float32)
    net.forward()
    assert made and set(made) == {1}


def test_threads_flag_on_every_command_that_runs_a_net_and_in_the_log(tmp_path):
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    with_flag = {name for name, p in sub.choices.items() if any(a.dest == "threads" for a in p._actions)}
    assert {"train", "test", "time", "classify", "extract-features"} <= with_flag
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 4 } }\n')
    rc, log = run_cli(["time", "-model", str(tmp_path / "net.prototxt"), "-iterations", "1", "-threads", "2"])
    assert rc == 0
    assert "Using 2 threads per process (from -threads) for ONNX Runtime and the solver's update" in log


def test_the_ranks_command_line_repeats_the_arguments_given():
    parser = build_parser()
    args = parser.parse_args(["extract-features", "w.caffemodel", "m.prototxt", "fc7", "out", "3", "hdf5",
                              "-threads", "1", "-overwrite", "-processes", "2"])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["extract-features"]
    line = command_line(sub, args, "extract-features")
    assert line[0] == "extract-features" and line[-8:] == ["w.caffemodel", "m.prototxt", "fc7", "out", "3", "hdf5",
                                                           "CPU", "0"]
    assert {"-threads=1", "-overwrite", "-processes=2"} <= set(line)
    assert parser.parse_args(line).threads == 1  # and it parses back
