"""Caffe's weight fillers (FillerParameter.type), drawing from one numpy Generator.

Random fillers cannot reproduce Caffe's own random stream; they reproduce its
distributions and its fan-in/fan-out rules exactly.
"""

from __future__ import annotations

import math

import numpy as np

from caffecompat.errors import CaffeCompatError, NotSupportedError
from caffecompat.proto import caffe_pb2

VarianceNorm = caffe_pb2.FillerParameter


def _fan_n(filler: caffe_pb2.FillerParameter, shape: tuple[int, ...]) -> float:
    # Xavier/MSRA fillers: fan_in = count / shape[0], fan_out = count / shape[1].
    count = int(np.prod(shape))
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


def fill(filler: caffe_pb2.FillerParameter, shape: tuple[int, ...], rng: np.random.Generator,
         where: str = "filler") -> np.ndarray:
    """A new float32 array of `shape` filled as Caffe's filler of `filler.type` would fill it."""
    shape = tuple(int(d) for d in shape)
    kind = filler.type
    if int(np.prod(shape)) == 0:
        raise CaffeCompatError(f"{where}: cannot fill an empty blob of shape {list(shape)}")
    if kind == "constant":
        _no_sparse(filler, where)
        return np.full(shape, filler.value, dtype=np.float32)
    if kind == "uniform":
        _no_sparse(filler, where)
        return rng.uniform(filler.min, filler.max, size=shape).astype(np.float32)
    if kind == "gaussian":
        data = rng.normal(filler.mean, filler.std, size=shape).astype(np.float32)
        # GaussianFiller with sparse >= 0: keep each weight with probability sparse / shape[0].
        if filler.sparse >= 0:
            keep = rng.random(size=shape) < filler.sparse / shape[0]
            data *= keep
        elif filler.sparse < -1:
            raise CaffeCompatError(f"{where}: gaussian filler `sparse` must be >= -1, got {filler.sparse}")
        return data
    if kind == "positive_unitball":
        _no_sparse(filler, where)
        # PositiveUnitballFiller: uniform [0, 1], each of the shape[0] rows scaled to sum to 1.
        rows = shape[0] if shape else 1
        data = rng.uniform(0.0, 1.0, size=(rows, int(np.prod(shape)) // rows)).astype(np.float32)
        data /= data.sum(axis=1, keepdims=True)
        return data.reshape(shape)
    if kind == "xavier":
        _no_sparse(filler, where)
        scale = math.sqrt(3.0 / _fan_n(filler, shape))
        return rng.uniform(-scale, scale, size=shape).astype(np.float32)
    if kind == "msra":
        _no_sparse(filler, where)
        std = math.sqrt(2.0 / _fan_n(filler, shape))
        return rng.normal(0.0, std, size=shape).astype(np.float32)
    if kind == "bilinear":
        _no_sparse(filler, where)
        return _bilinear(shape, where)
    raise NotSupportedError(f"filler type '{kind}' ({where}); Caffe's fillers are constant, uniform, "
                            "gaussian, positive_unitball, xavier, msra and bilinear")
