"""Neuron layers' forward against Caffe's formulas and OpenCV's Caffe importer (backward: test_backward_activations)."""

from __future__ import annotations

import numpy as np
import pytest

from caffecompat.errors import CaffeCompatError
from tests.layer_nets import forward, layer_blobs, make_data_net, opencv_forward, relative_error

SHAPE = (2, 3, 4, 5)


def _x(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    # Entries at least 0.1 away from 0, so finite differences never straddle a kink.
    rng = np.random.default_rng(seed)
    return (rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.1, 2.0, size=shape)).astype(np.float32)


def _layer(name: str, type_: str, extra: str = "", bottom: str = "data") -> str:
    return f'layer {{ name: "{name}" type: "{type_}" bottom: "{bottom}" top: "{name}" {extra} }}\n'


# OpenCV implements these as Caffe does (its Log and Swish ignore base/scale/shift and beta).
OPENCV_NET = "".join([
    _layer("prelu", "PReLU", 'prelu_param { filler { type: "uniform" min: 0.1 max: 0.5 } }'),
    _layer("prelu_shared", "PReLU", "prelu_param { channel_shared: true }"),
    _layer("elu", "ELU", "elu_param { alpha: 0.7 }"),
    _layer("sigmoid", "Sigmoid"),
    _layer("tanh", "TanH"),
    _layer("absval", "AbsVal"),
    _layer("power", "Power", "power_param { power: 1.5 scale: 0.8 shift: 0.2 }", bottom="absval"),
    _layer("bnll", "BNLL"),
    _layer("exp", "Exp", "exp_param { base: 2 scale: 0.5 shift: 0.1 }"),
    _layer("log", "Log", bottom="sigmoid"),
    _layer("swish", "Swish"),
])
OPENCV_BLOBS = ["prelu", "prelu_shared", "elu", "sigmoid", "tanh", "absval", "power", "bnll", "exp", "log", "swish"]


def test_forward_matches_opencv(tmp_path):
    x = _x()
    spec, params = make_data_net(OPENCV_NET, SHAPE)
    ours = forward(spec, params, {"data": x}, OPENCV_BLOBS)
    theirs = dict(zip(OPENCV_BLOBS, opencv_forward(tmp_path, OPENCV_NET, {"data": SHAPE}, layer_blobs(spec, params),
                                                   {"data": x}, OPENCV_BLOBS)))
    for blob in OPENCV_BLOBS:
        assert relative_error(ours[blob], theirs[blob]) < 1e-4, blob


def test_forward_matches_caffe_formulas():
    net = "".join([
        _layer("prelu", "PReLU"),
        _layer("prelu_shared", "PReLU", "prelu_param { channel_shared: true }"),
        _layer("bnll", "BNLL"),
        _layer("power", "Power", "power_param { power: 2 scale: -0.5 shift: 0.3 }"),
        _layer("power_const", "Power", "power_param { power: 3 scale: 0 shift: 2 }"),
        _layer("power_zero", "Power", "power_param { power: 0 scale: 2 }"),
        _layer("exp_e", "Exp", "exp_param { scale: 0.5 shift: 0.25 }"),
        _layer("log10", "Log", "log_param { base: 10 scale: 2 shift: 200 }"),
        _layer("threshold", "Threshold", "threshold_param { threshold: 0.3 }"),
        _layer("swish", "Swish", "swish_param { beta: 1.5 }"),
        _layer("clip", "Clip", "clip_param { min: -0.3 max: 0.4 }"),
    ])
    x = _x()
    x[0, 0, 0, :3] = [80.0, -80.0, 0.3]  # BNLL must not overflow; Threshold is strict (0.3 -> 0)
    spec, params = make_data_net(net, SHAPE)
    blobs = ["prelu", "prelu_shared", "bnll", "power", "power_const", "power_zero", "exp_e", "log10",
             "threshold", "swish", "clip"]
    ours = forward(spec, params, {"data": x}, blobs)
    d = x.astype(np.float64)
    # PReLU's default filler: every slope 0.25; a shared slope is a 0-axis blob.
    assert params["prelu#0"].shape == (3,) and params["prelu_shared#0"].shape == ()
    assert np.all(params["prelu#0"] == 0.25)
    want = {
        "prelu": np.where(d > 0, d, 0.25 * d),
        "prelu_shared": np.where(d > 0, d, 0.25 * d),
        "bnll": np.logaddexp(0.0, d),
        "power": (0.3 - 0.5 * d) ** 2,
        "power_const": np.full(SHAPE, 8.0),
        "power_zero": np.ones(SHAPE),
        "exp_e": np.exp(0.25 + 0.5 * d),
        "log10": np.log10(200 + 2 * d),
        "threshold": (x > np.float32(0.3)).astype(np.float64),  # compared in float, as Caffe does
        "swish": d / (1 + np.exp(-1.5 * d)),
        "clip": np.clip(d, -0.3, 0.4),
    }
    for blob in blobs:
        assert np.all(np.isfinite(ours[blob])), blob
        assert relative_error(ours[blob], want[blob]) < 1e-5, blob


def test_errors_name_the_layer():
    with pytest.raises(CaffeCompatError, match="'p'.*at least 2 axes"):
        make_data_net(_layer("p", "PReLU"), (5,))
    with pytest.raises(CaffeCompatError, match="'e'.*base"):
        spec, params = make_data_net(_layer("e", "Exp", "exp_param { base: -2 }"), (2, 3))
        forward(spec, params, {"data": np.zeros((2, 3), np.float32)}, ["e"])
    # AbsValLayer::LayerSetUp refuses in-place computation.
    with pytest.raises(CaffeCompatError, match="'a'.*in-place"):
        make_data_net(_layer("a", "AbsVal", bottom="data").replace('top: "a"', 'top: "data"'), (2, 3))
