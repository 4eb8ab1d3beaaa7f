"""Softmax (any axis), Dropout (TEST identity, TRAIN inverted dropout) and Embed (row lookup)."""

from __future__ import annotations

import numpy as np
import pytest

from caffecompat.errors import CaffeCompatError
from caffecompat.net.export import export
from caffecompat.proto import caffe_pb2
from tests.gradients import check_layer_gradients, net_backward
from tests.layer_nets import layer_blobs, make_net, opencv_forward, random_params, run

RNG = np.random.default_rng(5)


def close(ours: np.ndarray, ref: np.ndarray, tol: float = 1e-5) -> None:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert np.abs(ours - ref).max() / max(1.0, float(np.abs(ref).max())) < tol


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("axis", [1, 2, -1, 0])
def test_softmax(axis, tmp_path):
    x = (RNG.normal(size=(2, 3, 4, 5)) * 20).astype(np.float32)
    layers = f'layer {{ name: "sm" type: "Softmax" bottom: "x" top: "y" softmax_param {{ axis: {axis} }} }}'
    y = run(make_net(layers, {"x": x.shape}), {}, {"x": x}, ["y"])["y"]
    close(y, softmax(x.astype(np.float64), axis))
    (cv,) = opencv_forward(tmp_path, layers, {"x": x.shape}, {}, {"x": x}, ["y"])
    close(y, cv)


def test_softmax_old_opset():
    x = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    spec = make_net('layer { name: "sm" type: "Softmax" bottom: "x" top: "y" }', {"x": x.shape})
    import onnxruntime as ort
    model = export(spec, params={}, outputs=["y"], opset=11).model
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    close(sess.run(None, {"x": x})[0], softmax(x.astype(np.float64), 1))


def test_softmax_bad_axis():
    with pytest.raises(CaffeCompatError, match="axis"):
        make_net('layer { name: "sm" type: "Softmax" bottom: "x" top: "y" softmax_param { axis: 3 } }',
                 {"x": (2, 3, 4)})


@pytest.mark.parametrize("axis", [1, 2, -1, 0])
def test_softmax_backward(axis):
    # SoftmaxLayer::Backward_cpu: dx = (dy - sum(dy * y) along the axis) * y.
    x = RNG.normal(size=(2, 3, 4, 2)).astype(np.float32)
    layers = f'layer {{ name: "sm" type: "Softmax" bottom: "x" top: "y" softmax_param {{ axis: {axis} }} }}'
    check_layer_gradients(make_net(layers, {"x": x.shape}, caffe_pb2.TRAIN), {}, {"x": x})


def test_softmax_in_place_backward():
    x = RNG.normal(size=(3, 5)).astype(np.float32)
    spec = make_net('layer { name: "sm" type: "Softmax" bottom: "x" top: "x" }', {"x": x.shape}, caffe_pb2.TRAIN)
    check_layer_gradients(spec, {}, {spec.inputs[0]: x})


DROP = 'layer { name: "d" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.25 } }'


def test_dropout_test_is_identity():
    x = RNG.normal(size=(4, 50)).astype(np.float32)
    y = run(make_net(DROP, {"x": x.shape}, caffe_pb2.TEST), {}, {"x": x}, ["y"])["y"]
    np.testing.assert_array_equal(y, x)


def test_dropout_train_scales_kept_units():
    x = RNG.uniform(1, 2, size=(8, 500)).astype(np.float32)
    dy = RNG.normal(size=x.shape).astype(np.float32)
    spec = make_net(DROP, {"x": x.shape}, caffe_pb2.TRAIN)
    out, _, bdiffs = net_backward(spec, {}, {"x": x}, {"y": dy})
    y = out["y"]
    kept = y != 0
    # DropoutLayer: kept units are scaled by 1 / (1 - ratio); about ratio of them are dropped.
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-6)
    assert abs(1 - kept.mean() - 0.25) < 0.03
    # Backward: the same mask and scale on the top diff.
    np.testing.assert_array_equal(bdiffs["x"], np.where(kept, dy * np.float32(1 / 0.75), 0))


def test_dropout_mask_is_drawn_from_the_generator():
    # The mask is a graph input drawn by the runtime from the solver's seeded generator.
    spec = make_net(DROP, {"x": (4, 50)}, caffe_pb2.TRAIN)
    fed = export(spec, params={}, training=True).fed_inputs
    assert len(fed) == 1
    draw = next(iter(fed.values())).draw
    a, b = draw(np.random.default_rng(3)), draw(np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 50) and not np.array_equal(a, draw(np.random.default_rng(4)))
    assert abs(a.mean() - 0.75) < 0.1
    # Not lowered for training, or at TEST: the identity, nothing drawn.
    assert not export(spec, params={}, training=False).fed_inputs
    assert not export(make_net(DROP, {"x": (4, 50)}, caffe_pb2.TEST), params={}, training=True).fed_inputs


