"""Real train nets from ../shared/zoo train a few iterations on the CPU: FCN-8s and HED.

Both end in Deconvolution layers (which onnxruntime-training could not train on
the CPU) and Crop; HED also has five layers named `crop` and unnamed losses.
Their data layers (a Python layer, the HED fork's ImageLabelmapData) are
swapped for DummyData of the same tops at a small size.
"""

from __future__ import annotations

import io

import numpy as np

from caffecompat import glog
from caffecompat.formats.net import read_net_prototxt
from caffecompat.proto import caffe_pb2
from caffecompat.solver.loop import Solver


def _with_dummy_data(net: caffe_pb2.NetParameter, size: int, label_channels: int) -> caffe_pb2.NetParameter:
    """`net` with its data layers replaced by one DummyData of data (1x3xSxS) and label (1xLxSxS)."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    layers = [lp for lp in out.layer if not (lp.top and "data" in lp.top and lp.type not in ("DummyData",)
                                              and not lp.bottom)]
    dummy = caffe_pb2.LayerParameter(name="data", type="DummyData", top=["data", "label"])
    dummy.dummy_data_param.shape.add(dim=[1, 3, size, size])
    dummy.dummy_data_param.shape.add(dim=[1, label_channels, size, size])
    dummy.dummy_data_param.data_filler.add(type="gaussian", std=50.0)
    dummy.dummy_data_param.data_filler.add(type="constant", value=1.0)
    for lp in layers:
        # The published train nets start from pretrained weights and give no fillers (all zeros):
        # draw small random weights instead so that every layer passes a signal.
        if lp.type in ("Convolution", "Deconvolution") and not lp.convolution_param.HasField("weight_filler"):
            lp.convolution_param.weight_filler.CopyFrom(caffe_pb2.FillerParameter(type="gaussian", std=0.01))
    del out.layer[:]
    out.layer.extend([dummy, *layers])
    return out


def _train(net: caffe_pb2.NetParameter, base_lr: float, iterations: int = 2) -> tuple[list[float], Solver]:
    param = caffe_pb2.SolverParameter(base_lr=base_lr, lr_policy="fixed", momentum=0.9, display=1,
                                      max_iter=iterations, snapshot_after_train=False, random_seed=1)
    param.net_param.CopyFrom(net)
    log = io.StringIO()
    glog.set_stream(log)
    try:
        solver = Solver(param, "zoo solver")
        before = {n: np.array(solver.value(n)) for n in solver.param_names}
        solver.solve()
    finally:
        glog.set_stream(None)
    losses = [float(line.rsplit("= ", 1)[1]) for line in log.getvalue().splitlines()
              if "solver.cpp:239] Iteration" in line]
    moved = [n for n in solver.param_names if not np.array_equal(before[n], solver.value(n))]
    solver.close()
    return losses, moved


def test_fcn8s_trains_through_deconvolution(zoo):
    net = _with_dummy_data(read_net_prototxt(zoo / "fcn8s" / "train.prototxt"), 64, 1)
    losses, moved = _train(net, base_lr=1e-4)
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert "score_fr#0" in moved and "conv1_1#0" in moved and "score_pool3#0" in moved


def test_hed_trains_with_duplicate_and_empty_layer_names(zoo):
    # check=False: its HED-fork data layers (reported as not supported) are swapped out below.
    net = read_net_prototxt(zoo / "hed" / "train_val.prototxt", check=False)
    net = _with_dummy_data(net, 48, 1)
    losses, moved = _train(net, base_lr=1e-6)
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert any(n.startswith("conv1_1#") for n in moved)
