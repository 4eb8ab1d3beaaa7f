"""LRN, BatchNorm and MVN: forward against Caffe's formulas and OpenCV, Backward against central differences
and Caffe's own backward formulas."""

from __future__ import annotations

import numpy as np
import pytest

from caffecompat.errors import CaffeCompatError, NotSupportedError
from caffecompat.layers.batch_norm import batchnorm_update
from caffecompat.proto import caffe_pb2
from tests.gradients import check_layer_gradients, net_backward
from tests.layer_nets import layer_blobs, make_net, opencv_forward, run

RNG = np.random.default_rng(7)


def close(ours: np.ndarray, ref: np.ndarray, tol: float = 1e-4) -> None:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    err = np.abs(ours.astype(np.float64) - ref).max() / max(1.0, float(np.abs(ref).max()))
    assert err < tol, err


# -- LRN ---------------------------------------------------------------------

def lrn_across(x: np.ndarray, size: int, alpha: float, beta: float, k: float) -> np.ndarray:
    # Caffe: scale = k + alpha/size * sum of x^2 over channels [c - (size-1)/2, c + (size-1)/2].
    pre = (size - 1) // 2
    sq = np.pad(x.astype(np.float64) ** 2, ((0, 0), (pre, pre), (0, 0), (0, 0)))
    c = x.shape[1]
    s = np.stack([sq[:, i:i + size].sum(axis=1) for i in range(c)], axis=1)
    return x * (k + alpha / size * s) ** -beta


def lrn_within(x: np.ndarray, size: int, alpha: float, beta: float) -> np.ndarray:
    # Caffe: AVE pool of x^2 (size x size, pad (size-1)/2, divisor size^2), then (1 + alpha * avg)^-beta.
    pre = (size - 1) // 2
    h, w = x.shape[2:]
    sq = np.pad(x.astype(np.float64) ** 2, ((0, 0), (0, 0), (pre, pre), (pre, pre)))
    avg = np.zeros(x.shape)
    for i in range(h):
        for j in range(w):
            avg[:, :, i, j] = sq[:, :, i:i + size, j:j + size].sum(axis=(2, 3)) / size ** 2
    return x * (1 + alpha * avg) ** -beta


@pytest.mark.parametrize("size,k", [(3, 1.0), (5, 2.0), (1, 1.0), (7, 1.5)])
def test_lrn_across_channels(size, k, tmp_path):
    x = RNG.normal(size=(2, 6, 4, 5)).astype(np.float32) * 3
    layers = f'layer {{ name: "n" type: "LRN" bottom: "x" top: "y" lrn_param {{ local_size: {size} ' \
             f'alpha: 0.3 beta: 0.75 k: {k} }} }}'
    spec = make_net(layers, {"x": x.shape})
    y = run(spec, {}, {"x": x}, ["y"])["y"]
    close(y, lrn_across(x, size, 0.3, 0.75, k))
    if k != 1.0:
        return  # OpenCV's importer does not apply Caffe's k (the golden zoo_misc net covers k)
    (cv,) = opencv_forward(tmp_path, layers, {"x": x.shape}, {}, {"x": x}, ["y"])
    close(y, cv)


@pytest.mark.parametrize("size", [3, 5])
def test_lrn_within_channel(size):
    x = RNG.normal(size=(2, 3, 6, 5)).astype(np.float32) * 2
    layers = f'layer {{ name: "n" type: "LRN" bottom: "x" top: "y" lrn_param {{ local_size: {size} ' \
             'alpha: 0.5 beta: 0.6 k: 3 norm_region: WITHIN_CHANNEL } }'
    y = run(make_net(layers, {"x": x.shape}), {}, {"x": x}, ["y"])["y"]
    close(y, lrn_within(x, size, 0.5, 0.6))


def test_lrn_checks():
    with pytest.raises(CaffeCompatError, match="odd"):
        make_net('layer { name: "n" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 4 } }',
                 {"x": (1, 4, 2, 2)})
    with pytest.raises(CaffeCompatError, match="4-axis"):
        make_net('layer { name: "n" type: "LRN" bottom: "x" top: "y" }', {"x": (2, 4)})


