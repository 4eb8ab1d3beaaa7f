"""Neuron layers' Backward: central differences where Caffe's Backward is the derivative of its Forward,
Caffe's own formulas where it is not (in-place layers whose backward reads the rewritten blob data)."""

from __future__ import annotations

import numpy as np
import pytest

from caffecompat.errors import CaffeCompatError
from tests.gradients import net_backward
from tests.layer_nets import check_all_gradients, make_data_net

SHAPE = (2, 3, 4)


def _x(kind: str = "signed", shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    """Inputs away from every kink: signed entries have 0.1 <= |x| <= 2, positive ones lie in [0.5, 2]."""
    rng = np.random.default_rng(seed)
    if kind == "positive":
        return rng.uniform(0.5, 2.0, size=shape).astype(np.float32)
    x = rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.1, 2.0, size=shape)
    if kind == "clip":  # keep 0.05 away from the bounds -0.5 and 0.7 of the Clip cases
        x[np.abs(x + 0.5) < 0.05] = -0.3
        x[np.abs(x - 0.7) < 0.05] = 1.0
    return x.astype(np.float32)


def _layer(type_: str, extra: str = "", bottom: str = "data", top: str = "top", name: str = "top") -> str:
    return f'layer {{ name: "{name}" type: "{type_}" bottom: "{bottom}" top: "{top}" {extra} }}\n'


