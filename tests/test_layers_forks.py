"""Layers of the Caffe forks (SSD's PriorBox and DetectionOutput: test_layers_ssd.py).

Forward against OpenCV's Caffe importer where it implements the layer as the fork does, against the forks'
loops and formulas written out in numpy where it does not (Interp's crop and shrink_factor, SegNet's Upsample,
Axpy, a per-channel Normalize scale across_spatial); Backward against central differences, or against the
fork's own formula where that is not the derivative (Normalize with per-channel scales); an open batch size
(`convert -dynamic_batch`) and a few solver iterations through all of them.
"""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pytest

from caffecompat import convert as conv
from caffecompat import glog
from caffecompat.errors import CaffeCompatError, NotSupportedError
from caffecompat.formats.protofile import parse_text
from caffecompat.net.weights import init_params
from caffecompat.proto import caffe_pb2
from caffecompat.solver.loop import Solver
from tests.gradients import check_layer_gradients, net_backward
from tests.layer_nets import forward, layer_blobs, make_net, opencv_forward, random_params, relative_error

SHAPE = (2, 6, 5, 7)


def _layer(name: str, type_: str, extra: str = "", bottoms: tuple[str, ...] = ("data",),
           tops: tuple[str, ...] | None = None) -> str:
    b = " ".join(f'bottom: "{x}"' for x in bottoms)
    t = " ".join(f'top: "{x}"' for x in (tops or (name,)))
    return f'layer {{ name: "{name}" type: "{type_}" {b} {t} {extra} }}\n'


def _x(shape: tuple[int, ...] = SHAPE, seed: int = 0, scale: float = 3.0) -> np.ndarray:
    # Entries at least 0.1 away from 0, so finite differences never straddle ReLU6's kinks at 0 (and 6, below).
    rng = np.random.default_rng(seed)
    x = rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.1, scale, size=shape)
    x[np.abs(x - 6.0) < 0.1] = 5.0
    return x.astype(np.float32)


# Layers OpenCV's importer implements as the forks do, on `data` (2 x 6 x 5 x 7).
OPENCV_NET = "".join([
    _layer("relu6", "ReLU6"),
    _layer("shuffle", "ShuffleChannel", "shuffle_channel_param { group: 3 }"),
    _layer("shuffle2", "ShuffleChannel", "shuffle_channel_param { group: 2 }"),
    _layer("zoom", "Interp", "interp_param { zoom_factor: 3 }"),
    _layer("sized", "Interp", "interp_param { height: 9 width: 4 }"),
    _layer("perm", "Permute", "permute_param { order: 0 order: 2 order: 3 order: 1 }"),
    _layer("norm", "Normalize", 'norm_param { scale_filler { type: "constant" value: 20 } }'),
    _layer("norm_c", "Normalize", 'norm_param { across_spatial: false channel_shared: false '
                                  'scale_filler { type: "uniform" min: 1 max: 3 } }'),
    _layer("norm_s", "Normalize", "norm_param { across_spatial: false eps: 0.5 }"),
    _layer("dw", "ConvolutionDepthwise", 'convolution_param { num_output: 6 kernel_size: 3 pad: 1 stride: 2 '
                                         'weight_filler { type: "gaussian" std: 0.5 } '
                                         'bias_filler { type: "uniform" } }'),
    _layer("dw_dil", "ConvolutionDepthwise", 'convolution_param { num_output: 6 kernel_h: 3 kernel_w: 2 '
                                             'dilation: 2 bias_term: false weight_filler { type: "xavier" } }'),
    _layer("pool", "Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }", tops=("pool", "mask")),
    _layer("gpool", "Pooling", "pooling_param { pool: MAX global_pooling: true }", tops=("gpool", "gmask")),
])
OPENCV_BLOBS = ["relu6", "shuffle", "shuffle2", "zoom", "sized", "perm", "norm", "norm_c", "norm_s", "dw", "dw_dil",
                "pool", "gpool"]
INPUTS = {"data": SHAPE}


def _feeds(seed: int = 0) -> dict[str, np.ndarray]:
    return {"data": _x(seed=seed, scale=8.0)}  # past 6, so that ReLU6 clips


