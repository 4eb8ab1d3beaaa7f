"""Loss layers: forward against hand-computed numpy, Backward against Caffe's Backward_cpu (hand-written
references, the train/grad golden) and against central differences of the forward."""

from __future__ import annotations

import numpy as np
import pytest

from caffecompat.formats.blob import blob_to_array, read_blob_vector, write_binaryproto
from caffecompat.formats.protofile import parse_text, read_binary
from caffecompat.net.export import LOSS_OUTPUT
from caffecompat.net.spec import build
from caffecompat.proto import caffe_pb2
from tests.gradients import check_layer_gradients, net_backward
from tests.layer_nets import make_net, run_layers

FLT_MIN = np.finfo(np.float32).tiny


def loss_and_diffs(layers: str, feeds: dict[str, np.ndarray], force_backward: bool = True,
                   params: dict[str, np.ndarray] | None = None) -> tuple[dict, dict, dict]:
    """One Forward + Backward of the TRAIN net of `layers` (force_backward as asked): (outputs, param
    diffs, blob diffs); loss tops are seeded with their loss weight."""
    spec = make_net(layers, {k: v.shape for k, v in feeds.items()}, caffe_pb2.TRAIN)
    return net_backward(spec, params or {}, feeds, force_backward=force_backward)


def grad_check(layers: str, feeds: dict[str, np.ndarray], wrt: list[str]) -> None:
    """Central differences of the weighted loss agree with our Backward for the blobs in `wrt`."""
    spec = make_net(layers, {k: v.shape for k, v in feeds.items()}, caffe_pb2.TRAIN)
    check_layer_gradients(spec, {}, feeds, tops=[], wrt=wrt)


def close(ours, ref, rtol=1e-5):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    scale = max(1.0, float(np.abs(ref).max())) if ref.size else 1.0
    err = float(np.abs(ours - ref).max()) / scale if ref.size else 0.0
    assert err <= rtol, f"max error {err} (ours {ours.ravel()[:6]}, ref {ref.ravel()[:6]})"


# -- SoftmaxWithLoss --------------------------------------------------------------

def softmax_ref(x, labels, axis, ignore, mode):
    """Caffe's SoftmaxWithLoss forward and backward, written as loops over positions."""
    x = x.astype(np.float64)
    xm = np.moveaxis(x, axis, -1)
    p = np.exp(xm - xm.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    outer = int(np.prod(x.shape[:axis]))
    inner = int(np.prod(x.shape[axis + 1:]))
    pf = p.reshape(outer, inner, -1)
    lab = labels.reshape(outer, inner).astype(int)
    loss, count = 0.0, 0
    diff = pf.copy()
    for i in range(outer):
        for j in range(inner):
            if ignore is not None and lab[i, j] == ignore:
                diff[i, j] = 0
                continue
            loss -= np.log(max(pf[i, j, lab[i, j]], FLT_MIN))
            diff[i, j, lab[i, j]] -= 1
            count += 1
    norm = {"FULL": outer * inner, "VALID": count, "BATCH_SIZE": outer, "NONE": 1}[mode]
    norm = max(1.0, norm)
    diff = np.moveaxis(diff.reshape(xm.shape), -1, axis) / norm
    return loss / norm, diff, np.moveaxis(p, -1, axis)


@pytest.mark.parametrize("mode", ["VALID", "FULL", "BATCH_SIZE", "NONE", "legacy_false", "legacy_true"])
def test_softmax_with_loss_modes_and_ignore(mode):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 3, 2)).astype(np.float32)
    labels = rng.integers(0, 4, size=(2, 1, 3, 2)).astype(np.float32)
    labels[0, 0, 1, 1] = labels[1, 0, 0, 0] = labels[1, 0, 2, 1] = 255
    if mode.startswith("legacy"):
        lp = f"normalize: {mode == 'legacy_true'}".lower()
        ref_mode = "VALID" if mode == "legacy_true" else "BATCH_SIZE"
    else:
        lp, ref_mode = f"normalization: {mode}", mode
    layers = ('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" top: "prob" '
              f'loss_param {{ ignore_label: 255 {lp} }} }}')
    feeds = {"x": x, "label": labels}
    ref_loss, ref_diff, ref_prob = softmax_ref(x, labels, 1, 255, ref_mode)
    out = run_layers(layers, feeds)
    close(out["loss"], ref_loss)
    close(out[LOSS_OUTPUT], ref_loss)
    close(out["prob"], ref_prob)
    out, _, diffs = loss_and_diffs(layers, feeds)
    close(out["loss"], ref_loss)
    close(diffs["x"], ref_diff)
    assert not diffs["label"].any()  # LossLayer::AllowForceBackward refuses the labels
    grad_check(layers, feeds, ["x"])


