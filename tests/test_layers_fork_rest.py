"""The remaining fork layers: BN (PSPNet), ROIPooling (Fast R-CNN), PSROIPooling (R-FCN), one-bottom Upsample
(YOLOv3 ports), Reorg and Region (YOLOv2 ports).

Forward against OpenCV's Caffe importer where it implements the type as the fork does, otherwise against the
fork's loops written out here in numpy; every Backward against central differences (tests/gradients.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from caffecompat.errors import CaffeCompatError, NotSupportedError
from caffecompat.proto import caffe_pb2
from tests.gradients import check_layer_gradients, net_backward
from tests.layer_nets import forward, make_net, net_text, opencv_forward, random_params, relative_error


def _layer(name: str, type_: str, extra: str = "", bottoms: tuple[str, ...] = ("data",)) -> str:
    b = " ".join(f'bottom: "{x}"' for x in bottoms)
    return f'layer {{ name: "{name}" type: "{type_}" {b} top: "{name}" {extra} }}\n'


def _x(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- BN

BN_FILLERS = 'slope_filler { type: "uniform" min: 0.5 max: 2 } bias_filler { type: "uniform" min: -1 max: 1 }'


def _bn_params(spec, seed: int = 0) -> dict[str, np.ndarray]:
    params = random_params(spec, seed)
    rng = np.random.default_rng(seed + 7)
    for name, v in params.items():
        if name.endswith("#2"):
            params[name] = rng.normal(size=v.shape).astype(np.float32)
    return params


@pytest.mark.parametrize("phase,frozen", [(caffe_pb2.TEST, False), (caffe_pb2.TRAIN, False),
                                          (caffe_pb2.TRAIN, True)])
def test_bn_forward_matches_the_forks_formula(phase: int, frozen: bool) -> None:
    shape = (3, 4, 5, 6)
    spec = make_net(_layer("bn", "BN", f"bn_param {{ {BN_FILLERS} eps: 0.01 frozen: {str(frozen).lower()} }}"),
                    {"data": shape}, phase)
    params = _bn_params(spec)
    x = _x(shape) * 2 + 1
    got = forward(spec, params, {"data": x}, ["bn"])["bn"]
    slope, bias, mean, var = (params[f"bn#{i}"].astype(np.float64) for i in range(4))
    if phase == caffe_pb2.TRAIN and not frozen:
        # The fork's batch statistics: mean over N, H, W, then the mean of the squared deviations (biased).
        mean = x.mean(axis=(0, 2, 3), keepdims=True)
        var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    want = slope * (x - mean) / np.sqrt(var + 0.01) + bias
    assert relative_error(got, want) < 1e-5


@pytest.mark.parametrize("phase,frozen", [(caffe_pb2.TRAIN, False), (caffe_pb2.TRAIN, True)])
def test_bn_backward_by_finite_differences(phase: int, frozen: bool) -> None:
    shape = (2, 3, 3, 4)
    spec = make_net(_layer("bn", "BN", f"bn_param {{ {BN_FILLERS} frozen: {str(frozen).lower()} }}"),
                    {"data": shape}, phase)
    params = _bn_params(spec, 3)
    # Only what the fork lets learn: slope and bias unless frozen, never the statistics.
    assert [spec.params[f"bn#{i}"].lr_mult for i in range(4)] == ([0, 0, 0, 0] if frozen else [1, 1, 0, 0])
    assert [spec.params[f"bn#{i}"].decay_mult for i in range(4)] == ([0, 0, 0, 0] if frozen else [1, 1, 0, 0])
    wrt = ["data"] if frozen else ["data", "bn#0", "bn#1"]
    check_layer_gradients(spec, params, {"data": _x(shape, 1)}, ["bn"], wrt=wrt, training=True)


def test_bn_moving_averages_follow_the_forks_momentum(tmp_path) -> None:
    import caffecompat as caffe

    shape = (2, 3, 4, 4)
    text = net_text(_layer("bn", "BN", f"bn_param {{ {BN_FILLERS} momentum: 0.75 }}"), {"data": shape})
    (tmp_path / "bn.prototxt").write_text(text)
    net = caffe.Net(str(tmp_path / "bn.prototxt"), caffe.TRAIN)
    x = _x(shape, 4) * 3 + 2
    for _ in range(2):
        net.forward(data=x)
    mean, var = net.params["bn"][2].data, net.params["bn"][3].data
    bm = x.astype(np.float64).mean(axis=(0, 2, 3)).reshape(1, 3, 1, 1)
    bv = ((x - bm) ** 2).mean(axis=(0, 2, 3)).reshape(1, 3, 1, 1)
    # Two forwards of stored = 0.25 * batch + 0.75 * stored from 0.
    assert np.allclose(mean, 0.25 * bm + 0.75 * 0.25 * bm, rtol=1e-5)
    assert np.allclose(var, 0.25 * bv + 0.75 * 0.25 * bv, rtol=1e-5)
    # A frozen BN keeps its statistics.
    (tmp_path / "frozen.prototxt").write_text(text.replace("momentum: 0.75", "frozen: true"))
    frozen = caffe.Net(str(tmp_path / "frozen.prototxt"), caffe.TRAIN)
    frozen.forward(data=x)
    assert np.all(frozen.params["bn"][2].data == 0) and np.all(frozen.params["bn"][3].data == 1)


# ---------------------------------------------------------------------------------------------- ROIPooling

# batch index, x1, y1, x2, y2 in image pixels (spatial_scale 0.5): inside, partly outside the map, one
# pixel, a ROI past the map's right edge (every bin empty), reversed corners (clamped to 1 x 1), halves.
ROIS = np.array([[0, 2, 2, 13, 11], [1, -6, -4, 9, 25], [1, 7, 7, 7, 7], [0, 40, 2, 60, 9],
                 [1, 10, 12, 3, 5], [0, 3, 5, 15.0, 9]], np.float32)


def _c_round(v: float) -> int:
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


def _roi_pool_reference(x: np.ndarray, rois: np.ndarray, ph_: int, pw_: int, scale: float) -> np.ndarray:
    """ROIPoolingLayer::Forward_cpu's loops."""
    _, c, h, w = x.shape
    top = np.zeros((len(rois), c, ph_, pw_), np.float32)
    for r, (b, x1, y1, x2, y2) in enumerate(rois):
        sw, sh, ew, eh = (_c_round(float(np.float32(v) * np.float32(scale))) for v in (x1, y1, x2, y2))
        bh = np.float32(max(eh - sh + 1, 1)) / np.float32(ph_)
        bw = np.float32(max(ew - sw + 1, 1)) / np.float32(pw_)
        for ph in range(ph_):
            for pw in range(pw_):
                hs = min(max(int(math.floor(np.float32(ph) * bh)) + sh, 0), h)
                he = min(max(int(math.ceil(np.float32(ph + 1) * bh)) + sh, 0), h)
                ws = min(max(int(math.floor(np.float32(pw) * bw)) + sw, 0), w)
                we = min(max(int(math.ceil(np.float32(pw + 1) * bw)) + sw, 0), w)
                if he > hs and we > ws:
                    top[r, :, ph, pw] = x[int(b), :, hs:he, ws:we].max(axis=(1, 2))
    return top