def test_forward_matches_opencv(tmp_path):
    cv2 = pytest.importorskip("cv2")
    spec = make_net(OPENCV_NET, INPUTS)
    params = init_params(spec, np.random.default_rng(0))
    feeds = _feeds()
    ours = forward(spec, params, feeds, OPENCV_BLOBS + ["mask", "gmask"])
    theirs = dict(zip(OPENCV_BLOBS, opencv_forward(tmp_path, OPENCV_NET, INPUTS, layer_blobs(spec, params), feeds,
                                                   OPENCV_BLOBS)))
    # A layer's second top: OpenCV returns every output of a layer with forwardAndRetrieve.
    cvnet = cv2.dnn.readNetFromCaffe(str(tmp_path / "net.prototxt"), str(tmp_path / "w.caffemodel"))
    for k, v in feeds.items():
        cvnet.setInput(v, k)
    (_, theirs["mask"]), (_, theirs["gmask"]) = cvnet.forwardAndRetrieve(["pool", "gpool"])
    shapes = {b: ours[b].shape for b in OPENCV_BLOBS}
    assert shapes["zoom"] == (2, 6, 13, 19) and shapes["sized"] == (2, 6, 9, 4) and shapes["perm"] == (2, 5, 7, 6)
    assert shapes["dw"] == (2, 6, 3, 4) and shapes["dw_dil"] == (2, 6, 1, 5) and params["dw#0"].shape == (6, 1, 3, 3)
    assert ours["relu6"].max() == 6.0 and ours["relu6"].min() == 0.0
    for blob in OPENCV_BLOBS + ["mask", "gmask"]:
        assert ours[blob].shape == theirs[blob].shape, blob
        assert relative_error(ours[blob], theirs[blob]) < 1e-5, blob
    # The mask holds h * W + w of each maximum in its channel plane.
    plane = feeds["data"].reshape(2, 6, -1)
    picked = np.take_along_axis(plane, ours["mask"].reshape(2, 6, -1).astype(np.int64), axis=2)
    np.testing.assert_array_equal(picked.reshape(ours["pool"].shape), ours["pool"])
    np.testing.assert_array_equal(ours["gmask"].reshape(2, 6), plane.argmax(axis=2))


def _interp_loops(x: np.ndarray, pad_beg: int, h_eff: int, w_eff: int, h_out: int, w_out: int) -> np.ndarray:
    """caffe_cpu_interp2 (not packed) written out: the fork's float arithmetic, cell by cell."""
    f = np.float32
    top = np.zeros(x.shape[:2] + (h_out, w_out), np.float32)
    rh = f(h_eff - 1) / f(h_out - 1) if h_out > 1 else f(0)
    rw = f(w_eff - 1) / f(w_out - 1) if w_out > 1 else f(0)
    y0 = x0 = -pad_beg
    for h2 in range(h_out):
        h1r = f(rh * f(h2))
        h1 = int(h1r)
        h1p = 1 if h1 < h_eff - 1 else 0
        l1 = f(h1r - f(h1))
        l0 = f(1) - l1
        for w2 in range(w_out):
            w1r = f(rw * f(w2))
            w1 = int(w1r)
            w1p = 1 if w1 < w_eff - 1 else 0
            m1 = f(w1r - f(w1))
            m0 = f(1) - m1
            a, b = x[:, :, y0 + h1, x0 + w1], x[:, :, y0 + h1, x0 + w1 + w1p]
            c, d = x[:, :, y0 + h1 + h1p, x0 + w1], x[:, :, y0 + h1 + h1p, x0 + w1 + w1p]
            top[:, :, h2, w2] = l0 * (m0 * a + m1 * b) + l1 * (m0 * c + m1 * d)
    return top


def test_interp_crop_and_sizes_as_the_forks_loops():
    # OpenCV ignores pad_beg/pad_end (and sizes shrink_factor wrongly); the fork crops, then resizes the window.
    net = "".join([
        _layer("crop_zoom", "Interp", "interp_param { zoom_factor: 2 pad_beg: -1 pad_end: -2 }"),
        _layer("crop_shrink", "Interp", "interp_param { shrink_factor: 3 pad_beg: -1 pad_end: 0 }"),
        _layer("crop_same", "Interp", "interp_param { height: 3 width: 5 pad_beg: -1 pad_end: -1 }"),
        _layer("to_one", "Interp", "interp_param { height: 1 width: 1 }"),
        _layer("both", "Interp", "interp_param { shrink_factor: 2 zoom_factor: 3 }"),
    ])
    x = _x()
    spec = make_net(net, {"data": SHAPE})
    ours = forward(spec, {}, {"data": x}, ["crop_zoom", "crop_shrink", "crop_same", "to_one", "both"])
    # H_eff = 5 - 3 = 2, W_eff = 7 - 3 = 4; zoom 2: 2 + 1 = 3 and 4 + 3 = 7.
    np.testing.assert_allclose(ours["crop_zoom"], _interp_loops(x, -1, 2, 4, 3, 7), rtol=1e-6, atol=1e-6)
    # H_eff = 4, W_eff = 6; shrink 3: (4 - 1) // 3 + 1 = 2 and (6 - 1) // 3 + 1 = 2.
    np.testing.assert_allclose(ours["crop_shrink"], _interp_loops(x, -1, 4, 6, 2, 2), rtol=1e-6, atol=1e-6)
    # Same size as the window: a copy of it.
    np.testing.assert_array_equal(ours["crop_same"], x[:, :, 1:4, 1:6])
    np.testing.assert_array_equal(ours["to_one"], x[:, :, :1, :1])
    # Shrink by 2 (5 x 7 -> 3 x 4), then zoom by 3 (-> 7 x 10).
    np.testing.assert_allclose(ours["both"], _interp_loops(x, 0, 5, 7, 7, 10), rtol=1e-6, atol=1e-6)


