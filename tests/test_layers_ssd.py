"""SSD's PriorBox and DetectionOutput: against OpenCV's Caffe importer, and DetectionOutput against SSD's
Forward_cpu (decode, ApplyNMSFast, keep_top_k) written out in Python below, loop by loop."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from caffecompat import convert as conv
from caffecompat.errors import CaffeCompatError, NotSupportedError
from caffecompat.net.export import export
from tests.layer_nets import forward, make_net, opencv_forward, relative_error

f32 = np.float32


def _prior_layer(name: str, params: str, bottom: str = "fmap") -> str:
    return (f'layer {{ name: "{name}" type: "PriorBox" bottom: "{bottom}" bottom: "img" top: "{name}" '
            f'prior_box_param {{ {params} }} }}\n')


PRIORS = {
    "ssd": "min_size: 60 max_size: 150 aspect_ratio: 2 aspect_ratio: 3 flip: true clip: false "
           "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 offset: 0.5",
    "clipped": "min_size: 30 min_size: 90 max_size: 60 max_size: 150 aspect_ratio: 2 clip: true variance: 0.1",
    "noflip": "min_size: 45 aspect_ratio: 2 aspect_ratio: 0.5 aspect_ratio: 2 flip: false variance: 0.1 clip: false",
    "stepped": "min_size: 20 aspect_ratio: 1.5 step: 16 offset: 0.25 variance: 0.3 clip: false",
    "stepped_hw": "min_size: 20 step_h: 10 step_w: 12 variance: 0.2 clip: false",
}


def test_prior_boxes_match_opencv(tmp_path):
    # OpenCV's importer clips unless told not to (SSD does not), wants the variances given, and ignores
    # img_size/img_h/img_w (test_prior_box_sizes_are_truncated_to_integers_as_in_ssd covers them).
    pytest.importorskip("cv2")
    net = "".join(_prior_layer(n, p) for n, p in PRIORS.items())
    inputs = {"fmap": (2, 4, 5, 6), "img": (2, 3, 80, 110)}
    spec = make_net(net, inputs)
    feeds = {"fmap": np.zeros(inputs["fmap"], np.float32), "img": np.zeros(inputs["img"], np.float32)}
    ours = forward(spec, {}, feeds, list(PRIORS))
    theirs = dict(zip(PRIORS, opencv_forward(tmp_path, net, inputs, {}, feeds, list(PRIORS))))
    # Per cell: ssd has 1 + 1 + 2 * 2 priors; clipped 2 * (1 + 1 + 2); noflip 1 + 2 (2 is listed twice).
    assert ours["ssd"].shape == (1, 2, 5 * 6 * 6 * 4) and ours["clipped"].shape == (1, 2, 5 * 6 * 8 * 4)
    assert ours["noflip"].shape == (1, 2, 5 * 6 * 3 * 4)
    assert ours["clipped"][0, 0].min() == 0 and ours["clipped"][0, 0].max() == 1
    for name in PRIORS:
        assert ours[name].shape == theirs[name].shape, name
        assert relative_error(ours[name], theirs[name]) < 1e-6, name


def test_prior_box_sizes_are_truncated_to_integers_as_in_ssd():
    # PriorBoxLayer::Forward_cpu keeps min_size and max_size in ints: 30.7 is 30, sqrt(30 * 60) for 60.9. The
    # image size is img_size (or img_h, img_w) when given, not bottom 1's; the variance defaults to 0.1.
    net = (_prior_layer("p", "min_size: 30.7 max_size: 60.9 img_size: 100 step: 10")
           + _prior_layer("q", "min_size: 10 img_h: 50 img_w: 40 step_h: 5 step_w: 4"))
    out = forward(make_net(net, {"fmap": (1, 1, 1, 1), "img": (1, 3, 8, 8)}), {},
                  {"fmap": np.zeros((1, 1, 1, 1), f32), "img": np.zeros((1, 3, 8, 8), f32)}, ["p", "q"])
    side = np.sqrt(30 * 60)
    want = np.array([5 - 15, 5 - 15, 5 + 15, 5 + 15, 5 - side / 2, 5 - side / 2, 5 + side / 2, 5 + side / 2]) / 100
    np.testing.assert_allclose(out["p"][0, 0], want, rtol=1e-6)
    np.testing.assert_allclose(out["p"][0, 1], 0.1)
    np.testing.assert_allclose(out["q"][0, 0], [(2 - 5) / 40, (2.5 - 5) / 50, (2 + 5) / 40, (2.5 + 5) / 50], rtol=1e-6)


# --- DetectionOutput --------------------------------------------------------------------------------------------

def _bbox_size(b: np.ndarray) -> np.float32:
    """SSD's BBoxSize (normalized): 0 for a box with xmax < xmin or ymax < ymin."""
    if b[2] < b[0] or b[3] < b[1]:
        return f32(0)
    return f32((b[2] - b[0]) * (b[3] - b[1]))


