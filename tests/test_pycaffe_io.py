"""caffecompat.io (Transformer, images, blobs, datums), Classifier, draw and the opt-in `import caffe` alias."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import caffecompat as caffe
from caffecompat import io as cio
from caffecompat.errors import CaffeCompatError
from caffecompat.formats.net import read_net_prototxt
from caffecompat.proto import caffe_pb2

REPO = Path(__file__).resolve().parent.parent


def test_transformer_preprocess_and_deprocess():
    t = cio.Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([10.0, 20.0, 30.0]))
    t.set_input_scale("data", 0.5)
    img = np.random.default_rng(0).uniform(size=(4, 5, 3)).astype(np.float32)
    x = t.preprocess("data", img)
    expected = (img.transpose(2, 0, 1)[[2, 1, 0]] * 255 - np.array([10, 20, 30])[:, None, None]) * 0.5
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-4)
    assert x.dtype == np.float32 and x.shape == (3, 4, 5)
    np.testing.assert_allclose(t.deprocess("data", x), img, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="Mean channels"):
        t.set_mean("data", np.zeros(4))
    with pytest.raises(CaffeCompatError, match="not one of the net inputs"):
        t.preprocess("image", img)


def test_resize_bilinear_by_hand():
    ramp = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)[:, :, None]
    out = cio.resize_image(ramp, (4, 4))
    # Pixel centers of the 4 outputs sit at -0.25, 0.25, 0.75, 1.25 source pixels; beyond the edge the samples
    # blend toward 0 (scikit-image's mode='constant'), so row -0.25 is 0.75 of row 0.
    np.testing.assert_allclose(out[1, :, 0], [0, 0.25, 0.75, 0.75], atol=1e-7)
    np.testing.assert_allclose(out[0, :, 0], 0.75 * np.array([0, 0.25, 0.75, 0.75]), atol=1e-7)
    assert out.shape == (4, 4, 1)
    assert np.all(cio.resize_image(np.full((3, 3, 3), 7, np.float32), (5, 2)) == 7)
    t = cio.Transformer({"data": (1, 1, 4, 4)})
    np.testing.assert_allclose(t.preprocess("data", ramp), out)  # resized to the input's size


def test_oversample_crops_and_mirrors():
    img = np.arange(6 * 7 * 2, dtype=np.float32).reshape(6, 7, 2)
    crops = cio.oversample([img], (4, 4))
    assert crops.shape == (10, 4, 4, 2)
    starts = [(0, 0), (0, 3), (2, 0), (2, 3), (1, 1)]
    for i, (y, x) in enumerate(starts):
        np.testing.assert_array_equal(crops[i], img[y:y + 4, x:x + 4])
        np.testing.assert_array_equal(crops[i + 5], img[y:y + 4, x:x + 4][:, ::-1])


def test_blobs_and_datums():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    blob = cio.array_to_blobproto(a, diff=-a)
    np.testing.assert_array_equal(cio.blobproto_to_array(blob), a)
    np.testing.assert_array_equal(cio.blobproto_to_array(blob, return_diff=True), -a)
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3, data=list(range(6)))
    assert cio.blobproto_to_array(legacy).shape == (1, 2, 1, 3)
    arrays = cio.blobprotovector_str_to_arraylist(cio.arraylist_to_blobprotovector_str([a, a[0]]))
    assert [x.shape for x in arrays] == [(2, 3, 4), (3, 4)]
    u8 = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    datum = cio.array_to_datum(u8, label=5)
    assert datum.label == 5 and datum.data == u8.tobytes()
    np.testing.assert_array_equal(cio.datum_to_array(datum), u8)
    np.testing.assert_array_equal(cio.datum_to_array(cio.array_to_datum(u8.astype(np.float32))), u8)


def test_load_image_rgb_float_and_grey(tmp_path):
    bgr = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [51, 102, 153]]], np.uint8)
    path = str(tmp_path / "x.png")
    cv2.imwrite(path, bgr)
    img = cio.load_image(path)
    assert img.dtype == np.float32 and img.shape == (2, 2, 3)
    np.testing.assert_allclose(img, bgr[:, :, ::-1] / 255.0, atol=1e-7)
    grey = cio.load_image(path, color=False)
    rgb = bgr[:, :, ::-1] / 255.0
    np.testing.assert_allclose(grey[:, :, 0], rgb @ [0.2125, 0.7154, 0.0721], atol=1e-6)  # scikit-image's weights
    cv2.imwrite(str(tmp_path / "g.png"), bgr[:, :, 0])
    assert cio.load_image(str(tmp_path / "g.png")).shape == (2, 2, 3)
    with pytest.raises(CaffeCompatError, match="no such"):
        cio.load_image(str(tmp_path / "missing.png"))


def test_classifier_center_crop_and_oversample(tmp_path):
    (tmp_path / "deploy.prototxt").write_text("""name: 'c'
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 4 dim: 3 dim: 4 dim: 4 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
  inner_product_param { num_output: 3 weight_filler { type: 'gaussian' std: 0.1 } } }