def test_normalize_per_channel_scale_across_spatial_as_the_forks_formula():
    # OpenCV's importer takes a per-channel scale only with across_spatial: false.
    spec = make_net(_layer("n", "Normalize", 'norm_param { channel_shared: false eps: 0.01 '
                                             'scale_filler { type: "gaussian" } }'), {"data": SHAPE})
    params = init_params(spec, np.random.default_rng(0))
    x = _x()
    d = x.astype(np.float64)
    norm = np.sqrt((d * d).sum(axis=(1, 2, 3), keepdims=True) + 0.01)
    want = d / norm * params["n#0"].reshape(1, -1, 1, 1)
    assert relative_error(forward(spec, params, {"data": x}, ["n"])["n"], want) < 1e-6


def test_axpy_scales_its_second_bottom_and_adds_its_third():
    # SENet's AxpyLayer: top = a * x + y for bottoms (a, x, y). (OpenCV's importer scales the third bottom.)
    spec = make_net(_layer("f", "Axpy", bottoms=("a", "x", "y")) + _layer("g", "Axpy", bottoms=("a2", "x", "y")),
                    {"a": (2, 6, 1, 1), "a2": (2, 6), "x": SHAPE, "y": SHAPE})
    a, x, y = _x((2, 6, 1, 1), seed=1), _x(seed=2), _x(seed=3)
    out = forward(spec, {}, {"a": a, "a2": a.reshape(2, 6), "x": x, "y": y}, ["f", "g"])
    np.testing.assert_allclose(out["f"], a * x + y, rtol=1e-6)
    np.testing.assert_array_equal(out["g"], out["f"])


def test_permute_appends_the_axes_order_leaves_out():
    # OpenCV's importer wants every axis listed; SSD's layer appends the missing ones in their order.
    spec = make_net(_layer("p", "Permute", "permute_param { order: 3 order: 1 }"), {"data": SHAPE})
    x = _x()
    np.testing.assert_array_equal(forward(spec, {}, {"data": x}, ["p"])["p"], x.transpose(3, 1, 0, 2))


def _upsample_loops(x: np.ndarray, mask: np.ndarray, h_out: int, w_out: int) -> np.ndarray:
    """UpsampleLayer::Forward_cpu written out: zeros, then top[mask[i]] = x[i] in order, per channel plane."""
    top = np.zeros(x.shape[:2] + (h_out * w_out,), np.float32)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for v, idx in zip(x[n, c].reshape(-1), mask[n, c].reshape(-1)):
                top[n, c, int(idx)] = v
    return top.reshape(x.shape[:2] + (h_out, w_out))