@pytest.mark.parametrize("phase", [caffe_pb2.TRAIN, caffe_pb2.TEST])
def test_dropout_backward(phase):
    # TRAIN: dx = dy * mask * scale with the forward's mask; TEST: dx = dy.
    x = RNG.normal(size=(3, 4, 5)).astype(np.float32)
    spec = make_net(DROP, {"x": x.shape}, phase)
    check_layer_gradients(spec, {}, {"x": x})
    dy = RNG.normal(size=x.shape).astype(np.float32)
    _, _, bdiffs = net_backward(spec, {}, {"x": x}, {"y": dy})
    if phase == caffe_pb2.TEST:
        np.testing.assert_array_equal(bdiffs["x"], dy)
    else:
        assert (bdiffs["x"] == 0).any()


def test_dropout_in_place_backward():
    x = RNG.normal(size=(3, 20)).astype(np.float32)
    spec = make_net(DROP.replace('top: "y"', 'top: "x"'), {"x": x.shape}, caffe_pb2.TRAIN)
    check_layer_gradients(spec, {}, {spec.inputs[0]: x})


def test_dropout_ratio_checked():
    with pytest.raises(CaffeCompatError, match="dropout_ratio"):
        make_net(DROP.replace("0.25", "1.0"), {"x": (2, 2)})


EMBED = ('layer { name: "e" type: "Embed" bottom: "x" top: "y" embed_param { input_dim: 6 num_output: 4 '
         'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "constant" value: 0.5 } } }')


@pytest.mark.parametrize("bias", [True, False])
def test_embed(bias):
    layers = EMBED if bias else EMBED.replace("num_output: 4", "num_output: 4 bias_term: false")
    x = np.array([[0, 5, 2], [3.0, 3, 1]], np.float32)
    spec = make_net(layers, {"x": x.shape})
    assert spec.shapes["y"] == (2, 3, 4)
    assert [spec.params[p].shape for p in spec.layer("e").param_names] == ([(6, 4), (4,)] if bias else [(6, 4)])
    params = random_params(spec)
    y = run(spec, params, {"x": x}, ["y"])["y"]
    ref = params["e#0"][x.astype(np.int64)] + (params["e#1"] if bias else 0)
    close(y, ref)


@pytest.mark.parametrize("bad", [6.0, -1.0])
def test_embed_index_out_of_range(bad):
    x = np.array([[0, bad]], np.float32)
    spec = make_net(EMBED, {"x": x.shape})
    with pytest.raises(Exception, match="(?i)out of|bound|invalid"):
        run(spec, random_params(spec), {"x": x}, ["y"])


@pytest.mark.parametrize("bias", [True, False])
def test_embed_backward(bias):
    # EmbedLayer::Backward_cpu: each top row's diff is added into its index's weight row (repeated
    # indices accumulate); the bias diff is the sum over every index. A loss_weight makes the Embed
    # need backward without force_backward (Caffe aborts on force_backward here).
    layers = EMBED if bias else EMBED.replace("num_output: 4", "num_output: 4 bias_term: false")
    layers = layers.replace('top: "y"', 'top: "y" loss_weight: 1')
    x = np.array([[0, 5, 2, 5], [5, 1, 0, 5]], np.float32)
    spec = make_net(layers, {"x": x.shape}, caffe_pb2.TRAIN)
    dy = RNG.normal(size=(2, 4, 4)).astype(np.float32)
    _, pdiffs, bdiffs = net_backward(spec, random_params(spec), {"x": x}, {"y": dy}, force_backward=False)
    ref = np.zeros((6, 4), np.float32)
    np.add.at(ref, x.astype(np.int64).reshape(-1), dy.reshape(-1, 4))
    close(pdiffs["e#0"], ref, 1e-6)
    if bias:
        close(pdiffs["e#1"], dy.reshape(-1, 4).sum(axis=0), 1e-6)
    assert not bdiffs["x"].any()


def test_embed_refuses_input_diff():
    # Caffe's force_backward asks Embed for its input's diff, and EmbedLayer::Backward aborts.
    x = np.array([[0, 5]], np.float32)
    spec = make_net(EMBED, {"x": x.shape}, caffe_pb2.TRAIN)
    with pytest.raises(CaffeCompatError, match="backpropagate to an Embed layer's input"):
        net_backward(spec, random_params(spec), {"x": x})


def test_scale_then_softmax_opencv(tmp_path):
    # Softmax has no blobs; a net with a learned Scale then Softmax matches OpenCV end to end.
    x = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    layers = ('layer { name: "s" type: "Scale" bottom: "x" top: "xs" scale_param { bias_term: true } }\n'
              'layer { name: "sm" type: "Softmax" bottom: "xs" top: "y" }')
    spec = make_net(layers, {"x": x.shape})
    params = random_params(spec)
    y = run(spec, params, {"x": x}, ["y"])["y"]
    (cv,) = opencv_forward(tmp_path, layers, {"x": x.shape}, layer_blobs(spec, params), {"x": x}, ["y"])
    close(y, cv)