def _roi_layer(pooled: tuple[int, int] = (3, 2), scale: float = 0.5) -> str:
    return _layer("pool", "ROIPooling", f"roi_pooling_param {{ pooled_h: {pooled[0]} pooled_w: {pooled[1]} "
                                        f"spatial_scale: {scale} }}", ("data", "rois"))


@pytest.mark.parametrize("pooled", [(3, 2), (4, 5), (1, 1)])
def test_roi_pooling_forward_matches_the_forks_loops_and_opencv(tmp_path, pooled: tuple[int, int]) -> None:
    x = _x((2, 3, 8, 9), 2)
    inputs = {"data": x.shape, "rois": ROIS.shape}
    spec = make_net(_roi_layer(pooled), inputs)
    got = forward(spec, {}, {"data": x, "rois": ROIS}, ["pool"])["pool"]
    want = _roi_pool_reference(x, ROIS, *pooled, 0.5)
    assert got.shape == (len(ROIS), 3, *pooled)
    assert np.array_equal(got, want)
    assert np.all(got[3] == 0)  # every bin of the ROI past the map is empty
    cv = opencv_forward(tmp_path, _roi_layer(pooled), inputs, {}, {"data": x, "rois": ROIS}, ["pool"])[0]
    assert relative_error(got, cv) < 1e-4