def test_upsample_unpools_by_the_pooling_mask():
    net = "".join([
        _layer("pool", "Pooling", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }", tops=("pool", "mask")),
        _layer("relu", "ReLU", bottoms=("pool",)),
        _layer("up", "Upsample", "upsample_param { scale: 2 pad_out_h: true }", bottoms=("relu", "mask")),
        _layer("up_hw", "Upsample", "upsample_param { upsample_h: 5 upsample_w: 7 }", bottoms=("relu", "mask")),
        _layer("up_s", "Upsample", "upsample_param { scale_h: 3 scale_w: 4 }", bottoms=("relu", "mask")),
    ])
    x = _x()
    spec = make_net(net, {"data": SHAPE})
    ours = forward(spec, {}, {"data": x}, ["relu", "mask", "up", "up_hw", "up_s"])
    # The pooled 3 x 4 times 2, less one row (pad_out_h); times 3 x 4.
    assert ours["up"].shape == (2, 6, 5, 8) and ours["up_s"].shape == (2, 6, 9, 16)
    np.testing.assert_array_equal(ours["up_hw"], _upsample_loops(ours["relu"], ours["mask"], 5, 7))
    # The mask indexes the 7-wide plane, so an 8- or 16-wide top puts the values elsewhere: as the fork does.
    np.testing.assert_array_equal(ours["up"], _upsample_loops(ours["relu"], ours["mask"], 5, 8))
    np.testing.assert_array_equal(ours["up_s"], _upsample_loops(ours["relu"], ours["mask"], 9, 16))
    # Two values for one cell: the later one stays.
    spec = make_net(_layer("up", "Upsample", "upsample_param { scale: 2 }", bottoms=("v", "m")),
                    {"v": (1, 1, 1, 3), "m": (1, 1, 1, 3)})
    out = forward(spec, {}, {"v": np.array([[[[1, 2, 3]]]], np.float32),
                             "m": np.array([[[[4, 1, 4]]]], np.float32)}, ["up"])["up"]
    np.testing.assert_array_equal(out.reshape(-1), [0, 2, 0, 0, 3] + [0] * 7)


def test_depthwise_convolution_is_convolution_and_convolution_depthwise_ignores_num_output():
    conv = 'convolution_param { num_output: 6 group: 6 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } }'
    net = (_layer("dwc", "DepthwiseConvolution", conv) + _layer("conv", "Convolution", conv)
           + _layer("cd", "ConvolutionDepthwise", conv.replace("num_output: 6 group: 6", "num_output: 3")))
    spec = make_net(net, {"data": SHAPE})
    params = random_params(spec)
    params["conv#0"], params["conv#1"] = params["dwc#0"], params["dwc#1"]
    params["cd#0"], params["cd#1"] = params["dwc#0"], params["dwc#1"]
    out = forward(spec, params, {"data": _x()}, ["dwc", "conv", "cd"])
    assert spec.shapes["cd"] == SHAPE and params["cd#0"].shape == (6, 1, 3, 3)
    np.testing.assert_array_equal(out["dwc"], out["conv"])
    np.testing.assert_array_equal(out["cd"], out["conv"])


# Every fork layer with a Backward, checked against central differences (float64 where ORT can).
GRAD_CASES = {
    "relu6": (_layer("top", "ReLU6", bottoms=("data",)), {"data": SHAPE}),
    "relu6_slope_in_place": (_layer("top", "Scale", "scale_param { bias_term: true }")
                             + _layer("r", "ReLU6", "relu6_param { negative_slope: 0.2 }", bottoms=("top",),
                                      tops=("top",)), {"data": SHAPE}),
    "shuffle": (_layer("top", "ShuffleChannel", "shuffle_channel_param { group: 3 }"), {"data": SHAPE}),
    "shuffle_2d": (_layer("top", "ShuffleChannel", "shuffle_channel_param { group: 2 }"), {"data": (3, 6)}),
    "permute": (_layer("top", "Permute", "permute_param { order: 0 order: 3 order: 1 order: 2 }"), {"data": SHAPE}),
    "interp_zoom": (_layer("top", "Interp", "interp_param { zoom_factor: 3 pad_beg: -1 }"), {"data": SHAPE}),
    "interp_shrink": (_layer("top", "Interp", "interp_param { shrink_factor: 2 }"), {"data": SHAPE}),
    "norm": (_layer("top", "Normalize", 'norm_param { scale_filler { type: "constant" value: 3 } }'),
             {"data": SHAPE}),
    "norm_spatial": (_layer("top", "Normalize", "norm_param { across_spatial: false }"), {"data": SHAPE}),
    "norm_2d": (_layer("top", "Normalize"), {"data": (3, 5)}),
    "dw": (_layer("top", "ConvolutionDepthwise", 'convolution_param { kernel_size: 3 stride: 2 pad: 1 '
                                                 'weight_filler { type: "gaussian" std: 0.5 } }'), {"data": SHAPE}),
    "axpy": (_layer("top", "Axpy", bottoms=("a", "x", "y")), {"a": (2, 6, 1, 1), "x": SHAPE, "y": SHAPE}),
    "axpy_2d": (_layer("top", "Axpy", bottoms=("a", "x", "y")), {"a": (2, 6), "x": (2, 6), "y": (2, 6)}),
    "pool_upsample": (_layer("pool", "Pooling", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }",
                             tops=("pool", "mask"))
                      + _layer("top", "Upsample", "upsample_param { upsample_h: 5 upsample_w: 7 }",
                               bottoms=("pool", "mask")), {"data": SHAPE}),
}