def _jaccard(a: np.ndarray, b: np.ndarray) -> np.float32:
    """SSD's JaccardOverlap of two normalized boxes, in float."""
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return f32(0)
    w = f32(min(a[2], b[2]) - max(a[0], b[0]))
    h = f32(min(a[3], b[3]) - max(a[1], b[1]))
    if w > 0 and h > 0:
        inter = f32(w * h)
        return f32(inter / f32(f32(_bbox_size(a) + _bbox_size(b)) - inter))
    return f32(0)


def _decode(prior: np.ndarray, var: np.ndarray, loc: np.ndarray, code: str, in_target: bool) -> np.ndarray:
    """SSD's DecodeBBox of one box, in float."""
    v = np.ones(4, f32) if in_target else var
    if code == "CORNER":
        return prior + v * loc
    pw, ph = f32(prior[2] - prior[0]), f32(prior[3] - prior[1])
    if code == "CORNER_SIZE":
        return prior + v * loc * np.array([pw, ph, pw, ph], f32)
    cx = f32(v[0] * loc[0] * pw + f32((prior[0] + prior[2]) / 2))
    cy = f32(v[1] * loc[1] * ph + f32((prior[1] + prior[3]) / 2))
    w, h = f32(np.exp(f32(v[2] * loc[2])) * pw), f32(np.exp(f32(v[3] * loc[3])) * ph)
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], f32)


def ssd_detection_output(loc: np.ndarray, conf: np.ndarray, prior: np.ndarray, num_classes: int, *,
                         share_location: bool = True, background: int = 0, code: str = "CORNER",
                         in_target: bool = False, keep_top_k: int = -1, threshold: float | None = None,
                         nms: float = 0.3, top_k: int = -1, eta: float = 1.0, clip: bool = False) -> np.ndarray:
    """DetectionOutputLayer::Forward_cpu, loop by loop: the 1 x 1 x D x 7 top (`clip`: OpenCV's, to [0, 1])."""
    num, priors = loc.shape[0], prior.shape[2] // 4
    loc_classes = 1 if share_location else num_classes
    loc = loc.reshape(num, priors, loc_classes, 4)
    conf = conf.reshape(num, priors, num_classes)
    boxes, variances = prior.reshape(2, priors, 4)
    thr = f32(threshold) if threshold is not None else -np.finfo(np.float32).max
    rows = []
    for i in range(num):
        decoded = {c: np.array([_decode(boxes[p], variances[p], loc[i, p, c], code, in_target) for p in range(priors)])
                   for c in range(loc_classes)}
        if clip:
            decoded = {c: np.clip(d, f32(0), f32(1)) for c, d in decoded.items()}
        indices: dict[int, list[int]] = {}
        for c in range(num_classes):
            if c == background:
                continue
            bb = decoded[0 if share_location else c]
            cands = sorted(((s, p) for p, s in enumerate(conf[i, :, c]) if s > thr), key=lambda t: -t[0])  # stable
            if top_k > -1:
                cands = cands[:top_k]
            kept: list[int] = []
            adaptive = f32(nms)
            for _, p in cands:
                if all(_jaccard(bb[p], bb[k]) <= adaptive for k in kept):
                    kept.append(p)
                    if eta < 1 and adaptive > 0.5:
                        adaptive = f32(adaptive * f32(eta))
            indices[c] = kept
        if keep_top_k > -1 and sum(map(len, indices.values())) > keep_top_k:
            pairs = sorted(((conf[i, p, c], c, p) for c, ps in indices.items() for p in ps), key=lambda t: -t[0])
            indices = {}
            for _, c, p in pairs[:keep_top_k]:
                indices.setdefault(c, []).append(p)
        for c in sorted(indices):
            for p in indices[c]:
                rows.append([i, c, conf[i, p, c], *decoded[0 if share_location else c][p]])
    if not rows:
        rows = [[i] + [-1] * 6 for i in range(num)]
    return np.array(rows, f32).reshape(1, 1, -1, 7)