@pytest.mark.parametrize("region,size,k", [("ACROSS_CHANNELS", 3, 1.0), ("ACROSS_CHANNELS", 5, 2.0),
                                           ("ACROSS_CHANNELS", 1, 1.0), ("ACROSS_CHANNELS", 7, 1.5),
                                           ("WITHIN_CHANNEL", 3, 1.0), ("WITHIN_CHANNEL", 5, 4.0)])
def test_lrn_backward(region, size, k):
    # LRNLayer::CrossChannelBackward, and for WITHIN_CHANNEL the chain of its internal layers' Backwards.
    x = RNG.normal(size=(2, 6, 4, 3)).astype(np.float32) * 2
    layers = (f'layer {{ name: "n" type: "LRN" bottom: "x" top: "y" lrn_param {{ local_size: {size} alpha: 0.7 '
              f'beta: 0.8 k: {k} norm_region: {region} }} }}')
    check_layer_gradients(make_net(layers, {"x": x.shape}, caffe_pb2.TRAIN), {}, {"x": x})


@pytest.mark.parametrize("region,size,k", [("ACROSS_CHANNELS", 3, 1.0), ("ACROSS_CHANNELS", 5, 2.0),
                                           ("WITHIN_CHANNEL", 3, 1.0)])
def test_lrn_backward_precise(region, size, k):
    # ORT has no float64 AveragePool, so the check above runs in float32 at 1e-2: here our diff meets
    # float64 central differences of the numpy forward at 1e-4 (Caffe's LRN backward is the derivative).
    x = RNG.normal(size=(1, 5, 3, 2)) * 2
    dy = RNG.normal(size=x.shape)
    layers = (f'layer {{ name: "n" type: "LRN" bottom: "x" top: "y" lrn_param {{ local_size: {size} alpha: 0.7 '
              f'beta: 0.8 k: {k} norm_region: {region} }} }}')
    spec = make_net(layers, {"x": x.shape}, caffe_pb2.TRAIN)
    _, _, bdiffs = net_backward(spec, {}, {"x": x}, {"y": dy})

    def loss(v: np.ndarray) -> float:
        y = lrn_across(v, size, 0.7, 0.8, k) if region == "ACROSS_CHANNELS" else lrn_within(v, size, 0.7, 0.8)
        return float((y * dy).sum())

    numeric = np.zeros(x.size)
    for i in range(x.size):
        step = np.zeros(x.size)
        step[i] = 1e-6
        numeric[i] = (loss(x + step.reshape(x.shape)) - loss(x - step.reshape(x.shape))) / 2e-6
    close(bdiffs["x"].reshape(-1), numeric)


def test_lrn_in_place_backward_is_refused():
    layers = 'layer { name: "n" type: "LRN" bottom: "x" top: "x" lrn_param { local_size: 3 } }'
    spec = make_net(layers, {"x": (1, 4, 2, 2)}, caffe_pb2.TRAIN)
    with pytest.raises(NotSupportedError, match="in place"):
        net_backward(spec, {}, {spec.inputs[0]: np.ones((1, 4, 2, 2), np.float32)})


# -- BatchNorm -----------------------------------------------------------------

BN = 'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" batch_norm_param { eps: 0.001 } }'


@pytest.mark.parametrize("factor", [1.7, 0.0])
def test_batchnorm_global_stats(factor, tmp_path):
    x = RNG.normal(size=(2, 3, 4, 4)).astype(np.float32)
    spec = make_net(BN, {"x": x.shape})
    mean = RNG.normal(size=3).astype(np.float32)
    var = RNG.uniform(0.5, 2, size=3).astype(np.float32)
    params = {"bn#0": mean, "bn#1": var, "bn#2": np.array([factor], np.float32)}
    y = run(spec, params, {"x": x}, ["y"])["y"]
    s = 0.0 if factor == 0 else 1.0 / factor
    ref = (x - (mean * s)[:, None, None]) / np.sqrt((var * s)[:, None, None] + 0.001)
    close(y, ref)
    if factor:
        (cv,) = opencv_forward(tmp_path, BN, {"x": x.shape}, layer_blobs(spec, params), {"x": x}, ["y"])
        close(y, cv)


