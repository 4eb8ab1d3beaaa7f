"""Convolution, Deconvolution and Pooling Backward (central differences, Caffe's loops) and Pooling's round_mode."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest

from caffecompat.errors import CaffeCompatError
from caffecompat.proto import caffe_pb2
from tests.gradients import check_layer_gradients, net_backward
from tests.layer_nets import forward, make_net, opencv_forward, random_params, relative_error


def _normal(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _distinct(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Values 0.05 apart in random order: no max pooling tie within a finite-difference step (1e-2)."""
    values = np.random.default_rng(seed).permutation(int(np.prod(shape))) * 0.05
    return values.reshape(shape).astype(np.float32)


def _layer(kind: str, param: str, bottoms: tuple[str, ...] = ("x",), tops: tuple[str, ...] = ("y",),
           extra: str = "") -> str:
    field = "pooling_param" if kind == "Pooling" else "convolution_param"
    links = " ".join(f'bottom: "{b}"' for b in bottoms) + " " + " ".join(f'top: "{t}"' for t in tops)
    return f'layer {{ name: "l" type: "{kind}" {links} {field} {{ {param} }} {extra} }}'


# Every geometry BaseConvolutionLayer takes, each through the backward formulation conv.py picks for it.
CONV_CASES = {
    # 3x3 pad 1 with bias: im2col weight diff, ConvTranspose bottom diff.
    "plain": ("num_output: 4 kernel_size: 3 pad: 1", (2, 6, 6, 5)),
    # Strided with 3 input channels per group: the weight diff as a Conv over the batch.
    "stride_group_nobias": ("num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 2 bias_term: false", (2, 6, 7, 7)),
    # Strided with 6 input channels per group: im2col with strided slices.
    "stride_im2col": ("num_output: 3 kernel_size: 3 stride: 2", (2, 6, 7, 8)),
    "dilation": ("num_output: 4 kernel_size: 3 dilation: 2 pad: 2", (2, 3, 7, 7)),
    "dilation_stride_group": ("num_output: 4 kernel_size: 2 stride: 2 dilation: 2 pad: 1 group: 2", (2, 4, 8, 7)),
    "rect": ("num_output: 3 kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 0 pad_w: 1", (2, 4, 6, 7)),
    # Pointwise: the bottom diff as a Conv by the transposed weights.
    "pointwise_group": ("num_output: 4 kernel_size: 1 group: 2", (2, 6, 3, 4)),
    # Floor rounding leaves the last row and column out of every window: their diff is zero.
    "floor_rows": ("num_output: 3 kernel_size: 2 stride: 3", (2, 5, 9, 9)),
    "pad_beyond_kernel": ("num_output: 2 kernel_size: 2 pad: 3", (2, 3, 4, 4)),
    "1d_strided": ("num_output: 4 kernel_size: 3 stride: 2 pad: 1", (2, 3, 11)),
    "1d": ("num_output: 4 kernel_size: 3 dilation: 2 group: 2", (2, 6, 10)),
    "3d": ("num_output: 3 kernel_size: 2 stride: 1 stride: 2 stride: 1 pad: 1 pad: 0 pad: 1", (2, 5, 4, 5, 3)),
    "3d_strided": ("num_output: 3 kernel_size: 2 stride: 2 dilation: 1 dilation: 2 dilation: 1 pad: 1",
                   (2, 2, 5, 5, 4)),
}

DECONV_CASES = {
    "plain": ("num_output: 4 kernel_size: 3 pad: 1", (2, 6, 5, 4)),
    "stride_group": ("num_output: 4 kernel_size: 4 stride: 2 pad: 1 group: 2", (2, 6, 4, 3)),
    "stride_wide_nobias": ("num_output: 10 kernel_size: 3 stride: 2 bias_term: false", (2, 3, 3, 4)),
    "dilation_rect": ("num_output: 3 kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 0 pad_w: 1 dilation: 2",
                      (2, 4, 4, 4)),
    "pointwise": ("num_output: 5 kernel_size: 1", (2, 3, 3, 3)),
    "1d": ("num_output: 2 kernel_size: 3 stride: 3", (2, 3, 5)),
    "3d": ("num_output: 3 kernel_size: 2 stride: 2 group: 3", (2, 3, 2, 3, 2)),
}


def _check_conv(kind: str, param: str, shape: tuple[int, ...]) -> None:
    spec = make_net(_layer(kind, param), {"x": shape})
    params = {k: v - 1.0 for k, v in random_params(spec).items()}
    check_layer_gradients(spec, params, {"x": _normal(shape)}, samples=10)


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_convolution_gradients(case):
    _check_conv("Convolution", *CONV_CASES[case])


@pytest.mark.parametrize("case", list(DECONV_CASES))
def test_deconvolution_gradients(case):
    _check_conv("Deconvolution", *DECONV_CASES[case])


