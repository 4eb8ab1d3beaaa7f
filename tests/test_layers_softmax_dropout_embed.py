"""Softmax (any axis), Dropout (TEST identity, TRAIN inverted dropout) and Embed (row lookup)."""

from __future__ import annotations

import numpy as np
import pytest

from caffecompat.errors import CaffeCompatError
from caffecompat.net.export import export
from caffecompat.proto import caffe_pb2
from tests.layer_nets import check_gradients, layer_blobs, make_net, opencv_forward, random_params, run

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


def test_softmax_trains():
    x = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    layers = ('layer { name: "s" type: "Scale" bottom: "x" top: "xs" scale_param { axis: 1 num_axes: 2 } }\n'
              'layer { name: "sm" type: "Softmax" bottom: "xs" top: "y" softmax_param { axis: 2 } }')
    spec = make_net(layers, {"x": x.shape}, caffe_pb2.TRAIN)
    check_gradients(spec, random_params(spec), {"x": x}, "y", ["s#0"])


DROP = 'layer { name: "d" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.25 } }'


def test_dropout_test_is_identity():
    x = RNG.normal(size=(4, 50)).astype(np.float32)
    y = run(make_net(DROP, {"x": x.shape}, caffe_pb2.TEST), {}, {"x": x}, ["y"])["y"]
    np.testing.assert_array_equal(y, x)


def test_dropout_train_scales_kept_units():
    x = RNG.uniform(1, 2, size=(8, 500)).astype(np.float32)
    y = run(make_net(DROP, {"x": x.shape}, caffe_pb2.TRAIN), {}, {"x": x}, ["y"], training=True)["y"]
    kept = y != 0
    # DropoutLayer: kept units are scaled by 1 / (1 - ratio); about ratio of them are dropped.
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-6)
    assert abs(1 - kept.mean() - 0.25) < 0.03


def test_dropout_train_gradient():
    # The gradient through dropout is the same mask times 1/(1 - ratio): with a Scale of ones in front,
    # d sum(y) / d scale[c] = sum over c of y (the kept, scaled inputs).
    from tests.gradients import ort_gradients
    from tests.layer_nets import with_loss
    x = RNG.uniform(1, 2, size=(4, 3, 10)).astype(np.float32)
    layers = 'layer { name: "s" type: "Scale" bottom: "x" top: "xs" }\n' + DROP.replace('bottom: "x"', 'bottom: "xs"')
    spec = make_net(layers, {"x": x.shape}, caffe_pb2.TRAIN)
    model = export(spec, params={"s#0": np.ones(3, np.float32)}, outputs=["y"], training=True).model
    _, grads = ort_gradients(with_loss(model, "y", spec.shapes["y"]), [x], ["s#0"])
    g = grads["s#0"]
    assert np.all(np.isfinite(g)) and g.shape == (3,)


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


def test_embed_trains():
    x = np.array([[0, 5, 2, 5]], np.float32)
    spec = make_net(EMBED, {"x": x.shape}, caffe_pb2.TRAIN)
    check_gradients(spec, random_params(spec), {"x": x}, "y", ["e#0", "e#1"])


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
