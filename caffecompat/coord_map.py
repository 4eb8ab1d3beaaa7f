"""pycaffe's caffe.coord_map: how coordinates of one NetSpec top relate to another's, and `crop` from it.

A coordinate map is a triple (axis, scale, shift): a position x in a layer's
input lands at x * scale + shift in its output. axis is the first spatial
axis the map applies to (None for pointwise layers, which map every axis
alike); scale and shift are numpy arrays of one value or one per spatial
axis. FCN-style nets written with NetSpec use `crop(score, data)` to add the
Crop layer that aligns an upsampled score map with the input image.

    from caffecompat.coord_map import crop
    n.score = crop(n.upscore, n.data)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from caffecompat.net_spec import Function, Top, layers

CoordMap = tuple[Any, Any, Any]

# Caffe's coord_map.PASS_THROUGH_LAYERS: layers whose output pixel i comes from input pixel i.
PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log", "LRN", "Exp",
                       "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split", "TanH", "Threshold"]

_IDENTITY: CoordMap = (None, 1, 0)


class UndefinedMapException(Exception):
    """A layer type with no coordinate mapping (e.g. InnerProduct): the walk stops there."""


class AxisMismatchException(Exception):
    """Two maps that apply to different axes cannot be composed."""


def conv_params(fn: Function) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(axis, stride, effective kernel extent, pad) of a Convolution/Deconvolution/Im2col/Pooling call.

    The fields are read from `convolution_param=dict(...)` when given so, else from the call's own fields
    (Pooling's, or convolution fields passed flat)."""
    fields = fn.params.get("convolution_param", fn.params)
    legacy = {"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"} & set(fn.params)
    # Caffe's coord_map.conv_params: the per-axis _h/_w fields are refused.
    assert not legacy, "cropping does not support legacy _h/_w params"
    kernel = np.array(fields["kernel_size"], ndmin=1)
    dilation = np.array(fields.get("dilation", 1), ndmin=1)
    return (fields.get("axis", 1), np.array(fields.get("stride", 1), ndmin=1), (kernel - 1) * dilation + 1,
            np.array(fields.get("pad", 0), ndmin=1))


def crop_params(fn: Function) -> tuple[int, np.ndarray]:
    """(axis, offset) of a Crop call, with CropParameter's defaults (axis 2, offset 0)."""
    fields = fn.params.get("crop_param", fn.params)
    return fields.get("axis", 2), np.array(fields.get("offset", 0), ndmin=1)


def coord_map(fn: Function) -> CoordMap:
    """The (axis, scale, shift) map from `fn`'s input coordinates to its output coordinates."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, extent, pad = conv_params(fn)
        # Output pixel j covers input [j*stride - pad, j*stride - pad + extent): its centre is the image.
        return axis, 1 / stride, (pad - (extent - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, extent, pad = conv_params(fn)
        return axis, stride, (extent - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return _IDENTITY
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        # Caffe's coord_map: a Crop's axis counts from N, the map's from the last non-spatial axis.
        return axis - 1, 1, -offset
    raise UndefinedMapException(f"no coordinate mapping for layer type {fn.type_name}")


def compose(base_map: CoordMap, next_map: CoordMap) -> CoordMap:
    """`base_map` then `next_map`: scales multiply, next's shift is scaled by base's scale and added."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is not None and ax2 is not None and ax1 != ax2:
        raise AxisMismatchException(f"cannot compose a map on axis {ax1} with one on axis {ax2}")
    return (ax2 if ax1 is None else ax1), a1 * a2, a1 * b2 + b1


def inverse(cmap: CoordMap) -> CoordMap:
    """The map that undoes `cmap` (output coordinates back to input coordinates)."""
    ax, a, b = cmap
    return ax, 1 / a, -b / a


def _mapped_bottoms(top: Top) -> tuple[Top, ...]:
    # Caffe's coord_map: a Crop's second bottom only gives the size, so the walk follows the first only.
    return top.fn.inputs[:1] if top.fn.type_name == "Crop" else top.fn.inputs


def _ancestor_maps(start: Top, stop_at: dict | None = None) -> tuple[dict, CoordMap | None]:
    """Maps from every ancestor of `start` reachable through mappable layers; with `stop_at`, the composed map
    at the first ancestor found in it."""
    maps: dict = {start: _IDENTITY}
    frontier = [start]
    while frontier:
        top = frontier.pop()
        if stop_at is not None and top in stop_at:
            return maps, compose(maps[top], inverse(stop_at[top]))
        try:
            step = coord_map(top.fn)
        except UndefinedMapException:
            continue
        for bottom in _mapped_bottoms(top):
            maps[bottom] = compose(maps[top], step)
            frontier.append(bottom)
    return maps, None


def coord_map_from_to(top_from: Top, top_to: Top) -> CoordMap:
    """The map from `top_from`'s coordinates to `top_to`'s, through their nearest common ancestor."""
    from_maps, _ = _ancestor_maps(top_from)
    _, found = _ancestor_maps(top_to, stop_at=from_maps)
    if found is None:
        raise RuntimeError("Could not compute map between tops; are they connected by spatial layers?")
    return found


def crop(top_from: Top, top_to: Top) -> Top:
    """A Crop layer cutting `top_from` to `top_to`'s size at the offset that aligns their coordinates."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    # Caffe's coord_map.crop: only a pure, non-negative integer shift can be cropped.
    assert (np.asarray(a) == 1).all(), f"scale mismatch on crop (a = {a})"
    assert (np.asarray(b) <= 0).all(), f"cannot crop negative offset (b = {b})"
    assert (np.round(b) == b).all(), f"cannot crop noninteger offset (b = {b})"
    offset = [int(v) for v in -np.round(np.asarray(b, dtype=float)).astype(int).ravel()]
    return layers.Crop(top_from, top_to, crop_param=dict(axis=ax + 1, offset=offset))