def test_batchnorm_2d_input():
    x = RNG.normal(size=(4, 3)).astype(np.float32)
    spec = make_net(BN, {"x": x.shape})
    params = {"bn#0": np.ones(3, np.float32), "bn#1": np.full(3, 4.0, np.float32), "bn#2": np.ones(1, np.float32)}
    close(run(spec, params, {"x": x}, ["y"])["y"], (x - 1) / np.sqrt(4.001))


def test_batchnorm_params_are_statistics():
    spec = make_net(BN, {"x": (2, 3, 2, 2)})
    assert [spec.params[f"bn#{i}"].shape for i in range(3)] == [(3,), (3,), (1,)]
    assert all(spec.params[f"bn#{i}"].lr_mult == 0 for i in range(3))
    with pytest.raises(CaffeCompatError, match="lr_mult"):
        make_net(BN.replace('top: "y"', 'top: "y" param { lr_mult: 1 }'), {"x": (2, 3, 2, 2)})


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_batch_stats(training):
    # At TRAIN (use_global_stats defaults to false) the layer normalizes with the batch statistics
    # and exposes them; the stored blobs are not read.
    x = (RNG.normal(size=(3, 2, 3, 4)) * 2 + 1).astype(np.float32)
    spec = make_net(BN, {"x": x.shape}, caffe_pb2.TRAIN)
    params = {"bn#0": np.full(2, 100.0, np.float32), "bn#1": np.full(2, 100.0, np.float32),
              "bn#2": np.ones(1, np.float32)}
    out = run(spec, params, {"x": x}, ["y"], training=training)
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    close(out["y"], (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 0.001))
    side = {o: v for o, v in out.items() if o != "y"}
    assert len(side) == 2
    values = sorted(side.values(), key=lambda v: float(np.abs(v - mean).max()))
    close(values[0], mean, 1e-5)
    close(values[1], var, 1e-5)


def test_batchnorm_use_global_stats_at_train():
    x = RNG.normal(size=(2, 2, 2, 2)).astype(np.float32)
    layers = BN.replace("eps: 0.001", "eps: 0.001 use_global_stats: true")
    spec = make_net(layers, {"x": x.shape}, caffe_pb2.TRAIN)
    params = {"bn#0": np.zeros(2, np.float32), "bn#1": np.ones(2, np.float32), "bn#2": np.ones(1, np.float32)}
    out = run(spec, params, {"x": x}, ["y"], training=True)
    assert list(out) == ["y"]
    close(out["y"], x / np.sqrt(1.001))


@pytest.mark.parametrize("shape,in_place", [((4, 3, 2, 2), False), ((4, 3, 2, 2), True), ((5, 3), False),
                                            ((6,), False)])
def test_batchnorm_backward_batch_statistics(shape, in_place):
    # BatchNormLayer::Backward_cpu with batch statistics: dx = (dy - mean(dy) - mean(dy * y) * y) / std,
    # the exact derivative of the forward; in place, Caffe keeps the normalized top for it.
    x = (RNG.normal(size=shape) * 2 + 0.5).astype(np.float32)
    layers = BN.replace('top: "y"', 'top: "x"') if in_place else BN
    spec = make_net(layers, {"x": shape}, caffe_pb2.TRAIN)
    params = {"bn#0": np.zeros(spec.params["bn#0"].shape, np.float32),
              "bn#1": np.ones(spec.params["bn#1"].shape, np.float32), "bn#2": np.ones(1, np.float32)}
    # In place the input blob's first value has its own name.
    ours = check_layer_gradients(spec, params, {spec.inputs[0]: x}, wrt=spec.inputs)
    # Caffe computes no diff for the statistics blobs.
    assert all(not ours[f"bn#{i}"].any() for i in range(3))


