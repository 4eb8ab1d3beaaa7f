"""Caffe's fillers: distributions and fan-in/fan-out rules (hand-computed expectations from filler.hpp)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from caffecompat.errors import CaffeCompatError, NotSupportedError
from caffecompat.net.fillers import fill
from caffecompat.proto import caffe_pb2

RNG = np.random.default_rng(7)


def _filler(**fields) -> caffe_pb2.FillerParameter:
    return caffe_pb2.FillerParameter(**fields)


def test_constant_is_its_value():
    out = fill(_filler(type="constant", value=0.25), (3, 2), RNG)
    assert out.dtype == np.float32 and (out == 0.25).all()


def test_default_filler_is_constant_zero():
    assert (fill(caffe_pb2.FillerParameter(), (4,), RNG) == 0).all()


def test_uniform_within_bounds():
    out = fill(_filler(type="uniform", min=-0.5, max=2.0), (200, 50), RNG)
    assert out.min() >= -0.5 and out.max() <= 2.0
    assert abs(out.mean() - 0.75) < 0.05


def test_gaussian_mean_and_std():
    out = fill(_filler(type="gaussian", mean=1.0, std=0.1), (300, 100), RNG)
    assert abs(out.mean() - 1.0) < 0.01 and abs(out.std() - 0.1) < 0.01


def test_gaussian_sparse_keeps_sparse_over_num_outputs():
    # GaussianFiller: with sparse = 5 and 20 outputs each weight survives with probability 5/20.
    out = fill(_filler(type="gaussian", std=1.0, sparse=5), (20, 5000), RNG)
    assert abs((out != 0).mean() - 0.25) < 0.01


def test_positive_unitball_rows_sum_to_one():
    out = fill(_filler(type="positive_unitball"), (6, 3, 2, 2), RNG)
    assert (out >= 0).all()
    np.testing.assert_allclose(out.reshape(6, -1).sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize(("norm", "n"), [("FAN_IN", 3 * 5 * 5), ("FAN_OUT", 64 * 5 * 5),
                                         ("AVERAGE", (3 * 5 * 5 + 64 * 5 * 5) / 2)])
def test_xavier_scale_uses_fan(norm, n):
    # XavierFiller: uniform(-sqrt(3/n), sqrt(3/n)); fan_in = count/shape[0], fan_out = count/shape[1].
    filler = _filler(type="xavier", variance_norm=getattr(caffe_pb2.FillerParameter, norm))
    out = fill(filler, (64, 3, 5, 5), RNG)
    scale = math.sqrt(3.0 / n)
    assert np.abs(out).max() <= scale
    assert np.abs(out).max() > 0.95 * scale


def test_msra_std_uses_fan_in():
    out = fill(_filler(type="msra"), (256, 128, 3, 3), RNG)
    assert abs(out.std() - math.sqrt(2.0 / (128 * 9))) < 0.002


def test_bilinear_kernel_for_upsampling_by_two():
    # BilinearFiller, kernel 4 (factor 2): f = 2, c = 0.75, weights (1 - |x/f - c|) per axis.
    out = fill(_filler(type="bilinear"), (2, 1, 4, 4), RNG)
    ramp = np.array([0.25, 0.75, 0.75, 0.25], np.float32)
    np.testing.assert_allclose(out[0, 0], np.outer(ramp, ramp))
    np.testing.assert_allclose(out[1, 0], out[0, 0])


def test_sparse_only_for_gaussian():
    with pytest.raises(CaffeCompatError, match="sparse"):
        fill(_filler(type="xavier", sparse=3), (4, 4), RNG)


def test_unknown_filler_is_not_supported():
    with pytest.raises(NotSupportedError, match="filler type 'orthogonal'"):
        fill(_filler(type="orthogonal"), (4, 4), RNG)
