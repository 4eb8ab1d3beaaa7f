"""Caffe's weight fillers (FillerParameter.type), drawing from one numpy Generator.

Random fillers cannot reproduce Caffe's own random stream; they reproduce its
distributions, its fan-in/fan-out rules and its checks on the parameters exactly.
Values are drawn in float32, in place, so filling needs no memory beyond the blob.
"""

from __future__ import annotations

import math

import numpy as np

from caffecompat.errors import CaffeCompatError, NotSupportedError
from caffecompat.proto import caffe_pb2

VarianceNorm = caffe_pb2.FillerParameter


def _fan_n(filler: caffe_pb2.FillerParameter, shape: tuple[int, ...]) -> float:
    # Xavier/MSRA fillers: fan_in = count / shape[0], fan_out = count / shape[1].
    count = math.prod(shape)
    fan_in = count // shape[0]
    fan_out = count // shape[1] if len(shape) > 1 else count
    if filler.variance_norm == VarianceNorm.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if filler.variance_norm == VarianceNorm.FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def _no_sparse(filler: caffe_pb2.FillerParameter, where: str) -> None:
    # Only the gaussian filler supports `sparse`; Caffe aborts for the others.
    if filler.sparse != -1:
        raise CaffeCompatError(f"{where}: filler '{filler.type}' does not support `sparse` "
                               "(only gaussian does); remove the field")


def _bilinear(shape: tuple[int, ...], where: str) -> np.ndarray:
    # BilinearFiller: 4-D, square kernel; f = ceil(K/2), c = (2f - 1 - f%2) / (2f).
    if len(shape) != 4 or shape[2] != shape[3]:
        raise CaffeCompatError(f"{where}: the bilinear filler needs a 4-D blob with a square kernel, "
                               f"got shape {list(shape)}")
    k = shape[3]
    f = math.ceil(k / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    ramp = 1 - np.abs(np.arange(k) / f - c)
    return np.broadcast_to(np.outer(ramp, ramp), shape).astype(np.float32)


def _uniform(rng: np.random.Generator, low: float, high: float, shape: tuple[int, ...]) -> np.ndarray:
    # Drawn in float32 in place: no float64 copy of the blob (a 900 MB net would need 1.8 GB more).
    data = rng.random(size=shape, dtype=np.float32)
    data *= np.float32(high - low)
    data += np.float32(low)
    return data


def _gaussian(rng: np.random.Generator, mean: float, std: float, shape: tuple[int, ...]) -> np.ndarray:
    data = rng.standard_normal(size=shape, dtype=np.float32)
    data *= np.float32(std)
    data += np.float32(mean)
    return data


def _finite(filler: caffe_pb2.FillerParameter, where: str, *fields: str) -> None:
    for name in fields:
        if not math.isfinite(getattr(filler, name)):
            raise CaffeCompatError(f"{where}: filler '{filler.type}' {name} is {getattr(filler, name)}; "
                                   "give a finite number")


def fill(filler: caffe_pb2.FillerParameter, shape: tuple[int, ...], rng: np.random.Generator,
         where: str = "filler") -> np.ndarray:
    """A new float32 array of `shape` filled as Caffe's filler of `filler.type` would fill it."""
    shape = tuple(int(d) for d in shape)
    kind = filler.type
    if math.prod(shape) == 0:
        raise CaffeCompatError(f"{where}: cannot fill an empty blob of shape {list(shape)}")
    if kind == "constant":
        _no_sparse(filler, where)
        return np.full(shape, filler.value, dtype=np.float32)
    if kind == "uniform":
        _no_sparse(filler, where)
        _finite(filler, where, "min", "max")
        # caffe_rng_uniform: CHECK_LE(a, b).
        if filler.min > filler.max:
            raise CaffeCompatError(f"{where}: uniform filler min {filler.min:g} is greater than max "
                                   f"{filler.max:g}; swap them")
        return _uniform(rng, filler.min, filler.max, shape)
    if kind == "gaussian":
        _finite(filler, where, "mean", "std")
        # caffe_rng_gaussian: CHECK_GT(sigma, 0).
        if not filler.std > 0:
            raise CaffeCompatError(f"{where}: gaussian filler std is {filler.std:g}; it must be greater than 0 "
                                   "(for all-equal values use a constant filler)")
        if filler.sparse < -1:
            raise CaffeCompatError(f"{where}: gaussian filler `sparse` must be >= -1, got {filler.sparse}")
        # caffe_rng_bernoulli: CHECK_LE(p, 1) for p = sparse / shape[0].
        if filler.sparse >= 0 and filler.sparse > shape[0]:
            raise CaffeCompatError(f"{where}: gaussian filler `sparse` {filler.sparse} is more than the blob's "
                                   f"{shape[0]} outputs; give at most {shape[0]}")
        data = _gaussian(rng, filler.mean, filler.std, shape)
        # GaussianFiller with sparse >= 0: keep each weight with probability sparse / shape[0].
        if filler.sparse >= 0:
            data *= rng.random(size=shape, dtype=np.float32) < np.float32(filler.sparse / shape[0])
        return data
    if kind == "positive_unitball":
        _no_sparse(filler, where)
        # PositiveUnitballFiller: uniform [0, 1], each of the shape[0] rows scaled to sum to 1.
        rows = shape[0] if shape else 1
        data = _uniform(rng, 0.0, 1.0, (rows, math.prod(shape) // rows))
        data /= data.sum(axis=1, keepdims=True)
        return data.reshape(shape)
    if kind == "xavier":
        _no_sparse(filler, where)
        scale = math.sqrt(3.0 / _fan_n(filler, shape))
        return _uniform(rng, -scale, scale, shape)
    if kind == "msra":
        _no_sparse(filler, where)
        std = math.sqrt(2.0 / _fan_n(filler, shape))
        return _gaussian(rng, 0.0, std, shape)
    if kind == "bilinear":
        _no_sparse(filler, where)
        return _bilinear(shape, where)
    raise NotSupportedError(f"filler type '{kind}' ({where}); Caffe's fillers are constant, uniform, "
                            "gaussian, positive_unitball, xavier, msra and bilinear")