layer { name: 'prob' type: 'Softmax' bottom: 'ip' top: 'prob' }
""")
    net = caffe.Net(str(tmp_path / "deploy.prototxt"), caffe.TEST)
    net.save(str(tmp_path / "w.caffemodel"))
    mean = np.array([0.5, 0.25, 0.125])
    clf = caffe.Classifier(str(tmp_path / "deploy.prototxt"), str(tmp_path / "w.caffemodel"), image_dims=(6, 6),
                           mean=mean, raw_scale=2.0, channel_swap=(2, 1, 0))
    images = [np.random.default_rng(i).uniform(size=(6, 6, 3)).astype(np.float32) for i in range(5)]
    w = net.params["ip"][0].data

    def probs(crop):
        x = (crop.transpose(2, 0, 1)[[2, 1, 0]] * 2.0 - mean[:, None, None]).reshape(-1)
        z = w @ x
        e = np.exp(z - z.max())
        return e / e.sum()

    center = clf.predict(images, oversample=False)
    np.testing.assert_allclose(center, [probs(im[1:5, 1:5]) for im in images], rtol=1e-5, atol=1e-6)
    ten = clf.predict(images[:2])
    expected = [np.mean([probs(c) for c in cio.oversample([im], (4, 4))], axis=0) for im in images[:2]]
    np.testing.assert_allclose(ten, expected, rtol=1e-5, atol=1e-6)


def test_draw_net_dot_source():
    pytest.importorskip("pydot", reason="caffecompat.draw needs pydot (pip install 'caffecompat[draw]')")
    from caffecompat import draw

    net = read_net_prototxt(REPO / "caffecompat" / "examples" / "shapes" / "train_val.prototxt")
    dot = draw.draw_net(net, "LR", "dot", phase=caffe_pb2.TEST).decode()
    assert dot.startswith("digraph ShapesNet {") and "rankdir=LR" in dot
    assert '"conv1\\n(Convolution)\\nkernel size: 5\\nstride: 1\\npad: 2" [shape=record, fillcolor="#FF5050"' in dot
    assert '"relu1\\n(ReLU)" [shape=record, fillcolor="#90EE90"' in dot  # in place: a neuron layer
    assert '"accuracy\\n(Accuracy)"' in dot and 'label="Batch 50"' in dot and 'label=64' in dot
    train = draw.draw_net(net, "TB", "dot", phase=caffe_pb2.TRAIN).decode()
    assert "(Accuracy)" not in train and "conv1 (Convolution) kernel size: 5" in train


def test_import_caffe_alias(tmp_path):
    from caffecompat import shim

    target = tmp_path / "site"
    folder = shim.install(target)
    assert (folder / "__init__.py").is_file()
    script = ("import caffe, caffe.io, caffecompat\nfrom caffe import layers as L, params as P\n"
              "from caffe.proto import caffe_pb2\nimport caffe.proto.caffe_pb2 as pb\n"
              "assert caffe is caffecompat and caffe.io is caffecompat.io and pb is caffe_pb2\n"
              "assert caffe_pb2 is caffecompat.proto.caffe_pb2 and P.Pooling.MAX == 0\n"
              "print(L.Convolution.__name__, caffe.TEST)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(REPO)])}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["Convolution", "1"]
    # A real Caffe on the path is never shadowed.
    real = tmp_path / "real"
    (real / "caffe").mkdir(parents=True)
    (real / "caffe" / "__init__.py").write_text("REAL = True\n")
    env["PYTHONPATH"] = os.pathsep.join([str(real), str(REPO)])
    refused = subprocess.run([sys.executable, "-m", "caffecompat.shim", "install", "--target", str(tmp_path / "o")],
                             env=env, capture_output=True, text=True)
    assert refused.returncode == 1 and "not shadowing" in refused.stderr
    assert not (tmp_path / "o" / "caffe").exists()
    assert shim.uninstall(target) == folder and not folder.exists()
    with pytest.raises(CaffeCompatError, match="not caffecompat's alias"):
        shim.uninstall(real)
