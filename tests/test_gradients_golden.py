"""One forward/backward pass from init weights reproduces Caffe's loss, parameter diffs and blob diffs (1e-5).

../shared/caffe-golden/train/grad (and grad_bn for BatchNorm) hold Caffe's
first TRAIN batch: the loss, every parameter with its gradient in `diff`, and
every blob's diff after Net::Backward.
"""

from __future__ import annotations

import numpy as np
import pytest

from caffecompat.formats.blob import blob_to_array
from caffecompat.formats.caffemodel import read_caffemodel
from caffecompat.formats.net import read_net_prototxt
from caffecompat.net.export import LOSS_OUTPUT
from caffecompat.net.state import make_state
from caffecompat.net.weights import init_params, load_caffemodel
from caffecompat.proto import caffe_pb2
from caffecompat.runtime.feeder import build_with_data
from caffecompat.runtime.training import TrainingNet
from tests.gradients import net_backward

CASES = {"grad": ("train/net.prototxt", "train/init.caffemodel"),
         "grad_bn": ("train/net_bn.prototxt", "train/init_bn.caffemodel")}


def _rel(ours: np.ndarray, caffe: np.ndarray, scale: float) -> float:
    # Relative to the blob's own magnitude; a blob whose true gradient is zero (a conv bias feeding
    # BatchNorm) holds rounding noise in Caffe's file, and is measured against the net's largest gradient.
    own = float(np.abs(caffe).max())
    return float(np.abs(ours - caffe).max() / (own if own >= 1e-3 * scale else scale))


@pytest.mark.parametrize("case", sorted(CASES))
def test_first_iteration_gradients_match_caffe(golden, monkeypatch, case):
    monkeypatch.chdir(golden)
    net_file, weights = CASES[case]
    net = read_net_prototxt(net_file)
    rng = np.random.default_rng(0)
    feeder = build_with_data(net, make_state(net, caffe_pb2.TRAIN), rng, net_file)
    try:
        spec = feeder.spec
        values = init_params(spec, rng)
        load_caffemodel(spec, values, weights)
        trainer = TrainingNet(spec, values)
        inputs = feeder.next_inputs()
        outputs = trainer.forward_backward(inputs)
    finally:
        feeder.close()
    expected_loss = float((golden / "train" / case / "loss.txt").read_text())
    assert float(outputs[LOSS_OUTPUT]) == pytest.approx(expected_loss, rel=1e-5)

    caffe = read_caffemodel(golden / "train" / case / "params_with_diff.caffemodel")
    scale = max(float(np.abs(blob_to_array(b, diff=True)).max()) for lp in caffe.layer for b in lp.blobs)
    checked = 0
    for layer in caffe.layer:
        node = spec.layer(layer.name)
        for i, blob in enumerate(layer.blobs):
            name = node.param_names[i]
            if spec.params[name].lr_mult == 0:
                continue  # statistics and frozen blobs: Caffe computes no gradient for them
            ours = trainer.grad(name)
            theirs = blob_to_array(blob, diff=True).reshape(ours.shape)
            err = _rel(ours, theirs, scale)
            assert err <= 1e-5, f"{layer.name} blob {i}: {err}"
            checked += 1
    trainer.close()
    assert checked >= 8

    # Every blob's diff, as Net::Backward leaves it (Caffe's split copies included).
    _, _, blob_diffs = net_backward(spec, values, inputs, force_backward=False)
    names = (golden / "train" / case / "blob_names.txt").read_text().split()
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString((golden / "train" / case / "blob_diffs.binaryproto").read_bytes())
    assert len(vec.blobs) == len(names)
    for name, blob in zip(names, vec.blobs):
        theirs = blob_to_array(blob, diff=True).reshape(-1)
        ours = blob_diffs[name].reshape(-1)
        err = float(np.abs(ours - theirs).max() / max(1.0, float(np.abs(theirs).max())))
        assert err <= 1e-5, f"blob {name} diff: {err}"
