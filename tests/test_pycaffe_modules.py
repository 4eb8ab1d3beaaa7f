"""pycaffe's modules and names beyond Net/Solver: coord_map, Detector, Timer/log, multi-process names, caffe.io's
load_image from file objects and resize_image's scikit-image rule, `from caffe import *` and missing names."""

from __future__ import annotations

import io as pyio
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import caffecompat as caffe
from caffecompat import io as cio
from caffecompat import layers as L
from caffecompat import params as P
from caffecompat.coord_map import AxisMismatchException, compose, coord_map, coord_map_from_to, crop, inverse
from caffecompat.errors import CaffeCompatError

# -- resize_image: pycaffe's scikit-image rule, written here independently, one output pixel at a time ---------


def skimage_rule(im: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize, pixel centre to pixel centre, samples outside the image taken as 0, for an image that
    pycaffe first stretches to [0, 1] and afterwards stretches back."""
    lo, hi = float(im.min()), float(im.max())
    std = (im.astype(np.float64) - lo) / (hi - lo)
    H, W = im.shape[:2]

    def px(y: int, x: int) -> np.ndarray:
        return std[y, x] if 0 <= y < H and 0 <= x < W else np.zeros(im.shape[2])

    out = np.zeros((h, w, im.shape[2]))
    for i in range(h):
        for j in range(w):
            y = (i + 0.5) * H / h - 0.5
            x = (j + 0.5) * W / w - 0.5
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            ty, tx = y - y0, x - x0
            out[i, j] = ((1 - ty) * ((1 - tx) * px(y0, x0) + tx * px(y0, x0 + 1))
                         + ty * ((1 - tx) * px(y0 + 1, x0) + tx * px(y0 + 1, x0 + 1)))
    return out * (hi - lo) + lo


@pytest.mark.parametrize("shape,new", [((4, 5, 3), (9, 13)), ((6, 6, 1), (6, 17)), ((12, 9, 3), (5, 4)),
                                       ((3, 8, 3), (20, 3)), ((1, 4, 3), (3, 7))])
def test_resize_image_matches_pycaffe_rule(shape, new):
    rng = np.random.default_rng(sum(shape))
    im = rng.uniform(0.05, 0.95, shape).astype(np.float32)
    np.testing.assert_allclose(cio.resize_image(im, new), skimage_rule(im, *new), rtol=0, atol=1e-6)
    # outside [0, 1] pycaffe stretches to [0, 1], resizes and stretches back: the same rule at any range
    big = im * 255 - 40
    np.testing.assert_allclose(cio.resize_image(big, new) / 255, skimage_rule(big, *new) / 255, rtol=0, atol=1e-6)


def test_resize_image_enlarged_edges_blend_toward_minimum():
    # A white square on a 0.2 grey image, doubled: the outer ring is 0.75 * v + 0.25 * min (by hand), corners
    # 0.5625 * v + 0.4375 * min; OpenCV alone would repeat the edge (1.0 there).
    im = np.full((4, 4, 3), 0.2, np.float32)
    im[0, 0] = 1.0
    out = cio.resize_image(im, (8, 8))
    assert out[0, 0, 0] == pytest.approx(0.5625 * 1.0 + 0.4375 * 0.2, abs=1e-6)
    assert out[0, 4, 0] == pytest.approx(0.2, abs=1e-6)  # grey edge: blends toward the minimum, itself


def test_resize_image_nearest_picks_scikit_image_pixels():
    # order=0, by hand: 4 -> 2 samples at 0.5 and 2.5, rounded up to pixels 1 and 3 (OpenCV takes 0 and 2);
    # 2 -> 4 samples at -0.25, 0.25, 0.75, 1.25: pixels 0, 0, 1, 1.
    row = np.array([0.0, 1.0, 2.0, 3.0], np.float32)[np.newaxis, :, np.newaxis]
    np.testing.assert_allclose(cio.resize_image(row, (1, 2), interp_order=0).ravel(), [1, 3], atol=1e-6)
    np.testing.assert_allclose(cio.resize_image(row[:, :2], (1, 4), interp_order=0).ravel(), [0, 0, 1, 1],
                               atol=1e-6)


def test_resize_image_refuses_bad_shapes_in_one_line():
    with pytest.raises(CaffeCompatError, match="expected an H x W x K image"):
        cio.resize_image(np.random.default_rng(0).uniform(size=(4, 4)), (3, 3))
    with pytest.raises(CaffeCompatError, match="both at least 1"):
        cio.resize_image(np.random.default_rng(0).uniform(size=(4, 4, 3)), (0, 5))


def test_resize_image_other_channel_counts_zoom_corner_to_corner():
    # pycaffe sends K not in {1, 3} to scipy.ndimage.zoom: corners map to corners. By hand, 2 -> 3 wide:
    # the middle sample is the mean of the two columns.
    im = np.array([[[0, 10], [4, 20]]], np.float32).repeat(2, axis=0)  # 2 x 2 x 2
    out = cio.resize_image(im, (2, 3))
    np.testing.assert_allclose(out[0, :, 0], [0, 2, 4])
    np.testing.assert_allclose(out[1, :, 1], [10, 15, 20])


# -- load_image ------------------------------------------------------------------------------------------


def test_load_image_from_file_objects_and_path_likes(tmp_path):
    rng = np.random.default_rng(3)
    bgr = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), bgr)
    expected = bgr[:, :, ::-1] / 255.0
    np.testing.assert_allclose(cio.load_image(path), expected, atol=1e-7)  # a pathlib.Path
    np.testing.assert_allclose(cio.load_image(pyio.BytesIO(path.read_bytes())), expected, atol=1e-7)
    written = pyio.BytesIO()
    written.write(path.read_bytes())  # left at its end, as after PIL's save(): read from the start, as PIL does
    np.testing.assert_allclose(cio.load_image(written), expected, atol=1e-7)
    with open(path, "rb") as f:
        np.testing.assert_allclose(cio.load_image(f, color=False)[:, :, 0], expected @ [0.2125, 0.7154, 0.0721],
                                   atol=1e-6)
    with open(path, encoding="latin-1") as f, pytest.raises(CaffeCompatError, match="binary mode"):
        cio.load_image(f)
    with pytest.raises(CaffeCompatError, match="not an image"):
        cio.load_image(pyio.BytesIO(b"not an image at all"))
    with pytest.raises(CaffeCompatError, match="not an image"):
        cio.load_image(pyio.BytesIO(b""))
    with pytest.raises(CaffeCompatError, match="not supported: load_image.*URL"):
        cio.load_image("https://example.com/cat.jpg")
    with pytest.raises(CaffeCompatError, match="expected an image path"):
        cio.load_image(42)


# -- coord_map: hand-computed maps ---------------------------------------------------------------------


def test_coord_map_of_conv_pool_deconv_by_hand():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 100, 100]))
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=5, pad=2, stride=1)  # same size: identity
    assert coord_map(n.conv.fn)[1:] == (1, 0)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    ax, a, b = coord_map(n.pool.fn)  # output j's window centre is input 2j + 0.5
    assert ax == 1 and a == 0.5 and b == pytest.approx(-0.25)
    n.up = L.Deconvolution(n.pool, convolution_param=dict(num_output=1, kernel_size=4, stride=2))
    assert coord_map(n.up.fn)[1:] == (2, 1.5)
    ax, a, b = coord_map_from_to(n.up, n.data)  # composed: up = data * 1 + (0.5 * 1.5 - 0.25) ... inverted
    assert a == 1 and b == pytest.approx(-1.0)
    n.out = crop(n.up, n.data)
    layer = n.to_proto().layer[-1]
    assert layer.type == "Crop" and list(layer.bottom) == ["up", "data"]
    assert layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [1]


def test_coord_map_compose_inverse_and_errors():
    assert compose((None, 1, 0), (1, 2, 3)) == (1, 2, 3)
    ax, a, b = compose((1, 2.0, 1.0), (1, 0.5, 4.0))
    assert (ax, a, b) == (1, 1.0, 9.0)
    assert inverse((1, 2.0, 3.0)) == (1, 0.5, -1.5)
    with pytest.raises(AxisMismatchException):
        compose((1, 1, 0), (2, 1, 0))
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 10, 10]))
    n.ip = L.InnerProduct(n.data, num_output=2)
    n.other = L.Input(shape=dict(dim=[1, 1, 10, 10]))
    with pytest.raises(RuntimeError, match="connected by spatial layers"):
        coord_map_from_to(n.ip, n.other)
    n.pool = L.Pooling(n.data, kernel_size=3, stride=2)  # offset (pad - 1) / 2 = -0.5: not an integer crop
    with pytest.raises(AssertionError, match="scale mismatch"):
        crop(n.pool, n.data)
    n.legacy = L.Convolution(n.data, num_output=1, kernel_h=3, kernel_w=3)
    with pytest.raises((AssertionError, KeyError)):
        coord_map(n.legacy.fn)


# -- Detector ------------------------------------------------------------------------------------------


def _det_net(tmp_path: Path, size: int = 8) -> tuple[str, str]:
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(f"""name: 'd'
layer {{ name: 'data' type: 'Input' top: 'data' input_param {{ shape {{ dim: 2 dim: 3 dim: {size} dim: {size} }} }} }}
layer {{ name: 'pool' type: 'Pooling' bottom: 'data' top: 'pool'
  pooling_param {{ pool: AVE global_pooling: true }} }}
""")
    net = caffe.Net(str(deploy), caffe.TEST)
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))
    return str(deploy), str(weights)


def test_detector_windows_means_by_hand(tmp_path):
    deploy, weights = _det_net(tmp_path)
    img = np.zeros((20, 30, 3), np.uint8)
    img[2:10, 4:12] = (0, 0, 255)  # red (BGR) in rows 2..9, cols 4..11
    cv2.imwrite(str(tmp_path / "im.png"), img)
    det = caffe.Detector(deploy, weights, raw_scale=255, channel_swap=(2, 1, 0))
    windows = np.array([[2, 4, 10, 12], [12, 0, 20, 8], [0, 0, 20, 30]])
    dets = det.detect_windows([(str(tmp_path / "im.png"), windows)])
    assert [d["filename"] for d in dets] == [str(tmp_path / "im.png")] * 3
    # The net averages each channel of the (BGR-swapped) crop: the red window is all red, the second none.
    np.testing.assert_allclose(dets[0]["prediction"].ravel(), [0, 0, 255], atol=1e-3)
    np.testing.assert_allclose(dets[1]["prediction"].ravel(), [0, 0, 0], atol=1e-3)
    # the whole image is warped to 8 x 8 first (pycaffe's resize_image), then averaged, red only
    warped = cio.resize_image(cio.load_image(str(tmp_path / "im.png")), (8, 8))
    np.testing.assert_allclose(dets[2]["prediction"].ravel(), 255 * warped.mean(axis=(0, 1))[::-1], atol=1e-3)
    assert 0 < dets[2]["prediction"].ravel()[2] < 255
    with pytest.raises(CaffeCompatError, match="not supported: selective search"):
        det.detect_selective_search([str(tmp_path / "im.png")])


def test_detector_context_pad_pads_with_mean(tmp_path):
    deploy, weights = _det_net(tmp_path, size=10)
    mean = np.array([10.0, 20.0, 30.0])
    det = caffe.Detector(deploy, weights, mean=mean, raw_scale=255, channel_swap=(2, 1, 0), context_pad=2)
    assert det.crop_dims.tolist() == [10, 10, 3]
    # the mean back in image space: unswapped (BGR -> RGB order) and divided by raw_scale
    np.testing.assert_allclose(det.crop_mean.ravel(), [30 / 255, 20 / 255, 10 / 255])
    im = np.ones((40, 40, 3), np.float32)
    # A window at the image's corner: the grown box leaves the image at the top and left, padded with the mean.
    out = det.crop(im, np.array([0, 0, 9, 9]))
    assert out.shape == (10, 10, 3)
    np.testing.assert_allclose(out[0, 0], [30 / 255, 20 / 255, 10 / 255], atol=1e-6)
    np.testing.assert_allclose(out[-1, -1], 1.0, atol=1e-6)
    # By hand: scale 10/6, half 5, centre 5 -> box round(5 -+ 8.33) = (-3, -3, 13, 13), 17 px for 10:
    # 3 * 10/17 = 1.76 -> 2 rows of padding.
    np.testing.assert_allclose(out[1, 5], [30 / 255, 20 / 255, 10 / 255], atol=1e-6)
    np.testing.assert_allclose(out[2, 5], 1.0, atol=1e-6)
    with pytest.raises(CaffeCompatError, match="context_pad 5 leaves no room"):
        caffe.Detector(deploy, weights, context_pad=5)  # detect.py's default 16 on a small net, say


# -- process-wide names ------------------------------------------------------------------------------------


def test_timer_log_and_multiprocess_names(capfd):
    t = caffe.Timer()
    assert t.ms == 0.0  # never started: Caffe warns and gives 0
    t.start()
    time.sleep(0.03)
    t.stop()
    first = t.ms
    assert 25 <= first < 1000 and first == int(first)  # whole milliseconds, as Caffe's CPU Timer
    time.sleep(0.02)
    assert t.ms == first  # stopped: reading again does not move
    caffe.init_log()
    caffe.log("Using devices [0]")
    err = capfd.readouterr().err
    assert "Timer has never been run before reading time." in err
    assert any(line.startswith("I") and line.endswith("_caffe.cpp:68] Using devices [0]")
               for line in err.splitlines())
    assert caffe.solver_count() == 1 and caffe.solver_rank() == 0 and caffe.has_nccl() is False
    caffe.set_solver_count(1)
    caffe.set_solver_rank(0)
    caffe.set_multiprocess(True)
    for call in (lambda: caffe.set_solver_count(2), lambda: caffe.set_solver_rank(1), caffe.NCCL.new_uid,
                 lambda: caffe.NCCL(None, b"uid")):
        with pytest.raises(CaffeCompatError, match=r"^not supported: .*mpiexec -n N caffecompat train"):
            call()


def test_star_import_missing_names_and_version():
    namespace: dict = {}
    exec("from caffecompat import *", namespace)
    for name in ("Net", "SGDSolver", "NCCL", "Timer", "Detector", "Classifier", "io", "layers", "params",
                 "NetSpec", "to_proto", "coord_map", "init_log", "log", "TRAIN", "TEST", "__version__"):
        assert name in namespace, name
    assert namespace["io"] is cio
    assert isinstance(caffe.__version__, str) and caffe.__version__
    assert not hasattr(caffe, "set_phase_train")  # still an AttributeError for hasattr
    assert not hasattr(caffe, "no_such_name")
    with pytest.raises(AttributeError, match=r"^not supported: caffe.set_phase_test; .*caffe.TEST"):
        caffe.set_phase_test  # noqa: B018
    with pytest.raises(CaffeCompatError, match="not supported: caffe._caffe"):
        caffe._caffe  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        caffe.no_such_name  # noqa: B018


def test_set_mean_of_another_size_is_resized_as_pycaffe():
    # pycaffe's set_mean resizes a mean image of another size (e.g. ImageNet's 256 x 256 for a 227 input).
    mean = np.random.default_rng(5).uniform(90, 130, (3, 8, 6))
    t = cio.Transformer({"data": (1, 3, 4, 5)})
    t.set_mean("data", mean)
    expected = skimage_rule(mean.transpose(1, 2, 0), 4, 5).transpose(2, 0, 1)
    np.testing.assert_allclose(t.mean["data"], expected, rtol=0, atol=1e-6 * 130)
    t.set_mean("data", np.full((3, 8, 6), 7.0))
    assert t.mean["data"].shape == (3, 4, 5) and np.all(t.mean["data"] == 7.0)
    with pytest.raises(ValueError, match="Mean shape invalid"):
        t.set_mean("data", np.zeros((1, 3, 4, 5)))


def test_solver_count_and_rank_read_the_mpi_world(tmp_path):
    from caffecompat.parallel import launch

    try:
        pytest.importorskip("mpi4py")
        mpiexec = launch.find_mpiexec()
    except CaffeCompatError:
        pytest.skip("needs the MPI extra: pip install 'caffecompat[mpi]' (mpi4py and mpich, with mpiexec)")
    script = ("import caffecompat as caffe\n"
              "caffe.set_solver_count(2); caffe.set_solver_rank(caffe.solver_rank()); caffe.set_multiprocess(True)\n"
              "import sys, pathlib\n"
              "pathlib.Path(sys.argv[1], str(caffe.solver_rank())).write_text(f'rank {caffe.solver_rank()} of '\n"
              "                                                                f'{caffe.solver_count()}')\n")
    (tmp_path / "s.py").write_text(script)
    run = subprocess.run([mpiexec, "-n", "2", sys.executable, str(tmp_path / "s.py"), str(tmp_path)],
                         capture_output=True, text=True,
                         timeout=120, env={**os.environ, "GLOG_minloglevel": "2"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert [(tmp_path / r).read_text() for r in ("0", "1")] == ["rank 0 of 2", "rank 1 of 2"]


def test_crop_of_fcn32s_gives_the_published_offset():
    # FCN-32s (Long et al., fcn.berkeleyvision.org, written with NetSpec): VGG16 with pad 100 on conv1_1 and a
    # 64/32 deconvolution; its published train.prototxt crops upscore to data at offset 19.
    n = caffe.NetSpec()
    n.data, n.label = L.Python(module="voc_layers", layer="SBDDSegDataLayer", ntop=2)
    top = n.data
    for convs, width in [(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)]:
        for _ in range(convs):
            top = L.ReLU(L.Convolution(top, kernel_size=3, num_output=width, pad=100 if top is n.data else 1),
                         in_place=True)
        top = L.Pooling(top, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    top = L.Dropout(L.ReLU(L.Convolution(top, kernel_size=7, num_output=4096, pad=0), in_place=True), in_place=True)
    top = L.Dropout(L.ReLU(L.Convolution(top, kernel_size=1, num_output=4096), in_place=True), in_place=True)
    n.score_fr = L.Convolution(top, num_output=21, kernel_size=1, pad=0)
    n.upscore = L.Deconvolution(n.score_fr, convolution_param=dict(num_output=21, kernel_size=64, stride=32,
                                                                   bias_term=False))
    n.score = crop(n.upscore, n.data)
    layer = next(lay for lay in n.to_proto().layer if lay.type == "Crop")
    assert layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [19]