@pytest.mark.parametrize("kind", ["Convolution", "Deconvolution"])
def test_pairs_sharing_weights_add_their_diffs(kind):
    # BaseConvolutionLayer with several bottom/top pairs: one weight blob, its diff summed over the pairs.
    param = "num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 2"
    shape = (2, 4, 5, 5)
    spec = make_net(_layer(kind, param, ("a", "b"), ("ya", "yb")), {"a": shape, "b": shape})
    params = random_params(spec)
    feeds = {"a": _normal(shape, 1), "b": _normal(shape, 2)}
    both = check_layer_gradients(spec, params, feeds)
    one = make_net(_layer(kind, param), {"x": shape})
    top_shape = one.shapes[one.blob_values["y"]]
    diffs = {"a": _normal(top_shape, 3), "b": _normal(top_shape, 4)}
    _, pair, blobs = net_backward(spec, params, feeds, {spec.blob_values["y" + b]: diffs[b] for b in "ab"})
    for b in "ab":
        _, single, single_blobs = net_backward(one, dict(zip(one.params, params.values())), {"x": feeds[b]},
                                               {one.blob_values["y"]: diffs[b]})
        np.testing.assert_allclose(blobs[b], single_blobs["x"], rtol=1e-5, atol=1e-6)
        for name, own in zip(spec.params, one.params):
            pair[name] = pair[name] - single[own]
    for name in spec.params:
        assert np.abs(pair[name]).max() < 1e-5 * max(1.0, np.abs(both[name]).max()), name


def test_propagate_down_and_lr_mult_zero_leave_diffs_out():
    # propagate_down: false on the bottom and lr_mult: 0 on the bias: only the weight diff is computed.
    net = ('layer { name: "ip" type: "InnerProduct" bottom: "x" top: "f" inner_product_param { num_output: 50 } }\n'
           'layer { name: "r" type: "Reshape" bottom: "f" top: "img" reshape_param { shape { dim: 1 dim: 2 dim: 5 '
           'dim: 5 } } }\n'
           + _layer("Convolution", "num_output: 3 kernel_size: 3", ("img",), ("y",),
                    'propagate_down: false param { lr_mult: 1 } param { lr_mult: 0 }')
           + '\nlayer { name: "loss" type: "Reduction" bottom: "y" top: "loss" loss_weight: 1 }')
    spec = make_net(net, {"x": (1, 2)}, caffe_pb2.TRAIN)
    params = random_params(spec)
    _, pdiffs, bdiffs = net_backward(spec, params, {"x": _normal((1, 2))}, force_backward=False)
    weight, bias = spec.layers[-2].param_names
    assert pdiffs[weight].any() and not pdiffs[bias].any()
    assert not bdiffs["img"].any()


# Pooling geometries: Caffe's CEIL with a clipped last window, FLOOR, rectangles, one-sided padding, global.
POOL_CASES = {
    "k3s2p1": "kernel_size: 3 stride: 2 pad: 1",
    "k3s2p1_floor": "kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR",
    "k2s2": "kernel_size: 2 stride: 2",
    "k2s2_floor": "kernel_size: 2 stride: 2 round_mode: FLOOR",
    "k4s3p2_floor": "kernel_size: 4 stride: 3 pad: 2 round_mode: FLOOR",
    "rect_pad_w": "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 0 pad_w: 1",
    "rect_floor": "kernel_h: 2 kernel_w: 3 stride_h: 3 stride_w: 2 pad_h: 1 pad_w: 0 round_mode: FLOOR",
    "k2s3": "kernel_size: 2 stride: 3",
    "global": "global_pooling: true",
}
POOL_SHAPE = (2, 3, 7, 8)


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("case", list(POOL_CASES))
def test_pooling_gradients(pool, case):
    spec = make_net(_layer("Pooling", f"pool: {pool} {POOL_CASES[case]}"), {"x": POOL_SHAPE})
    check_layer_gradients(spec, {}, {"x": _distinct(POOL_SHAPE)}, samples=20)