@pytest.mark.parametrize("factor", [2.5, 0.0])
def test_batchnorm_backward_global_stats(factor):
    # use_global_stats: dx = dy / sqrt(var / factor + eps) (the stored statistics are constants).
    x = RNG.normal(size=(2, 3, 2, 2)).astype(np.float32)
    spec = make_net(BN.replace("eps: 0.001", "eps: 0.001 use_global_stats: true"), {"x": x.shape},
                    caffe_pb2.TRAIN)
    var = RNG.uniform(0.5, 2, size=3).astype(np.float32)
    params = {"bn#0": RNG.normal(size=3).astype(np.float32), "bn#1": var, "bn#2": np.array([factor], np.float32)}
    dy = RNG.normal(size=x.shape).astype(np.float32)
    _, pdiffs, bdiffs = net_backward(spec, params, {"x": x}, {"y": dy})
    s = 0.0 if factor == 0 else 1.0 / factor
    close(bdiffs["x"], dy / np.sqrt(var * s + 0.001)[:, None, None], 1e-6)
    check_layer_gradients(spec, params, {"x": x}, wrt=["x"])


def test_batchnorm_update():
    mean, var, factor = np.array([1.0, 2.0], np.float32), np.array([4.0, 8.0], np.float32), np.array([2.0], np.float32)
    blobs = [mean, var, factor]
    batch_mean, batch_var = np.array([0.5, -1.0]), np.array([3.0, 6.0])
    batchnorm_update(blobs, batch_mean, batch_var, count_m=4, moving_average_fraction=0.9)
    assert blobs[0] is mean  # in place
    np.testing.assert_allclose(factor, [2.0 * 0.9 + 1])
    np.testing.assert_allclose(mean, [0.5 + 0.9 * 1.0, -1.0 + 0.9 * 2.0], rtol=1e-6)
    # Unbiased batch variance (m / (m - 1)) for the moving average.
    np.testing.assert_allclose(var, [3.0 * 4 / 3 + 0.9 * 4.0, 6.0 * 4 / 3 + 0.9 * 8.0], rtol=1e-6)
    blobs = [np.zeros(1, np.float32), np.zeros(1, np.float32), np.zeros(1, np.float32)]
    batchnorm_update(blobs, np.array([1.0]), np.array([2.0]), count_m=1, moving_average_fraction=0.999)
    np.testing.assert_allclose([b[0] for b in blobs], [1.0, 2.0, 1.0])


# -- MVN -----------------------------------------------------------------------

def mvn(x: np.ndarray, normalize_variance: bool, across: bool, eps: float) -> np.ndarray:
    axes = (1, 2, 3) if across else (2, 3)
    x = x.astype(np.float64)
    c = x - x.mean(axis=axes, keepdims=True)
    if not normalize_variance:
        return c
    # MVNLayer: eps is added to the standard deviation, not to the variance.
    return c / (np.sqrt((c ** 2).mean(axis=axes, keepdims=True)) + eps)


@pytest.mark.parametrize("norm,across", [(True, False), (True, True), (False, False), (False, True)])
def test_mvn(norm, across, tmp_path):
    x = (RNG.normal(size=(2, 3, 4, 5)) * 0.01 + 0.3).astype(np.float32)
    layers = f'layer {{ name: "m" type: "MVN" bottom: "x" top: "y" mvn_param {{ normalize_variance: ' \
             f'{str(norm).lower()} across_channels: {str(across).lower()} eps: 0.01 }} }}'
    y = run(make_net(layers, {"x": x.shape}), {}, {"x": x}, ["y"])["y"]
    # Small variances: eps placement (after the square root, as Caffe) matters here.
    close(y, mvn(x, norm, across, 0.01))
    # OpenCV puts eps inside the square root: compare with it where eps is negligible.
    x = RNG.normal(size=(2, 3, 4, 5)).astype(np.float32)
    layers = layers.replace("eps: 0.01", "eps: 1e-9")
    y = run(make_net(layers, {"x": x.shape}), {}, {"x": x}, ["y"])["y"]
    (cv,) = opencv_forward(tmp_path, layers, {"x": x.shape}, {}, {"x": x}, ["y"])
    close(y, cv)


