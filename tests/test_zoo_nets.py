"""Every real net of ../shared/zoo converts with `caffecompat convert` and its ONNX forward matches OpenCV's.

The deploy prototxts are read where they lie (never copied). open_nsfw uses its
real weights; the others get weights of our own, written as a .caffemodel so
that OpenCV's cv2.dnn.readNetFromCaffe reads the very same numbers: He-scaled
normal weights (so that signals neither vanish nor explode through the net),
positive BatchNorm variances and Scale factors. MobileNet-SSD's confidence
layers get 10 times larger weights so that its softmax is peaked enough for
detections to pass confidence_threshold 0.25 (100 of them, keep_top_k). The
input shapes are set with -input_shape, small where the net allows it.

Compared within 1e-4, relative to the largest magnitude of OpenCV's value:
every net output and the logits under a softmax output (a saturated softmax
alone would compare little). OpenCV pads DetectionOutput's top with rows of
zeros and sorts an image's detections by score, where SSD orders them by
label; the rows are compared as sorted by (image, label, -score).

VGG-16 (528 MB of weights to write, convert and load twice: about 17 s on 2
cores) and FCN-8s (the same weights as 7x7 convolutions, and 100-pixel padding:
about 23 s) run only with CAFFECOMPAT_ZOO_HEAVY=1; the other eleven nets take
about 16 s together.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from caffecompat import cli, glog
from caffecompat import convert as conv
from caffecompat.formats.blob import array_to_blob
from caffecompat.formats.caffemodel import write_caffemodel
from caffecompat.formats.net import read_net_prototxt
from caffecompat.net import spec as netspec
from caffecompat.net.state import make_state
from caffecompat.proto import caffe_pb2

cv2 = pytest.importorskip("cv2")

TOLERANCE = 1e-4
HEAVY = os.environ.get("CAFFECOMPAT_ZOO_HEAVY", "") not in ("", "0")


@dataclass
class ZooNet:
    prototxt: str
    shape: tuple[int, ...]  # the input's, given with -input_shape
    blobs: list[str] = field(default_factory=list)  # compared besides the net's outputs
    weights: str | None = None  # real weights shipped in the zoo
    heavy: bool = False


NETS = {
    "resnet50": ZooNet("resnet50/ResNet-50-deploy.prototxt", (1, 3, 224, 224), ["fc1000"]),
    "squeezenet10": ZooNet("squeezenet10/deploy.prototxt", (1, 3, 115, 115), ["pool10"]),
    "squeezenet11": ZooNet("squeezenet11/deploy.prototxt", (1, 3, 115, 115), ["pool10"]),
    "mobilenet_v1": ZooNet("mobilenet_v1/mobilenet_deploy.prototxt", (1, 3, 96, 96), ["fc7"]),
    "mobilenet_v2": ZooNet("mobilenet_v2/mobilenet_v2_deploy.prototxt", (1, 3, 96, 96), ["fc7"]),
    "fcn8s": ZooNet("fcn8s/deploy.prototxt", (1, 3, 64, 64), heavy=True),
    "hed": ZooNet("hed/deploy.prototxt", (1, 3, 64, 64), ["upscore-dsn1"]),
    # The net ends in a Silence layer: it has no outputs of its own.
    "colorization": ZooNet("colorization/colorization_deploy_v2.prototxt", (1, 1, 64, 64),
                           ["class8_ab", "conv8_313_rh"]),
    "vgg16": ZooNet("vgg16/VGG_ILSVRC_16_layers_deploy.prototxt", (1, 3, 224, 224), ["fc8"], heavy=True),
    "vgg16_styletransfer_v1_old": ZooNet("vgg16_styletransfer_v1_old/VGG_ILSVRC_16_layers_deploy_v1.prototxt",
                                         (1, 3, 64, 64)),
    "open_nsfw": ZooNet("open_nsfw/deploy.prototxt", (1, 3, 224, 224), ["fc_nsfw"],
                        weights="open_nsfw/resnet_50_1by2_nsfw.caffemodel"),
    "openpose_coco": ZooNet("openpose_coco/pose_deploy_linevec.prototxt", (1, 3, 64, 80)),
    "mobilenet_ssd": ZooNet("mobilenet_ssd/MobileNetSSD_deploy.prototxt", (1, 3, 300, 300),
                            ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]),
}


@pytest.fixture(autouse=True)
def quiet_log():
    glog.set_stream(io.StringIO())
    yield
    glog.set_stream(None)


def _write_weights(net: caffe_pb2.NetParameter, path: Path, seed: int = 0) -> None:
    """A .caffemodel for every parameter blob of `net` (see the module docstring)."""
    spec = netspec.build(net, caffe_pb2.TEST)
    rng = np.random.default_rng(seed)
    # Drawing 138M normals takes seconds here: big blobs cycle through a pool of them from a random start.
    pool = rng.standard_normal(1_000_003, dtype=np.float32)
    model = caffe_pb2.NetParameter(name=net.name)
    for node in spec.layers:
        if not node.param_shapes:
            continue
        lp = model.layer.add(name=node.name, type=node.type)
        for i, shape in enumerate(node.param_shapes):
            if node.type == "BatchNorm":  # mean, variance, moving-average factor
                a = [rng.normal(0, 0.1, shape), rng.uniform(0.5, 1.5, shape), np.ones(shape)][i]
            elif node.type == "Scale":
                a = rng.uniform(0.5, 1.5, shape) if i == 0 else rng.normal(0, 0.1, shape)
            elif len(shape) > 1:
                # He: std sqrt(2 / fan_in); a Deconvolution's fan-in is its input channels times the kernel over
                # its stride squared (2 here, as in every zoo net).
                fan_in = np.prod(shape[1:]) if node.type != "Deconvolution" else shape[0] * np.prod(shape[2:]) / 4
                gain = 10.0 if node.name.endswith("mbox_conf") else 1.0
                start = int(rng.integers(pool.size))
                a = np.resize(np.roll(pool, -start), shape) * np.float32(gain * np.sqrt(2.0 / fan_in))
            else:
                a = rng.normal(0, 0.1, shape)
            array_to_blob(np.asarray(a, np.float32), lp.blobs.add())
    write_caffemodel(path, model)


def _opencv_layer_names(net: caffe_pb2.NetParameter) -> dict[str, str]:
    """Caffe blob -> the OpenCV layer whose output is its final value (OpenCV suffixes repeated names _1, _2...)."""
    seen: dict[str, int] = {}
    out = {}
    for lp in net.layer:
        rep = seen.get(lp.name, 0)
        seen[lp.name] = rep + 1
        for top in lp.top:
            out[top] = f"{lp.name}_{rep}" if rep else lp.name
    return out


def _sorted_detections(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort((-rows[:, 2], rows[:, 1], rows[:, 0]))]


@pytest.mark.parametrize("name", list(NETS))
def test_zoo_net_converts_and_matches_opencv(zoo, tmp_path, capsys, name):
    z = NETS[name]
    if z.heavy and not HEAVY:
        pytest.skip(f"{name} takes 15-25 s on 2 cores; set CAFFECOMPAT_ZOO_HEAVY=1 to run it")
    prototxt = zoo / z.prototxt
    net = read_net_prototxt(prototxt)
    (input_name,) = [lp.top[0] for lp in net.layer if lp.type == "Input"]
    dims = ",".join(map(str, z.shape))
    if z.weights:
        weights = zoo / z.weights
    else:
        weights = tmp_path / "weights.caffemodel"
        conv.set_input_shapes(net, make_state(net, caffe_pb2.TEST), {input_name: z.shape}, str(prototxt))
        _write_weights(net, weights)
    onnx_path = tmp_path / "net.onnx"
    argv = ["convert", str(prototxt), str(weights), str(onnx_path), "-input_shape", f"{input_name}:{dims}"]
    assert cli.main(argv + (["-outputs", ",".join(z.blobs)] if z.blobs else [])) == 0, capsys.readouterr().err

    x = np.random.default_rng(1).uniform(-1, 1, size=z.shape).astype(np.float32)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    assert set(z.blobs) <= set(names)
    ours = dict(zip(names, sess.run(names, {input_name: x})))
    del sess

    cv_net = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv_net.enableFusion(False)
    cv_net.setInput(x)
    layer = _opencv_layer_names(net)
    theirs = dict(zip(names, cv_net.forward([layer[b] for b in names])))

    errors = {}
    for blob in names:
        mine, ref = ours[blob], theirs[blob]
        if blob == "detection_out":
            mine = mine[0, 0]
            ref = _sorted_detections(ref[0, 0][np.any(ref[0, 0] != 0, axis=1)])
            assert mine.shape == ref.shape and len(mine) == 100, (mine.shape, ref.shape)
        assert mine.size == ref.size, f"{name}/{blob}: {mine.shape} vs OpenCV's {ref.shape}"
        scale = float(np.abs(ref).max())
        assert scale > 1e-3, f"{name}/{blob}: OpenCV's output is all but zero, a vacuous comparison"
        errors[blob] = float(np.abs(mine.reshape(ref.shape) - ref).max()) / scale
    assert max(errors.values()) < TOLERANCE, f"{name}: relative errors {errors}"
