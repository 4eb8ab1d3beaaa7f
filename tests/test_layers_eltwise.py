"""Eltwise SUM (with coefficients), PROD, MAX: forward, OpenCV, Backward (Caffe's MAX mask, PROD rules), checks."""

from __future__ import annotations

import numpy as np
import pytest

from caffecompat.errors import CaffeCompatError
from caffecompat.proto import caffe_pb2
from tests.gradients import net_backward
from tests.layer_nets import (
    check_all_gradients,
    forward,
    layer_blobs,
    make_data_net,
    make_net,
    opencv_forward,
    relative_error,
)
from tests.test_layers_shape import propagate_down_diffs

SHAPE = (2, 6, 3, 3)
NET = """
layer { name: "abc" type: "Slice" bottom: "data" top: "a" top: "b" top: "c" slice_param { axis: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "sum"
        eltwise_param { coeff: 0.5 coeff: -2 coeff: 1 } }
layer { name: "prod" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "prod" eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "max" eltwise_param { operation: MAX } }
layer { name: "plain" type: "Eltwise" bottom: "sum" bottom: "max" top: "plain" }
"""
BLOBS = ["sum", "prod", "max", "plain"]


def _x(shape=SHAPE):
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


def test_forward_against_numpy_and_opencv(tmp_path):
    spec, params = make_data_net(NET, SHAPE)
    x = _x()
    ours = forward(spec, params, {"data": x}, BLOBS)
    a, b, c = x[:, :2], x[:, 2:4], x[:, 4:]
    want = {"sum": 0.5 * a - 2 * b + c, "prod": a * b * c, "max": np.maximum(np.maximum(a, b), c)}
    want["plain"] = want["sum"] + want["max"]
    theirs = dict(zip(BLOBS, opencv_forward(tmp_path, NET, {"data": SHAPE}, layer_blobs(spec, params), {"data": x},
                                            BLOBS)))
    for blob in BLOBS:
        assert relative_error(ours[blob], want[blob]) < 1e-6, blob
        assert relative_error(ours[blob], theirs[blob]) < 1e-4, blob


@pytest.mark.parametrize("op", ["SUM coeff: 0.5 coeff: -2 coeff: 3", "SUM", "PROD", "PROD stable_prod_grad: false",
                                "MAX"])
def test_gradients(op):
    net = NET.split("layer { name: \"sum\"")[0] + (
        f'layer {{ name: "top" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "top" '
        f'eltwise_param {{ operation: {op} }} }}')
    spec, params = make_data_net(net, (2, 3, 2, 2))
    check_all_gradients(spec, params, {"data": _x((2, 3, 2, 2))}, "top")


@pytest.mark.parametrize("op", ["SUM coeff: -1.5 coeff: 0.25", "PROD", "PROD stable_prod_grad: false", "MAX"])
def test_gradients_two_bottoms(op):
    spec = make_net(f'layer {{ name: "e" type: "Eltwise" bottom: "x" bottom: "y" top: "e" '
                    f'eltwise_param {{ operation: {op} }} }}', {"x": (3, 4), "y": (3, 4)}, caffe_pb2.TRAIN)
    rng = np.random.default_rng(5)
    check_all_gradients(spec, {}, {"x": rng.normal(size=(3, 4)), "y": rng.normal(size=(3, 4))}, "e")


def _backward(op: str, xs: list[np.ndarray], dy: np.ndarray) -> list[np.ndarray]:
    names = [f"x{i}" for i in range(len(xs))]
    bottoms = " ".join(f'bottom: "{n}"' for n in names)
    spec = make_net(f'layer {{ name: "e" type: "Eltwise" {bottoms} top: "e" eltwise_param {{ operation: {op} }} }}',
                    {n: x.shape for n, x in zip(names, xs)}, caffe_pb2.TRAIN)
    _, _, diffs = net_backward(spec, {}, dict(zip(names, xs)), {"e": dy})
    return [diffs[n] for n in names]


def test_max_backward_follows_caffes_mask_on_ties():
    # EltwiseLayer's mask: bottom 0 wins over bottom 1 only when strictly above it (a tie goes to
    # bottom 1); a later bottom wins only when strictly above the running max (a tie stays earlier).
    x0 = np.array([1, 2, 3, 3, 0, 5], np.float32)
    x1 = np.array([1, 1, 3, 2, 0, 4], np.float32)
    x2 = np.array([0, 2, 3, 3, 1, 5], np.float32)
    winners = [1, 0, 1, 0, 2, 0]
    dy = np.arange(1, 7, dtype=np.float32)
    diffs = _backward("MAX", [x0, x1, x2], dy)
    for i, d in enumerate(diffs):
        np.testing.assert_array_equal(d, np.where(np.array(winners) == i, dy, 0), err_msg=f"bottom {i}")
    d0, d1 = _backward("MAX", [x0, x0.copy()], dy)
    assert not d0.any()
    np.testing.assert_array_equal(d1, dy)


def test_prod_backward_at_zero_stable_and_unstable():
    x0 = np.array([0.0, 2.0], np.float32)
    x1 = np.array([3.0, 0.5], np.float32)
    dy = np.array([1.5, -1.0], np.float32)
    d0, d1 = _backward("PROD", [x0, x1], dy)
    np.testing.assert_array_equal(d0, x1 * dy)
    np.testing.assert_array_equal(d1, x0 * dy)
    # stable_prod_grad: false divides the top by the bottom: 0 / 0 at a zero bottom, as Caffe.
    u0, u1 = _backward("PROD stable_prod_grad: false", [x0, x1], dy)
    assert np.isnan(u0[0]) and u0[1] == np.float32(1.0) * dy[1] * np.float32(0.5)
    np.testing.assert_array_equal(u1, (x0 * x1) / x1 * dy)


@pytest.mark.parametrize("op", ["SUM coeff: 3 coeff: 0.5", "PROD", "MAX"])
def test_propagate_down(op):
    d0, d1 = propagate_down_diffs(f'type: "Eltwise" eltwise_param {{ operation: {op} }}', [(2, 3), (2, 3)],
                                  [True, False])
    assert d0.any() and not d1.any()
    if op.startswith("SUM"):
        np.testing.assert_array_equal(d0, np.full((2, 3), 6, np.float32))


@pytest.mark.parametrize("param, message", [
    ("coeff: 1", "one per bottom"),
    ("operation: PROD coeff: 1 coeff: 2", "only for operation SUM"),
])
def test_errors_name_the_layer(param, message):
    net = f'layer {{ name: "e" type: "Eltwise" bottom: "data" bottom: "data" top: "e" eltwise_param {{ {param} }} }}'
    with pytest.raises(CaffeCompatError, match=f"'e'.*{message}"):
        make_data_net(net, (2, 3))


def test_shapes_must_match():
    net = ('layer { name: "ab" type: "Slice" bottom: "data" top: "a" top: "b" slice_param { slice_point: 1 } }\n'
           'layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "e" }')
    with pytest.raises(CaffeCompatError, match="same shape"):
        make_data_net(net, (2, 3))