@pytest.mark.parametrize("pooled", [(3, 2), (2, 4)])
def test_roi_pooling_backward_by_finite_differences(pooled: tuple[int, int]) -> None:
    x = _x((2, 3, 8, 9), 3)
    spec = make_net(_roi_layer(pooled), {"data": x.shape, "rois": ROIS.shape}, caffe_pb2.TRAIN)
    check_layer_gradients(spec, {}, {"data": x, "rois": ROIS}, ["pool"], wrt=["data"], samples=40)
    # Every entry, against the fork's GPU kernel written as a loop: each bin's diff goes to its argmax cell.
    dtop = _x((len(ROIS), 3, *pooled), 9)
    _, _, diffs = net_backward(spec, {}, {"data": x, "rois": ROIS}, {spec.blob_values["pool"]: dtop})
    want = np.zeros_like(x)
    top = _roi_pool_reference(x, ROIS, *pooled, 0.5)
    for r, b in enumerate(ROIS[:, 0].astype(int)):
        for c in range(3):
            for ph in range(pooled[0]):
                for pw in range(pooled[1]):
                    hits = np.argwhere(x[b, c] == top[r, c, ph, pw])  # none for an empty bin's 0
                    if len(hits):
                        want[b, c, hits[0][0], hits[0][1]] += dtop[r, c, ph, pw]
    assert np.allclose(diffs["data"], want, atol=1e-5)


# -------------------------------------------------------------------------------------------- PSROIPooling

# Non-negative corners: OpenCV rounds x2 + 1 where the fork adds 1 after rounding (they differ at -0.5).
PS_ROIS = np.array([[0, 2, 2, 13, 11], [1, 0, 3, 30, 25], [1, 7, 7, 7, 7], [0, 40, 2, 60, 9],
                    [1, 10, 12, 3, 5], [0, 3.5, 5, 15.5, 9]], np.float32)


def _psroi_reference(x: np.ndarray, rois: np.ndarray, od: int, gs: int, scale: float) -> np.ndarray:
    """PSROIPoolingForward's per-output loop."""
    _, _, h, w = x.shape
    top = np.zeros((len(rois), od, gs, gs), np.float32)
    f = np.float32
    for r, (b, x1, y1, x2, y2) in enumerate(rois):
        sw, sh = f(_c_round(float(x1))) * f(scale), f(_c_round(float(y1))) * f(scale)
        ew, eh = f(_c_round(float(x2)) + 1) * f(scale), f(_c_round(float(y2)) + 1) * f(scale)
        bh, bw = f(max(eh - sh, 0.1)) / f(gs), f(max(ew - sw, 0.1)) / f(gs)
        for ct in range(od):
            for ph in range(gs):
                for pw in range(gs):
                    hs = min(max(math.floor(f(ph) * bh + sh), 0), h)
                    he = min(max(math.ceil(f(ph + 1) * bh + sh), 0), h)
                    ws = min(max(math.floor(f(pw) * bw + sw), 0), w)
                    we = min(max(math.ceil(f(pw + 1) * bw + sw), 0), w)
                    if he > hs and we > ws:
                        top[r, ct, ph, pw] = x[int(b), (ct * gs + ph) * gs + pw, hs:he, ws:we].mean()
    return top


def _psroi_layer(od: int, gs: int, scale: float = 0.5) -> str:
    return _layer("ps", "PSROIPooling", f"psroi_pooling_param {{ output_dim: {od} group_size: {gs} "
                                        f"spatial_scale: {scale} }}", ("data", "rois"))


@pytest.mark.parametrize("od,gs", [(2, 3), (3, 1), (1, 4)])
def test_psroi_pooling_forward_matches_the_forks_kernel_and_opencv(tmp_path, od: int, gs: int) -> None:
    x = _x((2, od * gs * gs, 8, 9), 4)
    inputs = {"data": x.shape, "rois": PS_ROIS.shape}
    spec = make_net(_psroi_layer(od, gs), inputs)
    got = forward(spec, {}, {"data": x, "rois": PS_ROIS}, ["ps"])["ps"]
    assert relative_error(got, _psroi_reference(x, PS_ROIS, od, gs, 0.5)) < 1e-5
    assert np.all(got[3] == 0)
    cv = opencv_forward(tmp_path, _psroi_layer(od, gs), inputs, {}, {"data": x, "rois": PS_ROIS}, ["ps"])[0]
    assert relative_error(got, cv) < 1e-4


