"""Eltwise SUM (with coefficients), PROD and MAX: forward, OpenCV, gradients, parameter checks."""

from __future__ import annotations

import numpy as np
import pytest

from caffecompat.errors import CaffeCompatError
from tests.layer_nets import check_all_gradients, forward, layer_blobs, make_data_net, opencv_forward, relative_error

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


@pytest.mark.parametrize("op", ["SUM coeff: 0.5 coeff: -2 coeff: 3", "PROD", "MAX"])
def test_gradients(op):
    net = NET.split("layer { name: \"sum\"")[0] + (
        f'layer {{ name: "top" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "top" '
        f'eltwise_param {{ operation: {op} }} }}')
    spec, params = make_data_net(net, (2, 3, 2, 2))
    check_all_gradients(spec, params, {"data": _x((2, 3, 2, 2))}, "top")


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