@pytest.mark.parametrize("case", list(GRAD_CASES))
def test_backward_matches_central_differences(case):
    layers, inputs = GRAD_CASES[case]
    spec = make_net(layers, inputs)
    params = random_params(spec)
    feeds = {n: _x(s, seed=i, scale=8.0) for i, (n, s) in enumerate(inputs.items())}  # ReLU6 clips some
    diffs = check_layer_gradients(spec, params, feeds, ["top"], samples=10)
    assert all(np.abs(v).max() > 0 for v in diffs.values()), case  # every input and parameter gets a diff


@pytest.mark.parametrize("across", [True, False])
def test_normalize_backward_with_per_channel_scales_is_the_forks(across):
    # NormalizeLayer::Backward_cpu scales (dy - x (x . dy) / norm^2) / norm by each channel's own scale, which is
    # the derivative only for one shared scale: with per-channel scales, the fork's formula is the reference.
    spec = make_net(_layer("n", "Normalize", f"norm_param {{ across_spatial: {str(across).lower()} channel_shared: "
                                             'false scale_filler { type: "uniform" min: 1 max: 3 } }'),
                    {"data": SHAPE})
    params = init_params(spec, np.random.default_rng(0))
    x, dy = _x(seed=1).astype(np.float64), _x(seed=2).astype(np.float64)
    _, pdiffs, bdiffs = net_backward(spec, params, {"data": x}, {"n": dy})
    scale = params["n#0"].astype(np.float64).reshape(1, -1, 1, 1)
    axes = (1, 2, 3) if across else (1,)
    norm = np.sqrt((x * x).sum(axis=axes, keepdims=True) + 1e-10)
    want = (dy - x * (x * dy).sum(axis=axes, keepdims=True) / norm**2) / norm * scale
    assert relative_error(bdiffs["data"], want) < 1e-5
    # The scale diff is the derivative: sum over the batch and positions of top * dy / scale.
    np.testing.assert_allclose(pdiffs["n#0"], (x / norm * dy).sum(axis=(0, 2, 3)), rtol=1e-4)


def test_fork_layer_errors_name_the_layer_and_the_fix():
    def build(layer: str, inputs: dict | None = None) -> None:
        make_net(layer, inputs or {"data": SHAPE})

    with pytest.raises(CaffeCompatError, match="'s' .*group 4 must .*divide the 6 channels"):
        build(_layer("s", "ShuffleChannel", "shuffle_channel_param { group: 4 }"))
    with pytest.raises(CaffeCompatError, match="'p' .*lists axis 1 twice"):
        build(_layer("p", "Permute", "permute_param { order: 1 order: 1 }"))
    with pytest.raises(CaffeCompatError, match="'p' .*order 4 is out of range"):
        build(_layer("p", "Permute", "permute_param { order: 4 }"))
    with pytest.raises(CaffeCompatError, match="'i' .*needs zoom_factor, shrink_factor"):
        build(_layer("i", "Interp", "interp_param { height: 3 }"))
    with pytest.raises(CaffeCompatError, match="'i' .*must be <= 0"):
        build(_layer("i", "Interp", "interp_param { zoom_factor: 2 pad_beg: 1 }"))
    with pytest.raises(CaffeCompatError, match="'a' .*bottom #0 \\(the scale\\) must be 2 x 6"):
        build(_layer("a", "Axpy", bottoms=("s", "data", "data")), {"data": SHAPE, "s": (2, 3)})
    with pytest.raises(CaffeCompatError, match="'pool' .*only MAX pooling has a second top"):
        build(_layer("pool", "Pooling", "pooling_param { pool: AVE kernel_size: 2 }", tops=("pool", "mask")))
    with pytest.raises(NotSupportedError, match="layer up of type Upsample with one bottom and upsample_param.scale_w"):
        build(_layer("up", "Upsample", "upsample_param { scale_h: 2 scale_w: 3 }"))
    with pytest.raises(CaffeCompatError, match="'n' .*2 to 4 axes"):
        build(_layer("n", "Normalize"), {"data": (2, 3, 4, 5, 6)})
    with pytest.raises(CaffeCompatError, match="'s' .*in-place"):
        build(_layer("s", "ShuffleChannel", tops=("data",)))