def _detection_inputs(num: int, priors: int, classes: int, loc_classes: int, seed: int,
                      sharp: float = 4.0) -> dict[str, np.ndarray]:
    """Overlapping priors (centers on a coarse grid), small offsets, peaked softmax confidences."""
    rng = np.random.default_rng(seed)
    centers = rng.integers(0, 4, size=(priors, 2)) / 4 + 0.125 + rng.normal(scale=0.03, size=(priors, 2))
    sizes = rng.uniform(0.1, 0.4, size=(priors, 2))
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1)
    var = np.tile([0.1, 0.1, 0.2, 0.2], (priors, 1))
    prior = np.stack([boxes.reshape(-1), var.reshape(-1)])[None].astype(f32)
    loc = rng.normal(scale=1.0, size=(num, priors * loc_classes * 4)).astype(f32)
    logits = rng.normal(scale=sharp, size=(num, priors, classes))
    conf = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    return {"loc": loc, "conf": conf.reshape(num, -1).astype(f32), "prior": prior}


def _detection_net(params: str) -> str:
    return ('layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "det" '
            f'detection_output_param {{ {params} }} }}\n')


def _run_detections(params: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    spec = make_net(_detection_net(params), {k: v.shape for k, v in feeds.items()})
    return forward(spec, {}, feeds, ["det"])["det"]


# (detection_output_param, reference keywords, num, priors, classes, shared locations)
CASES = {
    "corner_shared": ("num_classes: 4 nms_param { nms_threshold: 0.3 }", {}, 2, 40, 4, True),
    "center_size_top_k": ("num_classes: 5 code_type: CENTER_SIZE nms_param { nms_threshold: 0.45 top_k: 7 } "
                          "keep_top_k: 9 confidence_threshold: 0.05",
                          {"code": "CENTER_SIZE", "top_k": 7, "keep_top_k": 9, "threshold": 0.05, "nms": 0.45},
                          2, 50, 5, True),
    "corner_size_per_class": ("num_classes: 3 share_location: false background_label_id: 1 code_type: CORNER_SIZE "
                              "nms_param { nms_threshold: 0.5 } confidence_threshold: 0.2 keep_top_k: 12",
                              {"share_location": False, "background": 1, "code": "CORNER_SIZE", "threshold": 0.2,
                               "nms": 0.5, "keep_top_k": 12}, 3, 30, 3, False),
    "in_target_no_background": ("num_classes: 3 background_label_id: -1 variance_encoded_in_target: true "
                                "code_type: CENTER_SIZE nms_param { nms_threshold: 0.2 top_k: 20 }",
                                {"background": -1, "in_target": True, "code": "CENTER_SIZE", "nms": 0.2,
                                 "top_k": 20}, 1, 25, 3, True),
    "none_found": ("num_classes: 3 confidence_threshold: 1 nms_param { nms_threshold: 0.3 }",
                   {"threshold": 1.0}, 2, 10, 3, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_detection_output_is_ssds_forward(case):
    params, kwargs, num, priors, classes, shared = CASES[case]
    feeds = _detection_inputs(num, priors, classes, 1 if shared else classes, seed=len(case))
    ours = _run_detections(params, feeds)
    want = ssd_detection_output(feeds["loc"], feeds["conf"], feeds["prior"], classes,
                                nms=kwargs.pop("nms", 0.3), **kwargs)
    assert ours.shape == want.shape, (ours.shape, want.shape)
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-6)
    if case == "none_found":
        np.testing.assert_array_equal(ours[0, 0], [[0, -1, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1]])
    else:
        assert ours.shape[2] > num  # detections of several classes and images


def test_detection_output_keep_top_k_and_nms_change_the_result():
    # The reference's keep_top_k and NMS really bite on these inputs (not a vacuous comparison).
    feeds = _detection_inputs(2, 50, 5, 1, seed=len("center_size_top_k"))
    all_kept = ssd_detection_output(feeds["loc"], feeds["conf"], feeds["prior"], 5, code="CENTER_SIZE", top_k=7,
                                    threshold=0.05, nms=1.0)
    some = ssd_detection_output(feeds["loc"], feeds["conf"], feeds["prior"], 5, code="CENTER_SIZE", top_k=7,
                                threshold=0.05, nms=0.45)
    top = ssd_detection_output(feeds["loc"], feeds["conf"], feeds["prior"], 5, code="CENTER_SIZE", top_k=7,
                               threshold=0.05, nms=0.45, keep_top_k=9)
    assert all_kept.shape[2] > some.shape[2] > top.shape[2] == 18
    ours = _run_detections("num_classes: 5 code_type: CENTER_SIZE nms_param { nms_threshold: 1 top_k: 7 } "
                           "confidence_threshold: 0.05", feeds)
    np.testing.assert_allclose(ours, all_kept, rtol=1e-5, atol=1e-6)


def test_corner_boxes_turned_inside_out_overlap_nothing():
    # A decoded box with xmax < xmin has size 0 and overlaps no box in SSD's NMS, so it suppresses nothing.
    prior = np.array([[[0.1, 0.1, 0.5, 0.5, 0.1, 0.1, 0.5, 0.5, 0.1, 0.1, 0.5, 0.5]],
                      [[1.0] * 12]], f32).reshape(1, 2, 12)
    loc = np.array([[0, 0, 0, 0, 0.5, 0, -0.5, 0, 0, 0, 0, 0.01]], f32)  # box 1: xmin 0.6 > xmax 0
    conf = np.array([[0, 0.7, 0, 0.9, 0, 0.8]], f32)
    out = _run_detections("num_classes: 2 nms_param { nms_threshold: 0.5 }", {"loc": loc, "conf": conf,
                                                                             "prior": prior})
    want = ssd_detection_output(loc, conf, prior, 2, nms=0.5)
    np.testing.assert_allclose(out, want, rtol=1e-6)
    assert [int(r[1]) for r in out[0, 0]] == [1, 1] and out[0, 0, 0, 2] == f32(0.9)


def test_detections_match_opencv_as_sets(tmp_path):
    # OpenCV sorts all of an image's detections by score and pads the top to keep_top_k rows of zeros.
    pytest.importorskip("cv2")
    params = ("num_classes: 4 share_location: true background_label_id: 0 code_type: CENTER_SIZE "
              "nms_param { nms_threshold: 0.45 top_k: 10 } keep_top_k: 15 confidence_threshold: 0.1")
    feeds = _detection_inputs(1, 60, 4, 1, seed=3)
    ours = _run_detections(params, feeds)[0, 0]
    inputs = {k: v.shape for k, v in feeds.items()}
    (theirs,) = opencv_forward(tmp_path, _detection_net(params), inputs, {}, feeds, ["det"])
    theirs = theirs[0, 0][np.any(theirs[0, 0] != 0, axis=1)]
    theirs = theirs[np.lexsort((-theirs[:, 2], theirs[:, 1], theirs[:, 0]))]
    assert ours.shape == theirs.shape and ours.shape[0] > 5
    assert relative_error(ours, theirs) < 1e-5


def test_the_detection_count_is_a_symbolic_output_axis():
    feeds = _detection_inputs(1, 20, 3, 1, seed=0)
    spec = make_net(_detection_net("num_classes: 3 nms_param { nms_threshold: 0.3 }"),
                    {k: v.shape for k, v in feeds.items()})
    assert spec.shapes["det"] == (1, 1, 1, 7)  # SSD's setup shape, as Caffe logs it
    model = export(spec, params={}).model
    onnx.checker.check_model(model, full_check=True)
    (out,) = model.graph.output
    dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert dims == [1, 1, "det_2", 7]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (det,) = sess.run(None, feeds)
    assert det.shape[2] > 1


def test_detection_output_fixes_the_batch_size(tmp_path):
    feeds = _detection_inputs(2, 10, 3, 1, seed=0)
    path = tmp_path / "det.prototxt"
    path.write_text("".join(f'layer {{ name: "in_{k}" type: "Input" top: "{k}" input_param {{ shape {{ '
                            + " ".join(f"dim: {d}" for d in v.shape) + " } } }\n" for k, v in feeds.items())
                    + _detection_net("num_classes: 3"))
    with pytest.raises(NotSupportedError, match="-dynamic_batch with layer\\(s\\) det of"):
        conv.convert_net(path, None, dynamic_batch=True)


def test_detection_output_errors():
    feeds = _detection_inputs(1, 10, 3, 1, seed=0)
    inputs = {k: v.shape for k, v in feeds.items()}
    with pytest.raises(CaffeCompatError, match="'det' .*nms_param.eta must be in \\(0, 1\\]"):
        make_net(_detection_net("num_classes: 3 nms_param { nms_threshold: 0.3 eta: 1.5 }"), inputs)
    with pytest.raises(NotSupportedError, match="layer det of type DetectionOutput .*visualize"):
        make_net(_detection_net("num_classes: 3 visualize: true"), inputs)
    with pytest.raises(CaffeCompatError, match="'det' .*num_classes must be given"):
        make_net(_detection_net("share_location: true"), inputs)
    with pytest.raises(CaffeCompatError, match="'det' .*bottom #1 has 30 channels; 10 priors need 40"):
        make_net(_detection_net("num_classes: 4"), inputs)
    # Its top's size is known only at run time: no layer may read it.
    spec = make_net(_detection_net("num_classes: 3") + 'layer { name: "r" type: "ReLU" bottom: "det" top: "r" }\n',
                    inputs)
    with pytest.raises(NotSupportedError, match="layer r of type ReLU reading 'det', whose size depends on the data"):
        export(spec, params={})
    priors = {"fmap": (1, 1, 2, 2), "img": (1, 1, 8, 8)}
    with pytest.raises(NotSupportedError, match="prior_box_param.width of OpenCV"):
        make_net(_prior_layer("p", "min_size: 4 width: 3"), priors)
    with pytest.raises(CaffeCompatError, match="'p' .*aspect_ratio 0.0 must be positive and finite"):
        make_net(_prior_layer("p", "min_size: 4 aspect_ratio: 0"), priors)
    with pytest.raises(CaffeCompatError, match="'p' .*min_size and max_size must be positive and finite"):
        make_net(_prior_layer("p", "min_size: 4 max_size: nan"), priors)
    with pytest.raises(CaffeCompatError, match="'p' .*max_size must be greater than its min_size"):
        make_net(_prior_layer("p", "min_size: 4 max_size: 3"), priors)