def _caffe_pool(x: np.ndarray, pool: str, k, st, pd, out) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """PoolingLayer::Forward_cpu and Backward_cpu, loop for loop (float32): (top, top diff -> bottom diff)."""
    n, c, h, w = x.shape
    top = np.zeros((n, c, *out), np.float32)
    windows = {}
    for ph, pw in itertools.product(range(out[0]), range(out[1])):
        h0, w0 = ph * st[0] - pd[0], pw * st[1] - pd[1]
        size = (min(h0 + k[0], h + pd[0]) - h0) * (min(w0 + k[1], w + pd[1]) - w0)
        h1, w1 = min(h0 + k[0], h), min(w0 + k[1], w)
        windows[ph, pw] = (max(h0, 0), h1, max(w0, 0), w1, np.float32(size))
    argmax = np.zeros(top.shape + (2,), int)
    for i, j in itertools.product(range(n), range(c)):
        for (ph, pw), (h0, h1, w0, w1, size) in windows.items():
            if pool == "MAX":
                best = -np.finfo(np.float32).max
                for hh, ww in itertools.product(range(h0, h1), range(w0, w1)):
                    if x[i, j, hh, ww] > best:
                        best, argmax[i, j, ph, pw] = x[i, j, hh, ww], (hh, ww)
                top[i, j, ph, pw] = best
            else:
                top[i, j, ph, pw] = x[i, j, h0:h1, w0:w1].sum(dtype=np.float32) / size

    def backward(dy: np.ndarray) -> np.ndarray:
        dx = np.zeros_like(x)
        for i, j in itertools.product(range(n), range(c)):
            for (ph, pw), (h0, h1, w0, w1, size) in windows.items():
                if pool == "MAX":
                    dx[(i, j, *argmax[i, j, ph, pw])] += dy[i, j, ph, pw]
                else:
                    dx[i, j, h0:h1, w0:w1] += dy[i, j, ph, pw] / size
        return dx

    return top, backward