def test_mvn_2d_input():
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    layers = 'layer { name: "m" type: "MVN" bottom: "x" top: "y" mvn_param { across_channels: true } }'
    y = run(make_net(layers, {"x": x.shape}), {}, {"x": x}, ["y"])["y"]
    close(y, mvn(x[:, :, None, None], True, True, 1e-9)[:, :, 0, 0])


MVN = 'layer {{ name: "m" type: "MVN" bottom: "x" top: "{top}" mvn_param {{ normalize_variance: {norm} ' \
      'across_channels: {across} eps: {eps} }} }}'


@pytest.mark.parametrize("shape", [(2, 3, 3, 4), (3, 5)])
@pytest.mark.parametrize("norm,across", [(True, False), (True, True), (False, False), (False, True)])
def test_mvn_backward(shape, norm, across):
    # With a negligible eps Caffe's backward is the derivative of its forward.
    x = RNG.normal(size=shape).astype(np.float32)
    layers = MVN.format(top="y", norm=str(norm).lower(), across=str(across).lower(), eps=1e-9)
    check_layer_gradients(make_net(layers, {"x": shape}, caffe_pb2.TRAIN), {}, {"x": x})


def mvn_backward(x: np.ndarray, dy: np.ndarray, across: bool, eps: float) -> np.ndarray:
    """MVNLayer::Backward_cpu's rule with variance: eps enters only through the divisor std + eps."""
    axes = (1, 2, 3) if across else (2, 3)
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    c = x - x.mean(axis=axes, keepdims=True)
    denom = np.sqrt((c ** 2).mean(axis=axes, keepdims=True)) + eps
    y = c / denom
    return (dy - dy.mean(axis=axes, keepdims=True) - (dy * y).mean(axis=axes, keepdims=True) * y) / denom


@pytest.mark.parametrize("across", [False, True])
def test_mvn_backward_is_caffes_rule(across):
    # With a large eps Caffe's backward is not the derivative of its forward: it must match Caffe's rule.
    x = RNG.normal(size=(2, 3, 4, 4)).astype(np.float32) * 0.3
    dy = RNG.normal(size=x.shape).astype(np.float32)
    layers = MVN.format(top="y", norm="true", across=str(across).lower(), eps=0.2)
    _, _, bdiffs = net_backward(make_net(layers, {"x": x.shape}, caffe_pb2.TRAIN), {}, {"x": x}, {"y": dy})
    close(bdiffs["x"], mvn_backward(x, dy, across, 0.2), 1e-5)


def test_mvn_in_place():
    # Without variance Caffe's in-place backward is right; with variance it reads a diff it overwrote.
    x = RNG.normal(size=(2, 3, 2, 2)).astype(np.float32)
    spec = make_net(MVN.format(top="x", norm="false", across="false", eps=1e-9), {"x": x.shape}, caffe_pb2.TRAIN)
    check_layer_gradients(spec, {}, {spec.inputs[0]: x})
    spec = make_net(MVN.format(top="x", norm="true", across="false", eps=1e-9), {"x": x.shape}, caffe_pb2.TRAIN)
    with pytest.raises(NotSupportedError, match="in place"):
        net_backward(spec, {}, {spec.inputs[0]: x})


# -- golden: one TRAIN forward/backward of train/net_bn.prototxt by Caffe ---------------------------