# (layer text, input kind): each Backward as the derivative of its Forward, across parameter variants.
CASES = {
    "relu": (_layer("ReLU"), "signed"),
    "relu_leaky": (_layer("ReLU", "relu_param { negative_slope: 0.2 }"), "signed"),
    "relu_negative_slope": (_layer("ReLU", "relu_param { negative_slope: -0.3 }"), "signed"),
    "prelu": (_layer("PReLU", 'prelu_param { filler { type: "uniform" min: -0.5 max: 0.5 } }'), "signed"),
    "prelu_shared": (_layer("PReLU", "prelu_param { channel_shared: true }"), "signed"),
    "elu": (_layer("ELU", "elu_param { alpha: 0.7 }"), "signed"),
    "elu_default": (_layer("ELU"), "signed"),
    "sigmoid": (_layer("Sigmoid"), "signed"),
    "tanh": (_layer("TanH"), "signed"),
    "sigmoid_tanh": (_layer("Sigmoid", top="s", name="s") + _layer("TanH", bottom="s"), "signed"),
    "absval": (_layer("AbsVal"), "signed"),
    "bnll": (_layer("BNLL"), "signed"),
    "power2": (_layer("Power", "power_param { power: 2 scale: 0.5 shift: 1.5 }"), "signed"),
    "power2_no_shift": (_layer("Power", "power_param { power: 2 scale: -0.7 }"), "signed"),
    "power3_no_shift": (_layer("Power", "power_param { power: 3 scale: 0.8 }"), "signed"),
    "power_frac": (_layer("Power", "power_param { power: 1.5 scale: 0.5 shift: 1.5 }"), "signed"),
    "power_frac_unit_scale": (_layer("Power", "power_param { power: -0.5 shift: 2.5 }"), "signed"),
    "power1": (_layer("Power", "power_param { power: 1 scale: 0.5 shift: 0.3 }"), "signed"),
    "power0": (_layer("Power", "power_param { power: 0 scale: 2 shift: 1 }"), "signed"),
    "power_scale0": (_layer("Power", "power_param { power: 2 scale: 0 shift: 3 }"), "signed"),
    "exp": (_layer("Exp", "exp_param { base: 3 scale: 0.5 shift: 0.1 }"), "signed"),
    "exp_e": (_layer("Exp"), "signed"),
    "exp_base2": (_layer("Exp", "exp_param { base: 2 }"), "signed"),
    "log": (_layer("Log", "log_param { base: 2 scale: 0.25 shift: 1 }"), "signed"),
    "log_e": (_layer("Log"), "positive"),
    "log_base10_scale": (_layer("Log", "log_param { base: 10 scale: 3 }"), "positive"),
    "swish": (_layer("Swish", "swish_param { beta: 0.5 }"), "signed"),
    "swish_default": (_layer("Swish"), "signed"),
    "clip": (_layer("Clip", "clip_param { min: -0.5 max: 0.7 }"), "clip"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_backward_is_the_derivative(case):
    layers, kind = CASES[case]
    x = _x(kind)
    spec, params = make_data_net(layers, x.shape)
    grads = check_all_gradients(spec, params, {"data": x}, "top")
    if case.startswith("prelu"):
        assert np.abs(grads[spec.layer("top").param_names[0]]).max() > 0  # the slope learns
    if case in ("power0", "power_scale0"):
        assert np.all(grads["data"] == 0)


def test_prelu_two_axis_bottom():
    # Channels are axis 1 whatever the number of axes; a 2-axis bottom has no spatial axes.
    x = _x(shape=(4, 3))
    spec, params = make_data_net(_layer("PReLU", 'prelu_param { filler { type: "uniform" min: 0.1 max: 0.4 } }'),
                                 x.shape)
    check_all_gradients(spec, params, {"data": x}, "top")


# In place, where Caffe's Backward still computes the derivative (it reads the top, or the sign of the
# bottom is that of the top, or the layer keeps a copy of its bottom as PReLU does).
IN_PLACE = {
    "relu": _layer("ReLU", top="data"),
    "relu_leaky": _layer("ReLU", "relu_param { negative_slope: 0.2 }", top="data"),
    "prelu": _layer("PReLU", 'prelu_param { filler { type: "uniform" min: -0.5 max: 0.5 } }', top="data"),
    "prelu_shared": _layer("PReLU", "prelu_param { channel_shared: true }", top="data"),
    "elu": _layer("ELU", "elu_param { alpha: 0.7 }", top="data"),
    "sigmoid": _layer("Sigmoid", top="data"),
    "tanh": _layer("TanH", top="data"),
    "exp": _layer("Exp", "exp_param { base: 3 scale: 0.5 shift: 0.1 }", top="data"),
    "swish": _layer("Swish", "swish_param { beta: 1.5 }", top="data"),
}


@pytest.mark.parametrize("case", list(IN_PLACE))
def test_in_place_backward_is_the_derivative(case):
    x = _x()
    spec, params = make_data_net(IN_PLACE[case], x.shape)
    check_all_gradients(spec, params, {spec.inputs[0]: x}, "data")  # the input value is data@in_data


def _in_place_diff(layer: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top data, top diff, bottom diff) of `layer` computed in place on `data`, for a random top diff."""
    spec, params = make_data_net(layer, x.shape)
    dy = np.random.default_rng(3).normal(size=x.shape).astype(np.float32)
    out, _, blob_diffs = net_backward(spec, params, {spec.inputs[0]: x}, {"data": dy})
    return out["data"].astype(np.float64), dy.astype(np.float64), blob_diffs["data"]


# In place, Caffe's Backward reads the bottom blob's data, which the Forward overwrote with the top:
# not the derivative, but what Caffe computes (y is the top data, dy the top diff).
CAFFE_IN_PLACE = {
    "relu_negative_slope": (_layer("ReLU", "relu_param { negative_slope: -0.5 }", top="data"),
                            lambda y, dy: dy * np.where(y > 0, 1.0, -0.5)),
    "bnll": (_layer("BNLL", top="data"), lambda y, dy: dy / (1 + np.exp(-y))),
    "power2": (_layer("Power", "power_param { power: 2 scale: 0.5 shift: 1.5 }", top="data"),
               lambda y, dy: dy * 2 * 0.5 * (1.5 + 0.5 * y)),
    "power3_no_shift": (_layer("Power", "power_param { power: 3 scale: 0.8 }", top="data"),
                        lambda y, dy: dy * 3 * y / y),
    "power_frac": (_layer("Power", "power_param { power: 1.5 scale: 0.5 shift: 1.5 }", top="data"),
                   lambda y, dy: dy * 1.5 * 0.5 * y / (1.5 + 0.5 * y)),
    "log": (_layer("Log", "log_param { base: 2 scale: 0.25 shift: 1 }", top="data"),
            lambda y, dy: dy * 0.25 / np.log(2) / (1 + 0.25 * y)),
    "clip": (_layer("Clip", "clip_param { min: -0.5 max: 0.7 }", top="data"), lambda y, dy: dy),
}


@pytest.mark.parametrize("case", list(CAFFE_IN_PLACE))
def test_in_place_backward_reads_the_top_as_caffe(case):
    layer, rule = CAFFE_IN_PLACE[case]
    y, dy, dx = _in_place_diff(layer, _x("clip"))
    np.testing.assert_allclose(dx, rule(y, dy), rtol=1e-5, atol=1e-6)


def test_backward_reads_top_data_after_later_in_place_layers():
    # Caffe's Sigmoid Backward reads its top blob's data when Net::Backward runs: after the in-place Power
    # rewrote it to 2 * sigmoid(x).
    x = _x()
    layers = _layer("Sigmoid", top="s", name="s") + _layer("Power", "power_param { scale: 2 }", bottom="s", top="s")
    spec, params = make_data_net(layers, x.shape)
    dy = np.random.default_rng(3).normal(size=x.shape).astype(np.float32)
    out, _, blob_diffs = net_backward(spec, params, {"data": x}, {"s": dy})
    y = out["s"].astype(np.float64)
    np.testing.assert_allclose(y, 2 / (1 + np.exp(-x.astype(np.float64))), rtol=1e-6)
    np.testing.assert_allclose(blob_diffs["data"], 2 * dy * y * (1 - y), rtol=1e-5, atol=1e-6)


def test_power_with_zero_diff_scale_ignores_the_top_diff():
    # PowerLayer::Backward_cpu fills the bottom diff with 0 when power * scale is 0, without reading the top
    # diff (so even an infinite top diff gives 0).
    x = _x()
    spec, params = make_data_net(_layer("Power", "power_param { power: 0 scale: 2 }"), x.shape)
    dy = np.full(x.shape, np.inf, np.float32)
    _, _, blob_diffs = net_backward(spec, params, {"data": x}, {"top": dy})
    assert np.all(blob_diffs["data"] == 0)


def test_threshold_has_no_backward():
    # ThresholdLayer's Backward is NOT_IMPLEMENTED: a net that needs its bottom diff is an error...
    layers = (_layer("PReLU", top="p", name="p") + _layer("Threshold", "threshold_param { threshold: -0.1 }",
                                                          bottom="p", name="t", top="t"))
    x = _x()
    spec, params = make_data_net(layers, x.shape)
    with pytest.raises(CaffeCompatError, match="'t' \\(Threshold\\).*no Backward"):
        net_backward(spec, params, {"data": x}, {"t": x})
    # ...unless propagate_down says no: the Threshold passes nothing back and the PReLU below still learns
    # from its other consumer, with no diff from the Threshold's path.
    layers = (_layer("PReLU", top="p", name="p")
              + _layer("Threshold", "threshold_param { threshold: -0.1 } propagate_down: false", bottom="p",
                       name="t", top="t")
              + 'layer { name: "prod" type: "Eltwise" bottom: "p" bottom: "t" top: "prod" '
                "eltwise_param { operation: PROD } }\n"
              + 'layer { name: "loss" type: "Reduction" bottom: "prod" top: "loss" loss_weight: 1 }\n')
    spec, params = make_data_net(layers, x.shape)
    _, param_diffs, blob_diffs = net_backward(spec, params, {"data": x}, force_backward=False)
    d = x.astype(np.float64)
    t = (np.where(d > 0, d, 0.25 * d) > -0.1).astype(np.float64)
    # d(sum p * t)/d slope with t held: the sum of t * min(x, 0) over all but the channel axis.
    np.testing.assert_allclose(param_diffs["p#0"], (t * np.minimum(d, 0)).sum(axis=(0, 2)), rtol=1e-5)
    assert np.all(blob_diffs["data"] == 0)  # the input needs no diff


def test_clip_passes_the_diff_at_both_bounds():
    # ClipLayer::Backward_cpu keeps the diff where min <= x <= max, the bounds included.
    x = np.array([[-0.6, -0.5, 0.0, 0.7, 0.8]], np.float32)
    spec, params = make_data_net(_layer("Clip", "clip_param { min: -0.5 max: 0.7 }"), x.shape)
    dy = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]], np.float32)
    _, _, blob_diffs = net_backward(spec, params, {"data": x}, {"top": dy})
    np.testing.assert_array_equal(blob_diffs["data"], [[0.0, 2.0, 3.0, 4.0, 0.0]])