def test_softmax_with_loss_axis_and_loss_weight():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 2, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=(3, 2)).astype(np.float32)
    layers = ('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" '
              'loss_weight: 2.5 softmax_param { axis: -1 } }')
    ref_loss, ref_diff, _ = softmax_ref(x, labels, 2, None, "VALID")
    out, _, diffs = loss_and_diffs(layers, {"x": x, "label": labels})
    close(out["loss"], ref_loss)
    close(diffs["x"], 2.5 * ref_diff)
    grad_check(layers, {"x": x, "label": labels}, ["x"])


def test_softmax_with_loss_all_ignored_and_clamp():
    x = np.array([[0.0, 200.0, -300.0], [1.0, 2.0, 3.0]], np.float32)
    labels = np.array([2.0, 7.0], np.float32)
    layers = ('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" '
              'loss_param { ignore_label: 7 } }')
    # prob of class 2 underflows: Caffe's loss is -log(FLT_MIN), its gradient still prob - 1.
    ref_loss, ref_diff, _ = softmax_ref(x, labels, 1, 7, "VALID")
    assert np.isclose(ref_loss, -np.log(FLT_MIN))
    out, _, diffs = loss_and_diffs(layers, {"x": x, "label": labels})
    close(out["loss"], ref_loss)
    close(diffs["x"], ref_diff)
    # Every position ignored: the normalizer is max(1, 0), the loss +0 and the diff 0.
    out, _, diffs = loss_and_diffs(layers, {"x": x, "label": np.array([7.0, 7.0], np.float32)})
    assert float(out["loss"]) == 0.0 and not np.signbit(out["loss"])
    assert not diffs["x"].any()


def test_softmax_with_loss_is_never_negative_or_minus_zero():
    # A certain prediction: prob is exactly 1, log(1) = 0, and Caffe's loss is +0, not -0 or below.
    x = np.array([[0.0, 200.0, -300.0], [90.0, -10.0, 0.0]], np.float32)
    layers = 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" top: "prob" }'
    out = run_layers(layers, {"x": x, "label": np.array([1.0, 0.0], np.float32)})
    assert float(out["loss"]) == 0.0 and not np.signbit(out["loss"])
    assert out["prob"].max() <= 1.0
    # Near-certain predictions over many classes: -log(prob) of the clamped probability is >= 0.
    rng = np.random.default_rng(9)
    x = rng.normal(size=(64, 100)).astype(np.float32)
    labels = rng.integers(0, 100, size=64)
    x[np.arange(64), labels] += rng.uniform(15, 40, size=64).astype(np.float32)
    layers = ('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" '
              'loss_param { normalization: NONE } }')
    out = run_layers(layers, {"x": x, "label": labels.astype(np.float32)})
    assert float(out["loss"]) >= 0.0 and not np.signbit(out["loss"])


def test_softmax_with_loss_through_inner_product():
    rng = np.random.default_rng(3)
    data = rng.normal(size=(4, 6)).astype(np.float32)
    labels = np.array([0, 2, 1, 2], np.float32)
    w = rng.normal(size=(3, 6)).astype(np.float32)
    b = rng.normal(size=(3,)).astype(np.float32)
    text = ('layer { name: "in" type: "Input" top: "data" top: "label" input_param { shape { dim: 4 dim: 6 } '
            'shape { dim: 4 } } }\n'
            'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }\n'
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }')
    spec = build(parse_text(text, caffe_pb2.NetParameter, "t", "net"), caffe_pb2.TRAIN)
    params = {"ip#0": w, "ip#1": b}
    # No force_backward: only the InnerProduct's parameters make the loss need a backward.
    _, pdiffs, diffs = net_backward(spec, params, {"data": data, "label": labels}, force_backward=False)
    # Hand derivation: d loss / d ip = (softmax - onehot) / N, then through the InnerProduct.
    _, dip, _ = softmax_ref(data @ w.T + b, labels, 1, None, "VALID")
    close(diffs["ip"], dip)
    close(pdiffs["ip#0"], dip.T @ data)
    close(pdiffs["ip#1"], dip.sum(0))
    assert not diffs["data"].any()
    check_layer_gradients(spec, params, {"data": data, "label": labels}, tops=[], wrt=["ip#0", "ip#1"])


