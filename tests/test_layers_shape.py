"""Shape layers: Concat, Slice, Flatten, Reshape, Crop, Tile, Silence (shapes, forward, Backward, errors)."""

from __future__ import annotations

import numpy as np
import pytest

from caffecompat.errors import CaffeCompatError
from caffecompat.proto import caffe_pb2
from tests.gradients import check_layer_gradients, net_backward
from tests.layer_nets import (
    check_all_gradients,
    forward,
    layer_blobs,
    make_data_net,
    make_net,
    opencv_forward,
    random_params,
    relative_error,
)

SHAPE = (2, 3, 6, 5)

NET = """
layer { name: "ab" type: "Slice" bottom: "data" top: "a" top: "b" slice_param { slice_point: 1 } }
layer { name: "c" type: "Concat" bottom: "b" bottom: "a" top: "c" concat_param { axis: 1 } }
layer { name: "pq" type: "Slice" bottom: "c" top: "p" top: "q" slice_param { axis: -1 slice_point: 3 } }
layer { name: "cr" type: "Crop" bottom: "c" bottom: "p" top: "cr" crop_param { axis: 2 offset: 0 offset: 2 } }
layer { name: "flat" type: "Flatten" bottom: "cr" top: "flat" flatten_param { axis: 1 end_axis: 2 } }
layer { name: "resh" type: "Reshape" bottom: "flat" top: "resh" reshape_param { shape { dim: 0 dim: -1 dim: 9 } } }
layer { name: "s" type: "Silence" bottom: "q" }
"""


