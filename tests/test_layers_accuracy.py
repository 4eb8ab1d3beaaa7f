"""Accuracy: top_k with Caffe's tie rule, ignore_label, axis, the per-class top; it has no Backward."""

from __future__ import annotations

import numpy as np
import pytest

from caffecompat.formats.protofile import parse_text
from caffecompat.net.export import export
from caffecompat.net.spec import build
from caffecompat.proto import caffe_pb2
from tests.gradients import net_backward
from tests.layer_nets import make_net, run_layers


def accuracy_ref(x, labels, axis, top_k, ignore):
    """Caffe's AccuracyLayer::Forward_cpu as loops: a hit when at most top_k scores are >= the label's."""
    xm = np.moveaxis(x, axis, -1)
    c = xm.shape[-1]
    xf = xm.reshape(-1, c)
    lab = labels.reshape(-1).astype(int)
    hits, count = 0, 0
    per_hit, per_num = np.zeros(c), np.zeros(c)
    for scores, y in zip(xf, lab):
        if ignore is not None and y == ignore:
            continue
        per_num[y] += 1
        if (scores >= scores[y]).sum() <= top_k:
            hits += 1
            per_hit[y] += 1
        count += 1
    per_class = np.where(per_num == 0, 0, per_hit / np.maximum(per_num, 1))
    return (hits / count if count else 0.0), per_class


def run(x, labels, param, tops=("acc",)):
    top_text = " ".join(f'top: "{t}"' for t in tops)
    layers = (f'layer {{ name: "acc" type: "Accuracy" bottom: "x" bottom: "label" {top_text} '
              f'accuracy_param {{ {param} }} }}')
    return run_layers(layers, {"x": x, "label": labels})


def test_ties_count_against_the_label():
    x = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 1.0, 2.0]], np.float32)
    labels = np.array([0, 1, 2], np.float32)
    assert float(run(x, labels, "top_k: 1")["acc"]) == 0.0  # ties at the top: no hit
    assert np.isclose(float(run(x, labels, "top_k: 2")["acc"]), 3 / 3)
    assert np.isclose(float(run(x, np.array([0, 2, 0], np.float32), "")["acc"]), 1 / 3)


@pytest.mark.parametrize("top_k", [1, 3])
def test_spatial_axis_ignore_label_and_per_class(top_k):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(2, 5, 3, 2)).astype(np.float32)  # small integers: many ties
    labels = rng.integers(0, 5, size=(2, 1, 3, 2)).astype(np.float32)
    labels[0, 0, 0, 0] = labels[1, 0, 2, 1] = -1
    out = run(x, labels, f"top_k: {top_k} ignore_label: -1", tops=("acc", "per_class"))
    ref, ref_per_class = accuracy_ref(x, labels, 1, top_k, -1)
    assert np.isclose(float(out["acc"]), ref, rtol=1e-6)
    np.testing.assert_allclose(out["per_class"], ref_per_class, rtol=1e-6)
    assert out["per_class"].shape == (5,)


def test_last_axis_and_all_ignored():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4, 6)).astype(np.float32)
    labels = rng.integers(0, 6, size=(3, 4)).astype(np.float32)
    out = run(x, labels, "axis: -1 top_k: 2")
    assert np.isclose(float(out["acc"]), accuracy_ref(x, labels, 2, 2, None)[0], rtol=1e-6)
    out = run(x, np.full((3, 4), 5, np.float32), "axis: 2 ignore_label: 5")
    assert float(out["acc"]) == 0.0


def test_top_k_larger_than_classes_is_an_error():
    layers = 'layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "label" top: "acc" accuracy_param { top_k: 4 } }'
    with pytest.raises(Exception, match="acc"):
        make_net(layers, {"x": (2, 3), "label": (2,)}, caffe_pb2.TRAIN)


def test_accuracy_beside_softmax_with_loss_stays_out_of_the_backward():
    text = ('layer { name: "in" type: "Input" top: "data" top: "label" input_param { shape { dim: 4 dim: 5 } '
            'shape { dim: 4 } } }\n'
            'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }\n'
            'layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" }\n'
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }')
    spec = build(parse_text(text, caffe_pb2.NetParameter, "t", "net"), caffe_pb2.TRAIN)
    rng = np.random.default_rng(2)
    params = {"ip#0": rng.normal(size=(3, 5)).astype(np.float32), "ip#1": np.zeros(3, np.float32)}
    feeds = {"data": rng.normal(size=(4, 5)).astype(np.float32), "label": np.array([0, 1, 2, 1], np.float32)}
    # Net::Init: Accuracy's top reaches no loss, so it needs no Backward; the loss's backward is unchanged.
    out, pdiffs, diffs = net_backward(spec, params, feeds, force_backward=False)
    ip = feeds["data"].astype(np.float64) @ params["ip#0"].T.astype(np.float64)
    assert np.isclose(float(out["acc"]), accuracy_ref(ip, feeds["label"], 1, 1, None)[0])
    prob = np.exp(ip - ip.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    dip = (prob - np.eye(3)[feeds["label"].astype(int)]) / 4
    np.testing.assert_allclose(diffs["ip"], dip, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(pdiffs["ip#0"], dip.T @ feeds["data"], rtol=1e-5, atol=1e-7)
    # AccuracyLayer::Backward_cpu is NOT_IMPLEMENTED: force_backward asks it for a diff, an error as in Caffe.
    with pytest.raises(Exception, match="acc.*no Backward"):
        net_backward(spec, params, feeds, force_backward=True)


@pytest.mark.parametrize("opset", [13, 21])
def test_losses_and_accuracy_export_at_other_opsets(opset):
    import onnxruntime as ort

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 2)).astype(np.float32)
    labels = np.array([[0, 2], [1, 1]], np.float32)
    layers = ('layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "label" top: "acc" }\n'
              'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" }\n'
              'layer { name: "sig" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "x" top: "sig" }')
    spec = make_net(layers, {"x": x.shape, "label": labels.shape}, caffe_pb2.TRAIN)
    model = export(spec, params={}, loss_output=True, opset=opset).model
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x, "label": labels})))
    base = run_layers(layers, {"x": x, "label": labels})
    for name in ("acc", "loss", "sig"):
        assert np.isclose(float(ref[name]), float(base[name]), rtol=1e-6)