def test_softmax_with_loss_matches_caffe_golden(golden):
    grad = golden / "train" / "grad"
    names = (grad / "blob_names.txt").read_text().split()
    blobs = dict(zip(names, read_blob_vector(grad / "blobs.binaryproto")))
    vec = read_binary(grad / "blob_diffs.binaryproto", caffe_pb2.BlobProtoVector, "blob diffs")
    ip2_diff = blob_to_array(vec.blobs[names.index("ip2")], diff=True)
    caffe_loss = float((grad / "loss.txt").read_text().split()[0])
    layers = 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }'
    out, _, diffs = loss_and_diffs(layers, {"ip2": blobs["ip2"], "label": blobs["label"]})
    assert abs(float(out["loss"]) - caffe_loss) <= 1e-5 * abs(caffe_loss)
    rel = np.abs(diffs["ip2"] - ip2_diff).max() / np.abs(ip2_diff).max()
    assert rel <= 1e-5


def test_softmax_with_loss_refuses_to_backpropagate_to_labels():
    # Caffe's Backward_cpu aborts when propagate_down asks for the labels' diff.
    layers = ('layer { name: "myloss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" '
              'propagate_down: true propagate_down: true }')
    with pytest.raises(Exception, match="myloss.*cannot backpropagate to the labels"):
        loss_and_diffs(layers, {"x": np.zeros((2, 3), np.float32), "label": np.zeros(2, np.float32)})


# -- SigmoidCrossEntropyLoss ------------------------------------------------------

def sigmoid_ce_ref(x, t, ignore, mode):
    x = x.astype(np.float64).reshape(-1)
    t = t.astype(np.float64).reshape(-1)
    pos = (x >= 0).astype(np.float64)
    terms = x * (t - pos) - np.log1p(np.exp(x - 2 * x * pos))
    valid = np.ones_like(x) if ignore is None else (t.astype(int) != ignore).astype(np.float64)
    outer = 2
    norm = max(1.0, {"VALID": valid.sum(), "BATCH_SIZE": outer, "FULL": x.size, "NONE": 1}[mode])
    diff = (1 / (1 + np.exp(-x)) - t) * valid / norm
    return -(terms * valid).sum() / norm, diff


@pytest.mark.parametrize("lp,mode", [("", "BATCH_SIZE"), ("ignore_label: -1 normalization: VALID", "VALID"),
                                     ("normalize: true ignore_label: -1", "VALID"), ("normalization: FULL", "FULL"),
                                     ("normalize: false", "BATCH_SIZE"), ("normalization: NONE", "NONE")])
def test_sigmoid_cross_entropy(lp, mode):
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(2, 3, 2)) * 4).astype(np.float32)
    x[0, 0, 0] = 0.0  # Caffe's gradient at exactly 0 is 0.5 - t
    x[1, 2, 1] = 40.0
    t = rng.integers(0, 2, size=(2, 6)).astype(np.float32)
    t[1, 3] = -1.0
    ignore = -1 if "ignore" in lp else None
    if ignore is None:
        t[1, 3] = 0.0
    layers = ('layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "loss" '
              f'loss_weight: 1.5 loss_param {{ {lp} }} }}')
    ref_loss, ref_diff = sigmoid_ce_ref(x, t, ignore, mode)
    out, _, diffs = loss_and_diffs(layers, {"x": x, "t": t})
    close(out["loss"], ref_loss)
    close(diffs["x"].reshape(-1), 1.5 * ref_diff)
    assert not diffs["t"].any()
    grad_check(layers, {"x": x, "t": t}, ["x"])


# -- EuclideanLoss, HingeLoss -----------------------------------------------------------

def test_euclidean_loss_gradients_to_both_bottoms():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(3, 4)).astype(np.float32)
    b = rng.normal(size=(3, 2, 2)).astype(np.float32)
    layers = 'layer { name: "loss" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss" loss_weight: 0.7 }'
    diff = a.astype(np.float64) - b.reshape(3, 4)
    # EuclideanLossLayer::AllowForceBackward: force_backward reaches both bottoms.
    out, _, diffs = loss_and_diffs(layers, {"a": a, "b": b})
    close(out["loss"], (diff ** 2).sum() / 3 / 2)
    close(diffs["a"], 0.7 * diff / 3)
    close(diffs["b"], -0.7 * diff.reshape(3, 2, 2) / 3)
    grad_check(layers, {"a": a, "b": b}, ["a", "b"])


