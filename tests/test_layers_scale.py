"""Scale and Bias: Caffe's broadcasting rules (axis, num_axes, second bottom), fillers, Backward."""

from __future__ import annotations

import numpy as np
import pytest

from caffecompat.errors import CaffeCompatError
from caffecompat.net.weights import init_params
from caffecompat.proto import caffe_pb2
from tests.gradients import check_layer_gradients, net_backward
from tests.layer_nets import layer_blobs, make_net, opencv_forward, random_params, run

RNG = np.random.default_rng(3)
X = (2, 3, 4, 5)


def close(ours: np.ndarray, ref: np.ndarray, tol: float = 1e-5) -> None:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert np.abs(ours - ref).max() / max(1.0, float(np.abs(ref).max())) < tol


def expand(v: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """v placed at `axis` of an ndim blob, for numpy broadcasting."""
    return v.reshape((1,) * axis + v.shape + (1,) * (ndim - axis - v.ndim))


@pytest.mark.parametrize("axis,num_axes,shape,at", [
    (1, 1, (3,), 1), (0, -1, X, 0), (-2, 2, (4, 5), 2), (2, 0, (), 0), (0, 2, (2, 3), 0), (1, -1, (3, 4, 5), 1),
])
def test_scale_learned(axis, num_axes, shape, at):
    x = RNG.normal(size=X).astype(np.float32)
    layers = f'layer {{ name: "s" type: "Scale" bottom: "x" top: "y" scale_param {{ axis: {axis} ' \
             f'num_axes: {num_axes} bias_term: true }} }}'
    spec = make_net(layers, {"x": X})
    assert spec.params["s#0"].shape == shape and spec.params["s#1"].shape == shape
    params = random_params(spec)
    y = run(spec, params, {"x": x}, ["y"])["y"]
    close(y, x * expand(params["s#0"], at, 4) + expand(params["s#1"], at, 4))


def test_scale_defaults_and_fillers():
    spec = make_net('layer { name: "s" type: "Scale" bottom: "x" top: "y" scale_param { bias_term: true '
                    'bias_filler { type: "constant" value: 0.5 } } }', {"x": X})
    values = init_params(spec, np.random.default_rng(0))
    # ScaleLayer: without a filler the scale is constant 1; the bias uses bias_filler.
    np.testing.assert_array_equal(values["s#0"], np.ones(3))
    np.testing.assert_array_equal(values["s#1"], np.full(3, 0.5))
    spec = make_net('layer { name: "s" type: "Scale" bottom: "x" top: "y" scale_param { filler { type: '
                    '"constant" value: 2 } } }', {"x": X})
    np.testing.assert_array_equal(init_params(spec, np.random.default_rng(0))["s#0"], np.full(3, 2.0))


@pytest.mark.parametrize("axis,shape,at", [(1, (3, 4), 1), (0, (2,), 0), (3, (5,), 3), (1, (), 0), (-3, (3,), 1)])
def test_scale_two_bottoms(axis, shape, at):
    x = RNG.normal(size=X).astype(np.float32)
    s = RNG.normal(size=shape).astype(np.float32)
    layers = f'layer {{ name: "s" type: "Scale" bottom: "x" bottom: "m" top: "y" scale_param {{ axis: {axis} ' \
             'bias_term: true } }'
    spec = make_net(layers, {"x": X, "m": shape})
    # With two bottoms the only blob is the bias, shaped like bottom 1.
    assert [spec.params[p].shape for p in spec.layer("s").param_names] == [shape]
    params = random_params(spec)
    y = run(spec, params, {"x": x, "m": s}, ["y"])["y"]
    close(y, x * expand(s, at, 4) + expand(params["s#0"], at, 4))


def test_scale_opencv(tmp_path):
    x = RNG.normal(size=X).astype(np.float32)
    layers = 'layer { name: "s" type: "Scale" bottom: "x" top: "y" scale_param { bias_term: true } }'
    spec = make_net(layers, {"x": X})
    params = random_params(spec)
    y = run(spec, params, {"x": x}, ["y"])["y"]
    (cv,) = opencv_forward(tmp_path, layers, {"x": X}, layer_blobs(spec, params), {"x": x}, ["y"])
    close(y, cv)


@pytest.mark.parametrize("layers,bad", [
    ('scale_param { axis: 4 }', "out of range"),
    ('scale_param { axis: 2 num_axes: 3 }', "extends past"),
    ('scale_param { num_axes: -2 }', "num_axes"),
])
def test_scale_errors(layers, bad):
    with pytest.raises(CaffeCompatError, match=bad):
        make_net(f'layer {{ name: "s" type: "Scale" bottom: "x" top: "y" {layers} }}', {"x": X})


def test_scale_second_bottom_mismatch():
    with pytest.raises(CaffeCompatError, match="does not match"):
        make_net('layer { name: "s" type: "Scale" bottom: "x" bottom: "m" top: "y" }', {"x": X, "m": (4,)})


@pytest.mark.parametrize("axis,num_axes,shape,at", [(1, 1, (3,), 1), (2, -1, (4, 5), 2), (0, 0, (), 0)])
def test_bias_learned(axis, num_axes, shape, at):
    x = RNG.normal(size=X).astype(np.float32)
    layers = f'layer {{ name: "b" type: "Bias" bottom: "x" top: "y" bias_param {{ axis: {axis} ' \
             f'num_axes: {num_axes} filler {{ type: "constant" value: 0.25 }} }} }}'
    spec = make_net(layers, {"x": X})
    assert spec.params["b#0"].shape == shape
    np.testing.assert_array_equal(init_params(spec, np.random.default_rng(0))["b#0"], np.full(shape, 0.25))
    params = random_params(spec)
    close(run(spec, params, {"x": x}, ["y"])["y"], x + expand(params["b#0"], at, 4))


def test_bias_two_bottoms():
    x = RNG.normal(size=X).astype(np.float32)
    b = RNG.normal(size=(4, 5)).astype(np.float32)
    spec = make_net('layer { name: "b" type: "Bias" bottom: "x" bottom: "m" top: "y" bias_param { axis: 2 } }',
                    {"x": X, "m": (4, 5)})
    assert spec.layer("b").param_names == []
    close(run(spec, {}, {"x": x, "m": b}, ["y"])["y"], x + b)


G = (2, 3, 2, 3)


@pytest.mark.parametrize("axis,num_axes", [(1, 1), (0, -1), (-2, 2), (2, 0), (0, 2), (1, -1), (3, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_scale_learned_backward(axis, num_axes, bias):
    # ScaleLayer::Backward_cpu: dx = dy * scale; scale diff = dy * x summed outside the scale axes;
    # the internal Bias layer's diff = dy summed likewise.
    x = RNG.normal(size=G).astype(np.float32)
    layers = f'layer {{ name: "s" type: "Scale" bottom: "x" top: "y" scale_param {{ axis: {axis} ' \
             f'num_axes: {num_axes} bias_term: {str(bias).lower()} }} }}'
    spec = make_net(layers, {"x": G}, caffe_pb2.TRAIN)
    check_layer_gradients(spec, random_params(spec), {"x": x})


@pytest.mark.parametrize("axis,shape", [(1, (3, 2)), (0, (2,)), (3, (3,)), (1, ()), (-3, (3,)), (0, G)])
@pytest.mark.parametrize("bias", [True, False])
def test_scale_two_bottoms_backward(axis, shape, bias):
    # The scale is bottom 1: its diff is computed like the learned scale's; the bias stays a parameter.
    x = RNG.normal(size=G).astype(np.float32)
    m = RNG.normal(size=shape).astype(np.float32)
    layers = f'layer {{ name: "s" type: "Scale" bottom: "x" bottom: "m" top: "y" scale_param {{ axis: {axis} ' \
             f'bias_term: {str(bias).lower()} }} }}'
    spec = make_net(layers, {"x": G, "m": shape}, caffe_pb2.TRAIN)
    check_layer_gradients(spec, random_params(spec), {"x": x, "m": m})


def test_scale_in_place_backward():
    # In place, Caffe keeps a copy of the bottom for the scale diff.
    x = RNG.normal(size=G).astype(np.float32)
    spec = make_net('layer { name: "s" type: "Scale" bottom: "x" top: "x" scale_param { bias_term: true } }',
                    {"x": G}, caffe_pb2.TRAIN)
    check_layer_gradients(spec, random_params(spec), {spec.inputs[0]: x})


def test_scale_backward_values():
    # The numbers themselves: dx = dy * s, ds = sum(dy * x), db = sum(dy), over axes 0, 2, 3.
    x = RNG.normal(size=G).astype(np.float32)
    dy = RNG.normal(size=G).astype(np.float32)
    spec = make_net('layer { name: "s" type: "Scale" bottom: "x" top: "y" scale_param { bias_term: true } }',
                    {"x": G}, caffe_pb2.TRAIN)
    params = random_params(spec)
    _, pdiffs, bdiffs = net_backward(spec, params, {"x": x}, {"y": dy})
    close(bdiffs["x"], dy * expand(params["s#0"], 1, 4))
    close(pdiffs["s#0"], (dy * x).sum(axis=(0, 2, 3)))
    close(pdiffs["s#1"], dy.sum(axis=(0, 2, 3)))


@pytest.mark.parametrize("axis,num_axes", [(1, 1), (2, -1), (0, 0), (0, -1)])
def test_bias_learned_backward(axis, num_axes):
    # BiasLayer::Backward_cpu: dx = dy, bias diff = dy summed outside the bias axes.
    x = RNG.normal(size=G).astype(np.float32)
    layers = f'layer {{ name: "b" type: "Bias" bottom: "x" top: "y" bias_param {{ axis: {axis} ' \
             f'num_axes: {num_axes} }} }}'
    spec = make_net(layers, {"x": G}, caffe_pb2.TRAIN)
    check_layer_gradients(spec, random_params(spec), {"x": x})


@pytest.mark.parametrize("axis,shape", [(2, (2, 3)), (0, (2,)), (1, ())])
def test_bias_two_bottoms_backward(axis, shape):
    x = RNG.normal(size=G).astype(np.float32)
    b = RNG.normal(size=shape).astype(np.float32)
    layers = f'layer {{ name: "b" type: "Bias" bottom: "x" bottom: "m" top: "y" bias_param {{ axis: {axis} }} }}'
    spec = make_net(layers, {"x": G, "m": shape}, caffe_pb2.TRAIN)
    check_layer_gradients(spec, {}, {"x": x, "m": b})


def test_bias_in_place_backward():
    x = RNG.normal(size=G).astype(np.float32)
    spec = make_net('layer { name: "b" type: "Bias" bottom: "x" top: "x" }', {"x": G}, caffe_pb2.TRAIN)
    check_layer_gradients(spec, random_params(spec), {spec.inputs[0]: x})


def test_scale_and_bias_chain_backward():
    x = RNG.normal(size=(2, 3, 2, 2)).astype(np.float32)
    layers = ('layer { name: "s" type: "Scale" bottom: "x" top: "y" scale_param { axis: 1 num_axes: 2 '
              'bias_term: true } }\nlayer { name: "b" type: "Bias" bottom: "y" top: "z" bias_param { axis: 3 } }')
    spec = make_net(layers, {"x": x.shape}, caffe_pb2.TRAIN)
    check_layer_gradients(spec, random_params(spec), {"x": x})