def test_batchnorm_training_matches_caffe(golden):
    """Batch-statistics forward, the moving-average update and the gradients of Caffe's grad_bn run."""
    from caffecompat.formats.blob import blob_to_array, read_blob_vector
    from caffecompat.formats.caffemodel import read_caffemodel
    from caffecompat.formats.net import read_net_prototxt
    from caffecompat.net.export import export
    from caffecompat.net.spec import build
    from caffecompat.runtime.forward import forward_loss

    train = golden / "train"
    names = (train / "grad_bn" / "blob_names.txt").read_text().split()
    blobs = dict(zip(names, read_blob_vector(train / "grad_bn" / "blobs.binaryproto")))
    # The recorded data/label batch replaces the Data layer; Accuracy is TEST-only anyway.
    net = read_net_prototxt(train / "net_bn.prototxt")
    fed = caffe_pb2.NetParameter(name=net.name)
    data = fed.layer.add(name="data", type="Input", top=["data", "label"])
    for n in ("data", "label"):
        data.input_param.shape.add().dim.extend(blobs[n].shape)
    for lp in net.layer:
        if lp.type not in ("Data", "Accuracy"):
            fed.layer.add().CopyFrom(lp)
    spec = build(fed, caffe_pb2.TRAIN)

    def by_layer(path):
        return {lp.name: lp.blobs for lp in read_caffemodel(path).layer}

    init, after = by_layer(train / "init_bn.caffemodel"), by_layer(train / "grad_bn" / "params_with_diff.caffemodel")
    params = {p: blob_to_array(init[n.name][i]).reshape(n.param_shapes[i])
              for n in spec.layers for i, p in enumerate(n.param_names)}
    outs = [spec.blob_values[b] for b in names[2:]]
    feeds = {"data": blobs["data"], "label": blobs["label"]}
    exported = export(spec, params=params, outputs=outs, training=True)
    res = run(spec, params, feeds, outs, training=True)
    for b in names[2:]:
        close(np.reshape(res[spec.blob_values[b]], blobs[b].shape), blobs[b], 1e-5)

    for layer in ("bn1", "bn2"):
        stats = {what: res[v] for v, (index, what) in exported.side_outputs.items() if index == spec.layer(layer).index}
        shape = spec.layer(layer).bottom_shapes[0]
        updated = [blob_to_array(b).copy() for b in init[layer]]
        batchnorm_update(updated, stats["mean"], stats["variance"], int(np.prod(shape)) // shape[1], 0.999)
        for i in range(3):
            close(updated[i], blob_to_array(after[layer][i]), 1e-5)

    outputs, grads, _ = net_backward(spec, params, feeds, force_backward=spec.force_backward)
    loss = float(forward_loss(spec, outputs))
    assert abs(loss - float((train / "grad_bn" / "loss.txt").read_text())) < 1e-5 * abs(loss)
    trainable = [p for p, info in spec.params.items() if info.lr_mult != 0]
    for p in trainable:
        layer, i = p.split("#")
        caffe = blob_to_array(after[layer][int(i)], diff=True).reshape(grads[p].shape)
        # A conv bias right before batch-statistics BatchNorm has a true gradient of 0 (both are noise).
        tol = 1e-5 if np.abs(caffe).max() > 1e-6 else 1e-6
        assert np.abs(grads[p] - caffe).max() <= tol * max(1.0, float(np.abs(caffe).max())), p


def test_mvn_constant_plane_gradient_is_finite():
    # A constant plane has variance 0: Caffe divides by 0 + eps, finite.
    x = np.ones((1, 2, 3, 3), np.float32)
    spec = make_net('layer { name: "m" type: "MVN" bottom: "x" top: "y" }', {"x": x.shape}, caffe_pb2.TRAIN)
    dy = RNG.normal(size=x.shape).astype(np.float32)
    out, _, bdiffs = net_backward(spec, {}, {"x": x}, {"y": dy})
    np.testing.assert_array_equal(out["y"], 0)
    assert np.all(np.isfinite(bdiffs["x"]))
    close(bdiffs["x"], (dy - dy.mean(axis=(2, 3), keepdims=True)) / 1e-9, 1e-5)