def hinge_ref(x, labels, norm):
    sign = np.ones_like(x, dtype=np.float64)
    sign[np.arange(len(x)), labels.astype(int)] = -1
    m = np.maximum(0, 1 + sign * x)
    if norm == "L1":
        return m.sum() / len(x), np.sign(m) * sign / len(x)
    return (m ** 2).sum() / len(x), 2 * m * sign / len(x)


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss(norm):
    # Margins at exactly 0 (x = -1 off the label, x = 1 on it): Caffe's L1 diff there is sign(0) = 0.
    x = np.array([[0.5, -2.0, 0.0, 1.0], [2.0, 1.5, -1.0, -0.25], [0.2, 0.1, 1.0, -1.0]], np.float32)
    labels = np.array([0, 1, 2], np.float32)
    layers = ('layer { name: "loss" type: "HingeLoss" bottom: "x" bottom: "label" top: "loss" loss_weight: 0.9 '
              f'hinge_loss_param {{ norm: {norm} }} }}')
    ref, diff = hinge_ref(x, labels, norm)
    out, _, diffs = loss_and_diffs(layers, {"x": x, "label": labels})
    close(out["loss"], ref)
    close(diffs["x"], 0.9 * diff)
    assert not diffs["label"].any()
    # Central differences away from the kinks: 4-D scores (one label per item), no margin near 0.
    rng = np.random.default_rng(8)
    x = rng.uniform(-3, 3, size=(3, 2, 2, 1)).astype(np.float32)
    x[np.abs(np.abs(x) - 1) < 0.1] = 0.3
    grad_check(layers, {"x": x, "label": np.array([3, 0, 2], np.float32)}, ["x"])


# -- InfogainLoss ----------------------------------------------------------------

def infogain_ref(x, labels, h, ignore=None):
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    loss, count = 0.0, 0
    diff = np.zeros_like(p)
    for i, y in enumerate(labels.astype(int)):
        if y == ignore:
            continue
        loss -= (h[y] * np.log(np.maximum(p[i], 1e-20))).sum()
        diff[i] = p[i] * h[y].sum() - h[y]
        count += 1
    return loss / max(1, count), diff / max(1, count), p


def test_infogain_loss_from_source(tmp_path):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(4, 3)).astype(np.float64)
    x[3] = [0.0, 80.0, -20.0]  # class 2's probability is below 1e-20: clamped in the forward only
    labels = np.array([0, 2, 1, 2], np.float32)
    h = rng.uniform(0, 1, size=(3, 3)).astype(np.float32)
    write_binaryproto(tmp_path / "h.binaryproto", h.reshape(1, 1, 3, 3))
    ref_loss, ref_diff, ref_prob = infogain_ref(x, labels, h.astype(np.float64))
    layers = ('layer { name: "loss" type: "InfogainLoss" bottom: "x" bottom: "label" top: "loss" top: "prob" '
              f'loss_weight: 0.7 loss_weight: 0 infogain_loss_param {{ source: "{tmp_path / "h.binaryproto"}" }} }}')
    out, _, diffs = loss_and_diffs(layers, {"x": x, "label": labels})
    close(out["loss"], ref_loss)
    close(out["prob"], ref_prob)
    close(diffs["x"], 0.7 * ref_diff)
    assert not diffs["label"].any()
    grad_check(layers, {"x": rng.normal(size=(4, 3)), "label": labels}, ["x"])


def test_infogain_loss_spatial_axis_and_normalization(tmp_path):
    rng = np.random.default_rng(10)
    x = rng.normal(size=(2, 3, 2)).astype(np.float32)  # axis 1: 3 classes, inner 2
    labels = np.array([[0, 2], [1, 2]], np.float32)
    h = rng.uniform(0, 1, size=(3, 3)).astype(np.float32)
    write_binaryproto(tmp_path / "h.binaryproto", h.reshape(1, 1, 3, 3))
    layers = ('layer { name: "loss" type: "InfogainLoss" bottom: "x" bottom: "label" top: "loss" '
              'loss_param { normalization: BATCH_SIZE ignore_label: 1 } '
              f'infogain_loss_param {{ source: "{tmp_path / "h.binaryproto"}" axis: 1 }} }}')
    flat = np.moveaxis(x, 1, -1).reshape(4, 3).astype(np.float64)
    ref_loss, ref_diff, _ = infogain_ref(flat, labels.reshape(-1), h.astype(np.float64), ignore=1)
    # infogain_ref normalizes by the valid count (3); BATCH_SIZE divides by outer = 2.
    ref_loss, ref_diff = ref_loss * 3 / 2, np.moveaxis(ref_diff.reshape(2, 2, 3), -1, 1) * 3 / 2
    out, _, diffs = loss_and_diffs(layers, {"x": x, "label": labels})
    close(out["loss"], ref_loss)
    close(diffs["x"], ref_diff)
    grad_check(layers, {"x": x, "label": labels}, ["x"])