def _x(shape=SHAPE, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_shapes_and_forward_against_numpy():
    spec, params = make_data_net(NET, SHAPE)
    shapes = {b: spec.shapes[spec.blob_values[b]] for b in ["a", "b", "c", "p", "q", "cr", "flat", "resh"]}
    assert shapes == {"a": (2, 1, 6, 5), "b": (2, 2, 6, 5), "c": (2, 3, 6, 5), "p": (2, 3, 6, 3),
                      "q": (2, 3, 6, 2), "cr": (2, 3, 6, 3), "flat": (2, 18, 3), "resh": (2, 6, 9)}
    assert spec.outputs == ["resh"]  # Silence consumed q
    x = _x()
    out = forward(spec, params, {"data": x}, ["a", "b", "c", "q", "cr", "resh"])
    c = np.concatenate([x[:, 1:], x[:, :1]], axis=1)
    np.testing.assert_array_equal(out["c"], c)
    np.testing.assert_array_equal(out["q"], c[..., 3:])
    np.testing.assert_array_equal(out["cr"], c[..., 2:5])
    np.testing.assert_array_equal(out["resh"], c[..., 2:5].reshape(2, 6, 9))


def test_forward_matches_opencv(tmp_path):
    spec, params = make_data_net(NET, SHAPE)
    x = _x()
    blobs = ["c", "cr", "flat", "resh"]
    ours = forward(spec, params, {"data": x}, blobs)
    theirs = dict(zip(blobs, opencv_forward(tmp_path, NET, {"data": SHAPE}, layer_blobs(spec, params), {"data": x},
                                            blobs)))
    for b in blobs:
        assert ours[b].shape == theirs[b].shape and relative_error(ours[b], theirs[b]) < 1e-4, b


def test_legacy_dims_equal_split_tile_and_crop_single_offset():
    net = """
layer { name: "sl" type: "Slice" bottom: "data" top: "s0" top: "s1" top: "s2" slice_param { slice_dim: 2 } }
layer { name: "cat" type: "Concat" bottom: "s2" bottom: "s0" top: "cat" concat_param { concat_dim: 0 } }
layer { name: "tile" type: "Tile" bottom: "s1" top: "tile" tile_param { axis: 1 tiles: 3 } }
layer { name: "sl3" type: "Slice" bottom: "s1" top: "r0" top: "r1" slice_param { axis: 3 slice_point: 4 } }
layer { name: "crop" type: "Crop" bottom: "data" bottom: "r0" top: "crop" crop_param { axis: 2 offset: 1 } }
layer { name: "r2" type: "Reshape" bottom: "tile" top: "r2" reshape_param { axis: 1 num_axes: 2 shape { dim: -1 } } }
"""
    spec, params = make_data_net(net, SHAPE)
    x = _x()
    out = forward(spec, params, {"data": x}, ["s0", "s2", "cat", "tile", "crop", "r2"])
    np.testing.assert_array_equal(out["s2"], x[:, :, 4:])
    np.testing.assert_array_equal(out["cat"], np.concatenate([x[:, :, 4:], x[:, :, :2]], axis=0))
    np.testing.assert_array_equal(out["tile"], np.tile(x[:, :, 2:4], (1, 3, 1, 1)))
    # One offset serves every cropped axis: rows 1..2, columns 1..4.
    np.testing.assert_array_equal(out["crop"], x[:, :, 1:3, 1:5])
    assert out["r2"].shape == (2, 18, 5)


def test_gradients_through_slice_concat_crop_tile():
    net = """
layer { name: "ab" type: "Slice" bottom: "data" top: "a" top: "b" slice_param { axis: 2 slice_point: 1 } }
layer { name: "t" type: "Tile" bottom: "a" top: "t" tile_param { axis: 2 tiles: 2 } }
layer { name: "c" type: "Concat" bottom: "b" bottom: "t" top: "c" concat_param { axis: 2 } }
layer { name: "top" type: "Crop" bottom: "c" bottom: "b" top: "top" crop_param { axis: 2 offset: 1 offset: 0 } }
"""
    spec, params = make_data_net(net, (2, 2, 3, 3))
    grads = check_all_gradients(spec, params, {"data": _x((2, 2, 3, 3))}, "top")
    assert grads["data"].shape == (2, 2, 3, 3)


def _grad_check(layers: str, inputs: dict[str, tuple[int, ...]], tops: list[str]) -> dict[str, np.ndarray]:
    """Our Backward of sum(top * R) over `tops` against central differences, w.r.t. every input."""
    spec = make_net(layers, inputs, caffe_pb2.TRAIN)
    feeds = {n: _x(s, seed=i) for i, (n, s) in enumerate(inputs.items())}
    return check_layer_gradients(spec, {}, feeds, tops)


@pytest.mark.parametrize("param, shapes", [
    ("axis: 1", [(2, 1, 3), (2, 3, 3), (2, 2, 3)]),
    ("axis: -1", [(2, 3, 1), (2, 3, 2)]),
    ("concat_dim: 0", [(1, 2, 2), (3, 2, 2)]),
    ("axis: 2", [(2, 3, 2)]),  # one bottom: its diff is the top's
])
def test_concat_backward(param, shapes):
    names = [f"x{i}" for i in range(len(shapes))]
    bottoms = " ".join(f'bottom: "{n}"' for n in names)
    grads = _grad_check(f'layer {{ name: "c" type: "Concat" {bottoms} top: "c" concat_param {{ {param} }} }}',
                        dict(zip(names, shapes)), ["c"])
    assert [grads[n].shape for n in names] == shapes


@pytest.mark.parametrize("param, tops", [
    ("axis: 1 slice_point: 1 slice_point: 3", 3),
    ("axis: -1", 2),
    ("slice_dim: 0 slice_point: 2", 2),
    ("axis: 2", 1),  # one top: its diff is the bottom's
])
def test_slice_backward(param, tops):
    names = " ".join(f'top: "s{i}"' for i in range(tops))
    _grad_check(f'layer {{ name: "s" type: "Slice" bottom: "x" {names} slice_param {{ {param} }} }}',
                {"x": (3, 4, 2, 4)}, [f"s{i}" for i in range(tops)])


@pytest.mark.parametrize("layer", [
    'type: "Flatten"',
    'type: "Flatten" flatten_param { axis: 2 end_axis: -1 }',
    'type: "Flatten" flatten_param { axis: 0 end_axis: 1 }',
    'type: "Reshape" reshape_param { shape { dim: 0 dim: -1 dim: 2 } }',
    'type: "Reshape" reshape_param { axis: 1 num_axes: 2 shape { dim: 6 dim: 1 } }',
])
def test_flatten_reshape_backward(layer):
    grads = _grad_check(f'layer {{ name: "r" {layer} bottom: "x" top: "r" }}', {"x": (2, 3, 2, 2)}, ["r"])
    assert grads["x"].shape == (2, 3, 2, 2)


@pytest.mark.parametrize("param, ref", [
    ("axis: 2 offset: 1", (1, 1, 2, 3)),
    ("axis: 1 offset: 0 offset: 1 offset: 2", (1, 2, 3, 2)),
    ("axis: -1", (1, 1, 1, 3)),
    ("axis: 0", (2, 3, 4, 5)),  # nothing cropped
])
def test_crop_backward(param, ref):
    layers = f'layer {{ name: "c" type: "Crop" bottom: "x" bottom: "r" top: "c" crop_param {{ {param} }} }}'
    grads = _grad_check(layers, {"x": (2, 3, 4, 5), "r": ref}, ["c"])
    # CropLayer writes no diff to the reference bottom, even under force_backward.
    assert not grads["r"].any()


@pytest.mark.parametrize("param", ["axis: 1 tiles: 3", "axis: 0 tiles: 2", "axis: -1 tiles: 4", "axis: 2 tiles: 1"])
def test_tile_backward(param):
    _grad_check(f'layer {{ name: "t" type: "Tile" bottom: "x" top: "t" tile_param {{ {param} }} }}',
                {"x": (2, 3, 2)}, ["t"])


def test_tile_backward_sums_the_copies():
    spec = make_net('layer { name: "t" type: "Tile" bottom: "x" top: "t" tile_param { axis: 1 tiles: 3 } }',
                    {"x": (2, 2, 3)}, caffe_pb2.TRAIN)
    dy = _x((2, 6, 3), seed=3)
    _, _, diffs = net_backward(spec, {}, {"x": _x((2, 2, 3))}, {"t": dy})
    np.testing.assert_allclose(diffs["x"], dy.reshape(2, 3, 2, 3).sum(axis=1), rtol=1e-6)


def test_silence_backward_gives_zero_diffs():
    layers = """
layer { name: "ab" type: "Slice" bottom: "x" top: "a" top: "b" slice_param { axis: 1 } }
layer { name: "s" type: "Silence" bottom: "b" bottom: "y" }
"""
    grads = _grad_check(layers, {"x": (2, 4, 3), "y": (3,)}, ["a"])
    assert not grads["x"][:, 2:].any() and not grads["y"].any() and grads["x"][:, :2].all()


def propagate_down_diffs(layer: str, shapes: list[tuple[int, ...]], propagate: list[bool]) -> list[np.ndarray]:
    """Blob diffs of the bottoms of `layer` (bottoms b0, b1, ...; top "t") under the given propagate_down,
    without force_backward: each bottom comes from an InnerProduct (so it needs a diff), the loss is 2 * sum(t)."""
    ips = "".join(f'layer {{ name: "ip{i}" type: "InnerProduct" bottom: "x" top: "b{i}" inner_product_param {{ '
                  f'num_output: {int(np.prod(s))} weight_filler {{ type: "gaussian" }} }} }}\n'
                  f'layer {{ name: "r{i}" type: "Reshape" bottom: "b{i}" top: "rb{i}" reshape_param {{ shape {{ '
                  + " ".join(f"dim: {d}" for d in s) + " } } }\n" for i, s in enumerate(shapes))
    bottoms = " ".join(f'bottom: "rb{i}"' for i in range(len(shapes)))
    flags = " ".join(f"propagate_down: {str(p).lower()}" for p in propagate)
    net = (ips + f'layer {{ name: "l" {layer} {bottoms} top: "t" {flags} }}\n'
           'layer { name: "loss" type: "Reduction" bottom: "t" top: "loss" loss_weight: 2 }')
    spec = make_net(net, {"x": (1, 2)}, caffe_pb2.TRAIN)
    params = {k: _x(v.shape, seed=4 + i) for i, (k, v) in enumerate(random_params(spec).items())}
    _, _, diffs = net_backward(spec, params, {"x": _x((1, 2))}, force_backward=False)
    return [diffs[f"rb{i}"] for i in range(len(shapes))]


def test_concat_propagate_down_false_leaves_a_zero_diff():
    dx, dy = propagate_down_diffs('type: "Concat"', [(2, 3), (2, 2)], [False, True])
    assert not dx.any()
    np.testing.assert_array_equal(dy, np.full((2, 2), 2, np.float32))


@pytest.mark.parametrize("layer, message", [
    ('layer { name: "r" type: "Reshape" bottom: "data" top: "r" reshape_param { shape { dim: -1 dim: -1 } } }',
     "more than one -1"),
    ('layer { name: "r" type: "Reshape" bottom: "data" top: "r" reshape_param { shape { dim: 7 dim: -1 } } }',
     "divisible"),
    ('layer { name: "r" type: "Reshape" bottom: "data" top: "data" reshape_param { shape { dim: -1 } } }',
     "in-place"),
    ('layer { name: "s" type: "Slice" bottom: "data" top: "x" top: "y" slice_param { axis: 3 } }', "evenly"),
    ('layer { name: "s" type: "Slice" bottom: "data" top: "x" top: "y" slice_param { slice_point: 1 '
     'slice_point: 2 } }', "slice_point"),
    ('layer { name: "c" type: "Crop" bottom: "data" bottom: "data" top: "c" crop_param { offset: 1 } }',
     "out of bounds"),
    ('layer { name: "t" type: "Tile" bottom: "data" top: "t" }', "tiles"),
    ('layer { name: "f" type: "Flatten" bottom: "data" top: "f" flatten_param { axis: 4 } }', "out of range"),
])
def test_errors_name_the_layer(layer, message):
    with pytest.raises(CaffeCompatError, match=message):
        make_data_net(layer, SHAPE)