def test_fork_layers_leave_the_batch_open(tmp_path):
    # `convert -dynamic_batch`: no fork layer but DetectionOutput bakes the batch size into the graph.
    net = "".join([
        'layer { name: "in" type: "Input" top: "data" top: "a" input_param { shape { dim: 2 dim: 6 dim: 5 dim: 7 } '
        "shape { dim: 2 dim: 6 dim: 1 dim: 1 } } }\n",
        _layer("n", "Normalize", "norm_param { across_spatial: false channel_shared: false }"),
        _layer("s", "ShuffleChannel", "shuffle_channel_param { group: 2 }", bottoms=("n",)),
        _layer("dw", "ConvolutionDepthwise", 'convolution_param { kernel_size: 3 pad: 1 weight_filler { '
                                             'type: "xavier" } }', bottoms=("s",)),
        _layer("r6", "ReLU6", bottoms=("dw",)),
        _layer("ax", "Axpy", bottoms=("a", "r6", "data")),
        _layer("pool", "Pooling", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }", bottoms=("ax",),
               tops=("pool", "mask")),
        _layer("up", "Upsample", "upsample_param { upsample_h: 5 upsample_w: 7 }", bottoms=("pool", "mask")),
        _layer("i", "Interp", "interp_param { zoom_factor: 2 }", bottoms=("up",)),
        _layer("p", "Permute", "permute_param { order: 0 order: 2 order: 3 order: 1 }", bottoms=("i",)),
        _layer("pb", "PriorBox", "prior_box_param { min_size: 2 variance: 0.1 }", bottoms=("i", "data")),
    ])
    path = tmp_path / "net.prototxt"
    path.write_text(net)
    result = conv.convert_net(path, None, dynamic_batch=True)
    assert result.inputs == {"data": ("N", 6, 5, 7), "a": ("N", 6, 1, 1)}
    sess = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    x, a = _x((3, 6, 5, 7), seed=4), _x((3, 6, 1, 1), seed=5)
    three = dict(zip(["p", "pb"], sess.run(["p", "pb"], {"data": x, "a": a})))
    one = dict(zip(["p", "pb"], sess.run(["p", "pb"], {"data": x[1:2], "a": a[1:2]})))
    assert three["p"].shape == (3, 9, 13, 6)
    np.testing.assert_allclose(one["p"], three["p"][1:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(one["pb"], three["pb"])


TRAIN_NET = """
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 6 dim: 8 dim: 8 } shape { dim: 4 dim: 1 dim: 8 dim: 8 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "dw" type: "ConvolutionDepthwise" bottom: "data" top: "dw"
  convolution_param { kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "r6" type: "ReLU6" bottom: "dw" top: "dw" }
layer { name: "norm" type: "Normalize" bottom: "dw" top: "norm"
  norm_param { across_spatial: false channel_shared: false scale_filler { type: "constant" value: 5 } } }
layer { name: "sh" type: "ShuffleChannel" bottom: "norm" top: "sh" shuffle_channel_param { group: 2 } }
layer { name: "pool" type: "Pooling" bottom: "sh" top: "pool" top: "mask"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "up" type: "Upsample" bottom: "pool" bottom: "mask" top: "up" upsample_param { scale: 2 } }
layer { name: "small" type: "Pooling" bottom: "up" top: "small" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "interp" type: "Interp" bottom: "small" top: "interp" interp_param { height: 8 width: 8 } }
layer { name: "score" type: "Convolution" bottom: "interp" top: "score"
  convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
"""


def test_a_net_of_fork_layers_trains_in_the_solver():
    param = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy="fixed", momentum=0.9, display=1, max_iter=4,
                                      snapshot_after_train=False, random_seed=1)
    param.net_param.CopyFrom(parse_text(TRAIN_NET, caffe_pb2.NetParameter, "fork_train.prototxt", "net"))
    log = io.StringIO()
    glog.set_stream(log)
    try:
        solver = Solver(param, "fork solver")
        before = {n: np.array(solver.value(n)) for n in solver.param_names}
        solver.solve()
        moved = [n for n in solver.param_names if not np.array_equal(before[n], solver.value(n))]
        solver.close()
    finally:
        glog.set_stream(None)
    losses = [float(line.rsplit("= ", 1)[1]) for line in log.getvalue().splitlines()
              if "solver.cpp:239] Iteration" in line]
    assert sorted(moved) == ["dw#0", "dw#1", "norm#0", "score#0", "score#1"]
    assert len(losses) == 4 and losses[-1] < losses[0] / 2