def test_psroi_pooling_backward_by_finite_differences() -> None:
    x = _x((2, 2 * 9, 8, 9), 5)
    spec = make_net(_psroi_layer(2, 3), {"data": x.shape, "rois": PS_ROIS.shape}, caffe_pb2.TRAIN)
    check_layer_gradients(spec, {}, {"data": x, "rois": PS_ROIS}, ["ps"], wrt=["data"], samples=60)


def test_psroi_pooling_checks_the_channel_count() -> None:
    with pytest.raises(CaffeCompatError, match="output_dim \\* group_size\\^2 = 18"):
        make_net(_psroi_layer(2, 3), {"data": (1, 17, 8, 9), "rois": PS_ROIS.shape})
    with pytest.raises(CaffeCompatError, match="psroi_pooling_param needs spatial_scale \\(required"):
        make_net(_layer("ps", "PSROIPooling", "psroi_pooling_param { output_dim: 2 group_size: 3 }",
                        ("data", "rois")), {"data": (1, 18, 8, 9), "rois": PS_ROIS.shape})


# ------------------------------------------------------------------------------------ one-bottom Upsample


@pytest.mark.parametrize("extra,factor", [("", 2), ("upsample_param { scale: 3 }", 3),
                                          ("upsample_param { scale: 1 }", 1)])
def test_one_bottom_upsample_copies_each_cell_to_a_block(extra: str, factor: int) -> None:
    x = _x((2, 3, 4, 5), 6)
    spec = make_net(_layer("up", "Upsample", extra), {"data": x.shape}, caffe_pb2.TRAIN)
    got = forward(spec, {}, {"data": x}, ["up"])["up"]
    # The YOLOv3 port's loop: top[n][c][i][j] = bottom[n][c][i / s][j / s].
    want = np.zeros((2, 3, 4 * factor, 5 * factor), np.float32)
    for i in range(4 * factor):
        for j in range(5 * factor):
            want[:, :, i, j] = x[:, :, i // factor, j // factor]
    assert np.array_equal(got, want)
    check_layer_gradients(spec, {}, {"data": x}, ["up"], samples=20)


def test_one_bottom_upsample_reads_stride() -> None:
    x = _x((1, 2, 3, 3), 7)
    spec = make_net(_layer("up", "Upsample", "upsample_param { stride: 2 }"), {"data": x.shape})
    assert np.array_equal(forward(spec, {}, {"data": x}, ["up"])["up"], x.repeat(2, axis=2).repeat(2, axis=3))


# ------------------------------------------------------------------------------------------ Reorg, Region



def _reorg_reference(x: np.ndarray, s: int, forward_: bool) -> np.ndarray:
    """Darknet's reorg_cpu(x, w, h, c, batch, stride, forward, out), its index arithmetic as written."""
    batch, c, h, w = x.shape
    out, flat, out_c = np.zeros(x.size, np.float32), x.reshape(-1), c // (s * s)
    for b in range(batch):
        for k in range(c):
            for j in range(h):
                for i in range(w):
                    in_index = i + w * (j + h * (k + c * b))
                    c2, offset = k % out_c, k // out_c
                    w2, h2 = i * s + offset % s, j * s + offset // s
                    out_index = w2 + w * s * (h2 + h * s * (c2 + out_c * b))
                    if forward_:
                        out[out_index] = flat[in_index]
                    else:
                        out[in_index] = flat[out_index]
    return out


@pytest.mark.parametrize("stride,reverse,shape", [(2, False, (2, 8, 6, 4)), (2, True, (2, 8, 3, 2)),
                                                  (3, False, (1, 18, 6, 3))])
def test_reorg_follows_darknets_index_mapping(stride: int, reverse: bool, shape: tuple[int, ...]) -> None:
    x = _x(shape, 8)
    text = f"reorg_param {{ stride: {stride} reverse: {str(reverse).lower()} }}"
    spec = make_net(_layer("r", "Reorg", text), {"data": shape}, caffe_pb2.TRAIN)
    got = forward(spec, {}, {"data": x}, ["r"])["r"]
    # The ports call reorg_cpu with forward = reverse.
    assert np.array_equal(got.reshape(-1), _reorg_reference(x, stride, reverse))
    check_layer_gradients(spec, {}, {"data": x}, ["r"], samples=20)


def _region_reference(x: np.ndarray, classes: int, coords: int, num: int, softmax: bool,
                      background: bool) -> np.ndarray:
    """forward_region_layer's activations, anchor by anchor."""
    n, _, h, w = x.shape
    out = x.astype(np.float64).reshape(n, num, coords + 1 + classes, h, w)

    def logistic(v: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-v))

    out[:, :, :2] = logistic(out[:, :, :2])
    if not background:
        out[:, :, coords] = logistic(out[:, :, coords])
    first = coords + (0 if background else 1)
    if softmax:
        e = np.exp(out[:, :, first:] - out[:, :, first:].max(axis=2, keepdims=True))
        out[:, :, first:] = e / e.sum(axis=2, keepdims=True)
    else:
        out[:, :, coords + 1:] = logistic(out[:, :, coords + 1:])
    return out.reshape(x.shape)


