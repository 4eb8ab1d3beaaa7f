"""The net set-up log (Net::Init's lines) equals the original Caffe's, line for line.

References: ../shared/caffe-golden/train/grad_zoo/<net>/caffe.log (the dump program's
Net(NET, TRAIN)), train/logs/test_sgd_step.log (`caffe test`) and train/logs/<recipe>.log
(`caffe train`: the train net, then the test net). Compared: every net.cpp and
layer_factory.hpp line (the net's text dump with its continuation lines), modulo time
stamps and thread ids.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from caffecompat import glog
from caffecompat.cli import main
from caffecompat.formats.net import read_net_prototxt
from caffecompat.net.setup_log import debug_string
from caffecompat.proto import caffe_pb2
from caffecompat.runtime.feeder import build_with_data

_LINE = re.compile(r"^[IWEF]\d{4}(?:\d{4})? \d\d:\d\d:\d\d\.\d{6} +\d+ (.*)$")
_SETUP_FILES = ("net.cpp:", "layer_factory.hpp:")


def setup_lines(text: str) -> list[str]:
    """The Net::Init lines of a glog log without stamps; a multi-line message keeps its continuation lines."""
    out: list[str] = []
    keep = False
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            keep = m[1].startswith(_SETUP_FILES)
            if keep:
                out.append(m[1])
        elif keep:
            out.append(line)
    return out


def _captured(fn) -> str:
    stream = io.StringIO()
    glog.set_stream(stream)
    try:
        fn()
    finally:
        glog.set_stream(None)
    return stream.getvalue()


@pytest.mark.parametrize("net", ["activations", "conv_pool", "embed", "losses", "shape_norm"])
def test_grad_zoo_setup_log_equals_caffe(golden, monkeypatch, net):
    monkeypatch.chdir(golden)
    folder = Path("train/grad_zoo") / net
    param = read_net_prototxt(str(folder / "net.prototxt"))

    def build() -> None:
        build_with_data(param, caffe_pb2.NetState(phase=caffe_pb2.TRAIN), np.random.default_rng(0),
                        str(folder / "net.prototxt")).close()

    ours = setup_lines(_captured(build))
    theirs = setup_lines((folder / "caffe.log").read_text())
    assert len(theirs) > 100
    assert ours == theirs


def test_test_command_setup_log_equals_caffe(golden, monkeypatch):
    monkeypatch.chdir(golden)
    text = _captured(lambda: main(["test", "-model", "train/net.prototxt", "-weights",
                                   "train/out/sgd_step_iter_24.caffemodel", "-iterations", "1"]))
    theirs = setup_lines((golden / "train" / "logs" / "test_sgd_step.log").read_text())
    assert "net.cpp:139] Memory required for data: 3612492" in theirs
    assert setup_lines(text) == theirs


# The golden runs' flags (as in tests/golden_train.py); -iterations 0 stops after the nets are built.
_RECIPES = {
    "sgd_step": ["-weights", "train/init.caffemodel"],
    "bn_sgd_fixed": ["-weights", "train/init_bn.caffemodel"],
    "finetune_step": ["-weights", "train/out/sgd_step_iter_24.caffemodel"],
    "deconv_sgd": ["-weights", "train/init_deconv.caffemodel"],
}


@pytest.mark.parametrize("recipe", sorted(_RECIPES))
def test_train_setup_log_equals_caffe(golden, monkeypatch, tmp_path, recipe):
    solver = caffe_pb2.SolverParameter()
    text_format.Parse((golden / "train" / f"solver_{recipe}.prototxt").read_text(), solver)
    solver.snapshot_prefix = str(tmp_path / recipe)
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(text_format.MessageToString(solver))
    monkeypatch.chdir(golden)
    text = _captured(lambda: main(["train", "-solver", str(solver_file), *_RECIPES[recipe], "-iterations", "0"]))
    ours = setup_lines(text)
    theirs = setup_lines((golden / "train" / "logs" / f"{recipe}.log").read_text())
    # Two nets (TRAIN, then TEST), each ending with Caffe's last Net::Init line.
    assert theirs.count("net.cpp:257] Network initialization done.") == 2
    assert ours == theirs


def test_debug_string_prints_numbers_as_cpp_protobuf():
    # C++ DebugString: floats as SimpleFtoa (%.6g, or %.9g when that does not read back), enums by name.
    filler = caffe_pb2.FillerParameter(type='a"b', value=1.0, min=1e-5, max=1e6, mean=0.1, std=0.123456789)
    assert debug_string(filler) == ('type: "a\\"b"\nvalue: 1\nmin: 1e-05\nmax: 1e+06\nmean: 0.1\n'
                                    "std: 0.123456791\n")
    layer = caffe_pb2.LayerParameter(name="p")
    layer.pooling_param.pool = caffe_pb2.PoolingParameter.AVE
    assert debug_string(layer) == 'name: "p"\npooling_param {\n  pool: AVE\n}\n'


def test_shared_parameters_are_logged_as_caffe_does(monkeypatch):
    # net.cpp AppendParam: a named ParamSpec seen before logs which layer owns the blob.
    net = text_format.Parse("""
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "a" type: "InnerProduct" bottom: "x" top: "a"
                param { name: "w" } inner_product_param { num_output: 4 bias_term: false } }
        layer { name: "b" type: "InnerProduct" bottom: "a" top: "b"
                param { name: "w2" } inner_product_param { num_output: 4 bias_term: false } }
        layer { name: "c" type: "InnerProduct" bottom: "b" top: "c"
                param { name: "w2" } inner_product_param { num_output: 4 bias_term: false } }
    """, caffe_pb2.NetParameter())
    text = _captured(lambda: build_with_data(net, caffe_pb2.NetState(phase=caffe_pb2.TEST),
                                             np.random.default_rng(0), "net").close())
    lines = setup_lines(text)
    assert "net.cpp:467] Sharing parameters 'w2' owned by layer 'b', param index 0" in lines
    assert lines[lines.index("net.cpp:86] Creating Layer c") + 5] == "net.cpp:139] Memory required for data: 120"
    assert lines[-3:] == ["net.cpp:202] in does not need backward computation.",
                          "net.cpp:244] This network produces output c", "net.cpp:257] Network initialization done."]


def test_rule_lines_as_filter_net_logs_them():
    # Net::FilterNet tries include rules until one is met and exclude rules until one is met; each rule
    # it tries that is not met logs why (net.cpp StateMeetsRule). Expected lines written from net.cpp.
    net = text_format.Parse("""
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 } } }
        layer { name: "a" type: "ReLU" bottom: "x" top: "a" include { phase: TRAIN } }
        layer { name: "b" type: "ReLU" bottom: "x" top: "b" include { min_level: 2 } include { stage: "s" } }
        layer { name: "c" type: "ReLU" bottom: "x" top: "c" exclude { max_level: 0 } exclude { stage: "y" } }
        layer { name: "d" type: "ReLU" bottom: "x" top: "d" exclude { not_stage: "y" } }
    """, caffe_pb2.NetParameter())
    state = caffe_pb2.NetState(phase=caffe_pb2.TEST, level=1, stage=["y"])
    lines = setup_lines(_captured(lambda: build_with_data(net, state, np.random.default_rng(0), "net").close()))
    assert lines[:6] == [
        "net.cpp:296] The NetState phase (1) differed from the phase (0) specified by a rule in layer a",
        "net.cpp:306] The NetState level (1) is above the min_level (2) specified by a rule in layer b",
        "net.cpp:332] The NetState did not contain stage 's' specified by a rule in layer b",
        "net.cpp:316] The NetState level (1) is above the max_level (0) specified by a rule in layer c",
        "net.cpp:347] The NetState contained a not_stage 'y' specified by a rule in layer d",
        "net.cpp:53] Initializing net from parameters: ",
    ]
    assert "net.cpp:86] Creating Layer d" in lines and "net.cpp:86] Creating Layer c" not in lines