def test_infogain_loss_matrix_from_bottom():
    rng = np.random.default_rng(11)
    data = rng.normal(size=(4, 5)).astype(np.float32)
    w = rng.normal(size=(3, 5)).astype(np.float32)
    labels = np.array([0, 2, 1, 2], np.float32)
    h = rng.uniform(0, 1, size=(3, 3)).astype(np.float32)
    layers = ('layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" '
              'inner_product_param { num_output: 3 bias_term: false } }\n'
              'layer { name: "loss" type: "InfogainLoss" bottom: "ip" bottom: "label" bottom: "H" top: "loss" '
              'loss_param { ignore_label: 1 } }')
    feeds = {"x": data, "label": labels, "H": h}
    # Only the InnerProduct's weights need a backward: the matrix bottom gets no diff.
    out, _, diffs = loss_and_diffs(layers, feeds, force_backward=False, params={"ip#0": w})
    ip = data.astype(np.float64) @ w.T.astype(np.float64)
    ref_loss, ref_diff, _ = infogain_ref(ip, labels, h.astype(np.float64), ignore=1)
    close(out["loss"], ref_loss)
    close(diffs["ip"], ref_diff)
    # force_backward reaches the matrix (LossLayer refuses only bottom 1), where Caffe's Backward aborts.
    with pytest.raises(Exception, match="cannot backpropagate to the infogain matrix"):
        loss_and_diffs(layers, feeds, params={"ip#0": w})


# -- ContrastiveLoss ----------------------------------------------------------------

def contrastive_ref(a, b, sim, margin, legacy):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    n = len(a)
    d = a - b
    d2 = (d ** 2).sum(1)
    loss, grad = 0.0, np.zeros_like(a)
    for i in range(n):
        if int(sim[i]):
            loss += d2[i]
            grad[i] = d[i] / n
        elif legacy:
            loss += max(margin - d2[i], 0)
            grad[i] = -d[i] / n if margin - d2[i] > 0 else 0
        else:
            dist = np.sqrt(d2[i])
            mdist = margin - dist
            loss += max(mdist, 0) ** 2
            grad[i] = -mdist / (dist + 1e-4) * d[i] / n if mdist > 0 else 0
    return loss / n / 2, grad


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss(legacy):
    rng = np.random.default_rng(7)
    a = rng.normal(size=(6, 3, 1, 1)).astype(np.float32) * 0.6
    b = rng.normal(size=(6, 3, 1, 1)).astype(np.float32) * 0.6
    b[5] = a[5] + 3.0  # a dissimilar pair beyond the margin: no diff
    # static_cast<int>: 0.5 is dissimilar, 1.5 similar.
    sim = np.array([1, 0, 0, 1.5, 0.5, 0], np.float32).reshape(6, 1, 1, 1)
    layers = ('layer { name: "loss" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "sim" top: "loss" '
              f'loss_weight: 1.3 contrastive_loss_param {{ margin: 1.5 legacy_version: {str(legacy).lower()} }} }}')
    feeds = {"a": a, "b": b, "sim": sim}
    ref_loss, ref_grad = contrastive_ref(a, b, sim.ravel(), 1.5, legacy)
    out, _, diffs = loss_and_diffs(layers, feeds)
    close(out["loss"], ref_loss)
    # Relative to each entry: the +1e-4 in Caffe's dissimilar coefficient must show.
    np.testing.assert_allclose(diffs["a"].reshape(6, 3), 1.3 * ref_grad, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(diffs["b"].reshape(6, 3), -1.3 * ref_grad, rtol=1e-5, atol=1e-8)
    assert not diffs["sim"].any()  # ContrastiveLossLayer::AllowForceBackward refuses only the label
    # Central differences (the non-legacy +1e-4 is within the checker's tolerance at these distances).
    grad_check(layers, feeds, ["a", "b"])


def test_label_count_mismatch_names_the_layer():
    layers = 'layer { name: "myloss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" }'
    with pytest.raises(Exception, match="myloss"):
        make_net(layers, {"x": (2, 3, 4), "label": (2, 3)}, caffe_pb2.TRAIN)