@pytest.mark.parametrize("classes,coords,num,softmax,background",
                         [(3, 4, 2, True, False), (3, 4, 2, False, False), (2, 4, 3, True, True),
                          (4, 5, 1, True, False)])
def test_region_activations_follow_darknet(classes: int, coords: int, num: int, softmax: bool,
                                           background: bool) -> None:
    shape = (2, num * (coords + 1 + classes), 3, 4)
    x = _x(shape, 9) * 3
    text = (f"region_param {{ classes: {classes} coords: {coords} num: {num} softmax: {int(softmax)} "
            f"background: {int(background)} }}")
    spec = make_net(_layer("g", "Region", text), {"data": shape})
    got = forward(spec, {}, {"data": x}, ["g"])["g"]
    assert relative_error(got, _region_reference(x, classes, coords, num, softmax, background)) < 1e-5
    train = make_net(_layer("g", "Region", text), {"data": shape}, caffe_pb2.TRAIN)
    with pytest.raises(NotSupportedError, match="Region backward \\(YOLOv2 training\\)"):
        net_backward(train, {}, {"data": x}, {train.blob_values["g"]: x})


def test_bn_statistics_in_the_solver() -> None:
    from caffecompat.formats.protofile import parse_text
    from caffecompat.solver.loop import Solver

    text = ('layer { name: "d" type: "DummyData" top: "data" top: "target" dummy_data_param { '
            'shape { dim: 2 dim: 3 dim: 2 dim: 2 } shape { dim: 2 dim: 3 dim: 2 dim: 2 } '
            'data_filler { type: "constant" value: 3 } data_filler { type: "constant" value: 1 } } }\n'
            + _layer("bn", "BN", f"bn_param {{ {BN_FILLERS} momentum: 0.75 }}")
            + 'layer { name: "loss" type: "EuclideanLoss" bottom: "bn" bottom: "target" top: "loss" }\n')
    param = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy="fixed", max_iter=2, display=0, weight_decay=0.5,
                                      snapshot_after_train=False, random_seed=1)
    param.net_param.CopyFrom(parse_text(text, caffe_pb2.NetParameter, "bn_solver.prototxt", "net"))
    solver = Solver(param, "bn solver")
    try:
        solver.solve()
        mean, var = np.array(solver.value("bn#2")), np.array(solver.value("bn#3"))
    finally:
        solver.close()
    # Batch mean 3, batch variance 0, twice: 0.25 * 3 + 0.75 * (0.25 * 3); no weight decay on the statistics.
    assert np.allclose(mean, 0.25 * 3 * 1.75) and np.all(var == 0)


def test_segnets_bn_is_refused_not_run_as_pspnets() -> None:
    with pytest.raises(NotSupportedError, match="bn_param.bn_mode: that is SegNet's BN"):
        make_net(_layer("bn", "BN", "bn_param { bn_mode: INFERENCE }"), {"data": (1, 2, 3, 3)})


@pytest.mark.parametrize("frozen", [False, True])
def test_bn_written_net_records_the_forced_param_specs(frozen: bool) -> None:
    from caffecompat.solver.snapshot import net_to_proto

    extra = f'param {{ lr_mult: 2 decay_mult: 3 }} bn_param {{ {BN_FILLERS} frozen: {str(frozen).lower()} }}'
    spec = make_net(_layer("bn", "BN", extra), {"data": (1, 2, 3, 3)}, caffe_pb2.TRAIN)
    params = random_params(spec)
    (layer,) = [lp for lp in net_to_proto(spec, params).layer if lp.type == "BN"]
    got = [(p.lr_mult, p.decay_mult) for p in layer.param]
    # BNLayer::LayerSetUp pads the specs to four and zeroes what it forces; the user's first spec stays otherwise.
    assert got == ([(0, 0)] * 4 if frozen else [(2, 3), (1, 1), (0, 0), (0, 0)])
