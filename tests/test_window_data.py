"""WindowData (Caffe's window_data_layer.cpp): the window file, fg/bg sampling, the warp with context, R-CNN.

The images and window files are generated here; the crop geometry of a window is checked against numbers
worked out by hand from Caffe's load_batch arithmetic (written out in the comments).
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from caffecompat import glog
from caffecompat.data import make_source
from caffecompat.errors import CaffeCompatError
from caffecompat.formats.net import read_net_prototxt
from caffecompat.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def _images(tmp_path, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for i, (rows, cols) in enumerate(sizes):
        img = rng.integers(0, 256, size=(rows, cols, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / f"img{i}.png"), img)
        out.append(img)
    return out


def _window_file(tmp_path, images: list[tuple[str, tuple[int, int], list[tuple]]]) -> str:
    lines = []
    for i, (name, (rows, cols), windows) in enumerate(images):
        lines += [f"# {i}", name, "3", str(rows), str(cols), str(len(windows))]
        lines += [" ".join(str(v) for v in w) for w in windows]
    (tmp_path / "windows.txt").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "windows.txt")


def _layer(source: str, root: str, batch: int = 8, fg_fraction: float = 0.25, crop: int = 12, context_pad: int = 0,
           mirror: bool = False, mode: str = "warp", extra: str = "") -> caffe_pb2.LayerParameter:
    from caffecompat.formats.protofile import parse_text

    text = (f'name: "data" type: "WindowData" top: "data" top: "label" '
            f'transform_param {{ crop_size: {crop} mirror: {str(mirror).lower()} {extra} }} '
            f'window_data_param {{ source: "{source}" root_folder: "{root}" batch_size: {batch} '
            f'fg_threshold: 0.5 bg_threshold: 0.3 fg_fraction: {fg_fraction} context_pad: {context_pad} '
            f'crop_mode: "{mode}" }}')
    return parse_text(text, caffe_pb2.LayerParameter, "layer", "layer")


# Image 0: two foreground windows (classes 3, 7), one background, one between the thresholds (dropped).
WINDOWS_0 = [(3, 0.8, 4, 6, 13, 15), (7, 0.5, 0, 0, 9, 9), (2, 0.1, 20, 2, 30, 12), (5, 0.4, 1, 1, 5, 5)]
# Image 1: one foreground (class 1), one background window whose class is forced to 0.
WINDOWS_1 = [(1, 0.9, 2, 2, 20, 10), (4, 0.2, 5, 5, 15, 15)]


def _setup(tmp_path):
    _images(tmp_path, [(30, 40), (25, 35)])
    source = _window_file(tmp_path, [("img0.png", (30, 40), WINDOWS_0), ("img1.png", (25, 35), WINDOWS_1)])
    return source, str(tmp_path) + "/"


def test_fg_bg_fractions(tmp_path):
    source, root = _setup(tmp_path)
    src = make_source(_layer(source, root, batch=8, fg_fraction=0.3), TRAIN, np.random.default_rng(0))
    try:
        assert src.top_shapes() == [(8, 3, 12, 12), (8,)]
        counts = {1: 0, 3: 0, 7: 0}
        for _ in range(150):
            data, labels = src.next_batch()
            # int(8 * 0.3) = 2 foreground windows, after the 6 background ones (labels forced to 0).
            assert (labels[:6] == 0).all()
            assert set(labels[6:].tolist()) <= {1.0, 3.0, 7.0}
            for v in labels[6:]:
                counts[int(v)] += 1
            assert data.dtype == np.float32 and data.shape == (8, 3, 12, 12)
    finally:
        src.close()
    # Each of the 3 foreground windows is drawn uniformly: 300 draws, 100 expected each.
    assert all(60 < c < 140 for c in counts.values()), counts


def test_same_seed_same_batches(tmp_path):
    source, root = _setup(tmp_path)
    runs = []
    for seed in (5, 5, 6):
        src = make_source(_layer(source, root, batch=4, mirror=True, context_pad=2), TRAIN,
                          np.random.default_rng(seed))
        try:
            runs.append([src.next_batch() for _ in range(3)])
        finally:
            src.close()
    same = all(np.array_equal(a, b) for x, y in zip(runs[0], runs[1]) for a, b in zip(x, y))
    other = all(np.array_equal(a, b) for x, y in zip(runs[0], runs[2]) for a, b in zip(x, y))
    assert same and not other


def _one_window_layer(tmp_path, window: tuple, **kw) -> caffe_pb2.LayerParameter:
    images = _images(tmp_path, [(30, 40)])
    source = _window_file(tmp_path, [("img0.png", (30, 40), [window, (0, 0.0, 0, 0, 3, 3)])])
    return _layer(source, str(tmp_path) + "/", batch=1, fg_fraction=1.0, **kw), images[0]


def test_warp_with_context_pad_inside_the_image(tmp_path):
    lp, img = _one_window_layer(tmp_path, (3, 0.8, 4, 6, 13, 15), crop=12, context_pad=1,
                                extra="mean_value: 10 mean_value: 20 mean_value: 30")
    lp.window_data_param.scale = 0.5
    # context_scale = 12 / (12 - 2) = 1.2; half sizes 5, centre (9, 11): box x 3..15, y 5..17 (13 x 13), inside
    # the image; warped to round(13 * 12 / 13) = 12 pixels each way with no padding.
    want = cv2.resize(np.ascontiguousarray(img[5:18, 3:16]), (12, 12)).transpose(2, 0, 1).astype(np.float32)
    want = (want - np.array([10, 20, 30], np.float32)[:, None, None]) * 0.5
    src = make_source(lp, TEST, np.random.default_rng(0))
    try:
        data, labels = src.next_batch()
    finally:
        src.close()
    assert labels.tolist() == [3.0]
    np.testing.assert_array_equal(data[0], want)


@pytest.mark.parametrize("mirror", [False, True])
def test_warp_with_context_pad_clipped_at_the_corner(tmp_path, mirror):
    lp, img = _one_window_layer(tmp_path, (3, 0.8, 0, 0, 9, 9), crop=12, context_pad=1, mirror=mirror)
    # Centre (5, 5), half size 5 * 1.2 = 6: box -1..11 both ways (13 wide), clipped to 0..11 (12 wide) with
    # 1 pixel cut at the top and left. Scale 12/13: warped size round(12 * 12/13) = 11, padding
    # round(1 * 12/13) = 1 at the top; at the left too, or, mirrored, the right's padding round(0) = 0.
    warped = cv2.resize(np.ascontiguousarray(img[0:12, 0:12]), (11, 11))
    want = np.zeros((3, 12, 12), np.float32)
    if mirror:
        # mirror: true draws one bit per window; repeat until a mirrored window comes.
        want[:, 1:12, 0:11] = warped[:, ::-1].transpose(2, 0, 1)
    else:
        want[:, 1:12, 1:12] = warped.transpose(2, 0, 1)
    src = make_source(lp, TRAIN, np.random.default_rng(0))
    try:
        for _ in range(20):
            data, _ = src.next_batch()
            if np.array_equal(data[0], want):
                break
        else:
            pytest.fail("no batch has the hand-computed crop")
    finally:
        src.close()


def test_square_mode_without_padding(tmp_path):
    lp, img = _one_window_layer(tmp_path, (3, 0.8, 10, 10, 19, 13), crop=8, mode="square")
    # square: half sizes (5, 2) become (5, 5); context_scale 1; centre (15, 12): box x 10..20, y 7..17 (11 x 11);
    # warped to round(11 * 8 / 11) = 8 with no padding.
    want = cv2.resize(np.ascontiguousarray(img[7:18, 10:21]), (8, 8)).transpose(2, 0, 1).astype(np.float32)
    src = make_source(lp, TEST, np.random.default_rng(0))
    try:
        data, _ = src.next_batch()
    finally:
        src.close()
    np.testing.assert_array_equal(data[0], want)


def test_cache_images_reads_each_image_once_at_setup(tmp_path):
    lp, img = _one_window_layer(tmp_path, (3, 0.8, 4, 6, 13, 15), crop=12, context_pad=1)
    lp.window_data_param.cache_images = True
    src = make_source(lp, TEST, np.random.default_rng(0))
    try:
        (tmp_path / "img0.png").unlink()  # the cached bytes are decoded, the file is not read again
        # More batches than the prefetch queue (data_param.prefetch, 4) holds: some are loaded after the unlink.
        batches = [src.next_batch()[0] for _ in range(6)]
    finally:
        src.close()
    want = cv2.resize(np.ascontiguousarray(img[5:18, 3:16]), (12, 12)).transpose(2, 0, 1).astype(np.float32)
    for data in batches:
        np.testing.assert_array_equal(data[0], want)


def test_window_file_errors(tmp_path):
    source, root = _setup(tmp_path)
    with pytest.raises(CaffeCompatError, match="Failed to open window file"):
        make_source(_layer(str(tmp_path / "none.txt"), root), TRAIN, np.random.default_rng(0))
    (tmp_path / "bad.txt").write_text("# 0\nimg0.png\n3\n30\n40\n1\n0 0.9 1 1 5 5\n")
    with pytest.raises(CaffeCompatError, match="foreground classes must be > 0"):
        make_source(_layer(str(tmp_path / "bad.txt"), root), TRAIN, np.random.default_rng(0))
    (tmp_path / "nobg.txt").write_text("# 0\nimg0.png\n3\n30\n40\n1\n2 0.9 1 1 5 5\n")
    with pytest.raises(CaffeCompatError, match="no background windows"):
        make_source(_layer(str(tmp_path / "nobg.txt"), root), TRAIN, np.random.default_rng(0))
    (tmp_path / "short.txt").write_text("# 0\nimg0.png\n3\n30\n")
    with pytest.raises(CaffeCompatError, match="ends early"):
        make_source(_layer(str(tmp_path / "short.txt"), root), TRAIN, np.random.default_rng(0))
    (tmp_path / "gone.txt").write_text("# 0\nmissing.png\n3\n30\n40\n2\n2 0.9 1 1 5 5\n0 0.1 1 1 5 5\n")
    src = make_source(_layer(str(tmp_path / "gone.txt"), root), TRAIN, np.random.default_rng(0))
    try:
        with pytest.raises(CaffeCompatError, match="missing.png"):
            src.next_batch()
    finally:
        src.close()


def test_rcnn_finetune_pascal_trains_two_iterations(zoo, tmp_path):
    from caffecompat.data.image_mean import write_mean
    from caffecompat.solver.loop import Solver

    source, root = _setup(tmp_path)
    mean_path = tmp_path / "mean.binaryproto"
    write_mean(str(mean_path), np.full((1, 3, 40, 40), 100.0, np.float32))
    net = read_net_prototxt(zoo / "rcnn_finetune_pascal" / "pascal_finetune_trainval_test.prototxt")
    for lp in net.layer:
        if lp.type == "WindowData":
            # The published paths name VOC's files: point them at the generated ones, at a small crop and batch.
            lp.window_data_param.source = source
            lp.window_data_param.root_folder = root
            lp.window_data_param.batch_size = 2
            lp.transform_param.mean_file = str(mean_path)
            lp.transform_param.crop_size = 35
        if lp.type in ("Convolution", "InnerProduct"):
            p = lp.convolution_param if lp.type == "Convolution" else lp.inner_product_param
            if not p.HasField("weight_filler"):
                p.weight_filler.CopyFrom(caffe_pb2.FillerParameter(type="gaussian", std=0.01))
        if lp.type == "Convolution" and lp.name == "conv1":
            lp.convolution_param.stride[:] = [2]
    param = caffe_pb2.SolverParameter(base_lr=1e-3, lr_policy="fixed", momentum=0.9, display=1, max_iter=2,
                                      snapshot_after_train=False, random_seed=1, test_iter=[1], test_interval=2)
    param.net_param.CopyFrom(net)
    log = io.StringIO()
    glog.set_stream(log)
    try:
        solver = Solver(param, "rcnn solver")
        solver.solve()
        solver.close()
    finally:
        glog.set_stream(None)
    text = log.getvalue()
    losses = [float(line.rsplit("= ", 1)[1]) for line in text.splitlines() if "solver.cpp:239] Iteration" in line]
    assert len(losses) == 2 and all(np.isfinite(losses)), text[-2000:]
    # The zoo net's bg_threshold is 0.5: the 0.4-overlap window is background there.
    assert "class 0 has 3 samples" in text and "loss -> (automatic)" in text and "output data size: 2,3,35,35" in text