_GEOMETRY = {  # POOL_CASES' kernel, stride, pad, for _caffe_pool
    "k3s2p1": ((3, 3), (2, 2), (1, 1)), "k3s2p1_floor": ((3, 3), (2, 2), (1, 1)), "k2s2": ((2, 2), (2, 2), (0, 0)),
    "k2s2_floor": ((2, 2), (2, 2), (0, 0)), "k4s3p2_floor": ((4, 4), (3, 3), (2, 2)),
    "rect_pad_w": ((3, 2), (2, 3), (0, 1)), "rect_floor": ((2, 3), (3, 2), (1, 0)), "k2s3": ((2, 2), (3, 3), (0, 0)),
    "global": ((7, 8), (1, 1), (0, 0)),
}


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("case", list(POOL_CASES))
def test_pooling_matches_caffe_loops_with_ties(pool, case, training):
    # Small integers: many equal values in a window. Caffe's MAX keeps the first maximum of its row-major scan
    # and sends the whole top diff there. Without training the backward reruns MaxPool for the Indices.
    x = np.random.default_rng(3).integers(-2, 3, size=POOL_SHAPE).astype(np.float32)
    spec = make_net(_layer("Pooling", f"pool: {pool} {POOL_CASES[case]}"), {"x": POOL_SHAPE})
    out_shape = spec.shapes[spec.blob_values["y"]]
    top, backward = _caffe_pool(x, pool, *_GEOMETRY[case], out_shape[2:])
    dy = _normal(out_shape, 5)
    outs, _, bdiffs = net_backward(spec, {}, {"x": x}, {spec.blob_values["y"]: dy}, training=training)
    np.testing.assert_allclose(outs[spec.blob_values["y"]], top, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(bdiffs["x"], backward(dy), rtol=1e-6, atol=1e-6)


def test_floor_by_hand():
    x = np.arange(20, dtype=np.float32).reshape(1, 1, 4, 5)
    net = "\n".join(_layer("Pooling", f"pool: {p} kernel_size: 2 stride: 2 round_mode: {m}", ("x",), (f"{p}_{m}",))
                    .replace('name: "l"', f'name: "{p}_{m}"') for p in ("MAX", "AVE") for m in ("FLOOR", "CEIL"))
    spec = make_net(net, {"x": x.shape})
    tops = ["MAX_FLOOR", "AVE_FLOOR", "MAX_CEIL", "AVE_CEIL"]
    ours = forward(spec, {}, {"x": x}, tops)
    # FLOOR drops the last column, whose window would be a clipped 2x1; CEIL keeps it.
    np.testing.assert_array_equal(ours["MAX_FLOOR"][0, 0], [[6, 8], [16, 18]])
    np.testing.assert_array_equal(ours["AVE_FLOOR"][0, 0], [[3, 5], [13, 15]])
    np.testing.assert_array_equal(ours["MAX_CEIL"][0, 0], [[6, 8, 9], [16, 18, 19]])
    # CEIL's last AVE window is clipped to the (unpadded) input: Caffe divides by 2x1.
    np.testing.assert_array_equal(ours["AVE_CEIL"][0, 0], [[3, 5, 6.5], [13, 15, 16.5]])
    ones = {spec.blob_values[t]: np.ones(ours[t].shape, np.float32) for t in ("MAX_FLOOR", "AVE_FLOOR")}
    _, _, diffs = net_backward(spec, {}, {"x": x}, ones)
    want = np.zeros((4, 5), np.float32)
    want[[1, 1, 3, 3], [1, 3, 1, 3]] = 1  # MAX: the window maxima
    want[:, :4] += 0.25  # AVE: a quarter to each cell of the four windows; the last column gets nothing
    np.testing.assert_array_equal(diffs["x"][0, 0], want)


def test_floor_against_opencv(tmp_path):
    # OpenCV's Caffe importer reads the fork's `ceil_mode: false` for BVLC's `round_mode: FLOOR`.
    shape = (2, 3, 10, 9)
    layers = [("MAX", "kernel_size: 3 stride: 2 pad: 1"), ("AVE", "kernel_size: 3 stride: 2 pad: 1"),
              ("MAX", "kernel_h: 3 kernel_w: 2 stride: 2"), ("AVE", "kernel_h: 3 kernel_w: 2 stride: 2 pad: 1"),
              ("AVE", "kernel_size: 3 stride: 2"), ("AVE", "kernel_size: 4 stride: 3 pad: 2")]
    ours_text, cv_text, tops = [], [], []
    for i, (pool, geometry) in enumerate(layers):
        top = f"p{i}"
        tops.append(top)
        for text, mode in ((ours_text, "round_mode: FLOOR"), (cv_text, "ceil_mode: false")):
            text.append(_layer("Pooling", f"pool: {pool} {geometry} {mode}", ("x",), (top,))
                        .replace('name: "l"', f'name: "{top}"'))
    x = _normal(shape)
    spec = make_net("\n".join(ours_text), {"x": shape})
    ours = forward(spec, {}, {"x": x}, tops)
    theirs = opencv_forward(tmp_path, "\n".join(cv_text), {"x": shape}, {}, {"x": x}, tops)
    for top, cv in zip(tops, theirs):
        assert ours[top].shape == cv.shape, top
        assert relative_error(ours[top], cv) < 1e-5, top


def test_round_mode_shapes():
    def pooled(param: str, shape=(1, 1, 10, 9)) -> tuple[int, ...]:
        spec = make_net(_layer("Pooling", param), {"x": shape})
        return spec.shapes[spec.blob_values["y"]][2:]

    assert pooled("pool: MAX kernel_size: 3 stride: 2 pad: 1") == (6, 5)
    assert pooled("pool: MAX kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR") == (5, 5)
    assert pooled("pool: AVE kernel_size: 3 stride: 2") == (5, 4)
    assert pooled("pool: AVE kernel_size: 3 stride: 2 round_mode: FLOOR") == (4, 4)
    # CEIL's last window would start in the padding (at 6 = 5 + pad): Caffe drops it.
    assert pooled("pool: MAX kernel_size: 2 stride: 2 pad: 1", (1, 1, 5, 5)) == (3, 3)
    # The rule looks at both axes as soon as either is padded (a window starting at 6 on a 5-high input).
    assert pooled("pool: MAX kernel_h: 1 kernel_w: 2 stride_h: 3 stride_w: 1 pad_h: 0 pad_w: 1",
                  (1, 1, 5, 4)) == (2, 5)
    assert pooled("pool: MAX kernel_h: 1 kernel_w: 2 stride_h: 3 stride_w: 1", (1, 1, 5, 4)) == (3, 3)
    with pytest.raises(CaffeCompatError, match="no output"):
        pooled("pool: MAX kernel_size: 5 stride: 2 round_mode: FLOOR", (1, 1, 4, 4))


def test_stochastic_pooling_is_not_supported():
    with pytest.raises(CaffeCompatError, match="STOCHASTIC"):
        make_net(_layer("Pooling", "pool: STOCHASTIC kernel_size: 2"), {"x": (1, 1, 4, 4)})


@pytest.mark.parametrize("group", [1, 2])
def test_weight_diff_in_batch_chunks_equals_one_pass(monkeypatch, group):
    # A tiny chunk budget cuts the batch of 5 into chunks of 2 (+1); their MatMuls must add up exactly.
    from caffecompat.layers import conv

    text = ('layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 4 '
            f'kernel_size: 3 pad: 1 group: {group} weight_filler {{ type: "gaussian" }} }} }}')
    spec = make_net(text, {"x": (5, 4, 6, 6)}, caffe_pb2.TRAIN)
    params = random_params(spec)
    rng = np.random.default_rng(3)
    feeds = {"x": rng.normal(size=(5, 4, 6, 6)).astype(np.float32)}
    diffs = {"y": rng.normal(size=(5, 4, 6, 6)).astype(np.float32)}
    _, whole, _ = net_backward(spec, params, feeds, diffs)
    per_image = 4 * 9 * 36 * 4
    monkeypatch.setattr(conv, "IM2COL_CHUNK_BYTES", 2 * per_image)
    _, chunked, _ = net_backward(spec, params, feeds, diffs)
    assert relative_error(chunked["c#0"], whole["c#0"]) <= 1e-6  # float rounding of the summation order only
