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

The fork-layer nets: R-FCN and Faster R-CNN get fixed ROIs in their Python
proposal layer's stead (an input, for convert and OpenCV; a stand-in
rpn.proposal_layer for caffecompat.Net, which runs the net as written); Faster
R-CNN (about 23 s) is heavy. PSPNet's BN is compared with OpenCV on the same net
written with BatchNorm + Scale, at its full 473 x 473 (about 29 s, heavy).
YOLOv3's one-bottom Upsample is compared with OpenCV on the net written with
the Deconvolution it equals (128 x 128, about 13 s, heavy). YOLOv2 (Region,
its reorg written as Reshape) builds.
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


# -- The fork-layer nets: Faster R-CNN (ROIPooling), R-FCN (PSROIPooling), PSPNet (BN), YOLOv2/v3 -------------

# ROIs (batch index, x1, y1, x2, y2 in input pixels) that the test's proposal layer emits: inside the image,
# partly outside it, one pixel, and reversed corners.
FIXED_ROIS = np.array([[0, 4, 8, 60, 50], [0, -20, 10, 40, 90], [0, 30, 30, 30, 30], [0, 70, 40, 10, 5],
                       [0, 0, 0, 95, 79], [0, 50.5, 20, 90.5, 70]], np.float32)

PROPOSAL_MODULE = '''"""A stand-in for py-faster-rcnn's rpn.proposal_layer: emits the test's fixed ROIs."""
import numpy as np
import caffecompat as caffe

ROIS = np.array({rois}, np.float32)


class ProposalLayer(caffe.Layer):
    def setup(self, bottom, top):
        top[0].reshape(*ROIS.shape)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        top[0].data[...] = ROIS

    def backward(self, top, propagate_down, bottom):
        pass
'''


@dataclass
class RoiNet:
    prototxt: str
    shape: tuple[int, ...]
    blobs: list[str]
    heavy: bool = False


ROI_NETS = {
    # fc6 alone is 25088 x 4096: 550 MB of weights to write and load twice.
    "faster_rcnn_vgg16": RoiNet("faster_rcnn_vgg16/test.prototxt", (1, 3, 80, 96), ["pool5", "cls_score"],
                                heavy=True),
    "rfcn_resnet50": RoiNet("rfcn_resnet50/test_agnostic.prototxt", (1, 3, 80, 96),
                            ["psroipooled_cls_rois", "psroipooled_loc_rois", "cls_score", "bbox_pred_pre"]),
}


def _compare(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], name: str) -> None:
    errors = {}
    for blob, ref in theirs.items():
        mine = ours[blob]
        assert mine.size == ref.size, f"{name}/{blob}: {mine.shape} vs OpenCV's {ref.shape}"
        scale = float(np.abs(ref).max())
        assert scale > 1e-3, f"{name}/{blob}: OpenCV's output is all but zero, a vacuous comparison"
        errors[blob] = float(np.abs(mine.reshape(ref.shape) - ref).max()) / scale
    assert max(errors.values()) < TOLERANCE, f"{name}: relative errors {errors}"


@pytest.mark.parametrize("name", list(ROI_NETS))
def test_zoo_roi_net_converts_and_matches_opencv(zoo, tmp_path, capsys, monkeypatch, name):
    """The proposal Python layer becomes an Input of fixed ROIs for convert and OpenCV; caffecompat.Net runs the
    net as written, with a proposal layer emitting the same ROIs, and must agree with the ONNX file."""
    from google.protobuf import text_format

    import caffecompat as caffe

    z = ROI_NETS[name]
    if z.heavy and not HEAVY:
        pytest.skip(f"{name} writes and loads 550 MB of weights; set CAFFECOMPAT_ZOO_HEAVY=1 to run it")
    prototxt = zoo / z.prototxt
    net = read_net_prototxt(prototxt)
    conv.set_input_shapes(net, make_state(net, caffe_pb2.TEST), {"data": z.shape}, str(prototxt))
    (proposal,) = [lp for lp in net.layer if lp.type == "Python"]
    # The fed net declares its inputs (data, and the ROIs in the proposal layer's stead) as `input:` fields,
    # the form OpenCV reads for several inputs; im_info, read by the proposal layer alone, goes (OpenCV fails on
    # an input nothing reads).
    fed = caffe_pb2.NetParameter()
    fed.CopyFrom(net)
    del fed.layer[:]
    read = {b for lp in net.layer if lp is not proposal for b in lp.bottom}
    for lp in net.layer:
        if lp.type == "Input":
            for top, shape in zip(lp.top, lp.input_param.shape):
                if top not in read:
                    continue
                fed.input.append(top)
                fed.input_shape.add().CopyFrom(shape)
        elif lp is not proposal:
            fed.layer.add().CopyFrom(lp)
    fed.input.append(proposal.top[0])
    fed.input_shape.add(dim=list(FIXED_ROIS.shape))
    fed_path = tmp_path / "fed.prototxt"
    fed_path.write_text(text_format.MessageToString(fed))
    fed = read_net_prototxt(fed_path)  # upgraded: the inputs as Input layers
    weights = tmp_path / "weights.caffemodel"
    _write_weights(fed, weights)

    onnx_path = tmp_path / "net.onnx"
    argv = ["convert", str(fed_path), str(weights), str(onnx_path), "-outputs", ",".join(z.blobs)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    x = np.random.default_rng(1).uniform(-1, 1, size=z.shape).astype(np.float32)
    feeds = {"data": x, "im_info": np.array([[z.shape[2], z.shape[3], 1.0]], np.float32), "rois": FIXED_ROIS}
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    ours = dict(zip(names, sess.run(names, {i.name: feeds[i.name] for i in sess.get_inputs()})))
    del sess

    cv_net = cv2.dnn.readNetFromCaffe(str(fed_path), str(weights))
    cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv_net.enableFusion(False)
    for k in fed.input if fed.input else [t for lp in fed.layer if lp.type == "Input" for t in lp.top]:
        cv_net.setInput(feeds[k], k)
    layer = _opencv_layer_names(fed)
    _compare(ours, dict(zip(z.blobs, cv_net.forward([layer[b] for b in z.blobs]))), name)

    # The net as its authors wrote it, Python proposal layer included.
    (tmp_path / "rpn").mkdir()
    (tmp_path / "rpn" / "__init__.py").write_text("")
    (tmp_path / "rpn" / "proposal_layer.py").write_text(PROPOSAL_MODULE.format(rois=FIXED_ROIS.tolist()))
    monkeypatch.syspath_prepend(str(tmp_path))
    written = tmp_path / "written.prototxt"
    written.write_text(text_format.MessageToString(net))
    pynet = caffe.Net(str(written), str(weights), caffe.TEST)
    pynet.forward(data=x, im_info=feeds["im_info"])
    _compare({b: pynet.blobs[b].data for b in z.blobs}, {b: ours[b] for b in z.blobs},
             f"{name} through caffecompat.Net")


def test_pspnet_bn_net_converts_and_matches_opencv_as_batchnorm_and_scale(zoo, tmp_path, capsys):
    """OpenCV has no BN: the reference is the same net with each BN written as BatchNorm (the stored mean and
    variance, factor 1) then Scale (slope, bias), which is the fork's TEST-phase formula."""
    if not HEAVY:
        pytest.skip("PSPNet-50 needs its 473 x 473 input (the pyramid pools 60 x 60 maps): set "
                    "CAFFECOMPAT_ZOO_HEAVY=1 to run it")
    from google.protobuf import text_format

    prototxt = zoo / "pspnet50_ade20k/pspnet50_ADE20K_473.prototxt"
    net = read_net_prototxt(prototxt)
    spec = netspec.build(net, caffe_pb2.TEST)
    rng = np.random.default_rng(0)
    ours_w, theirs_w = caffe_pb2.NetParameter(name=net.name), caffe_pb2.NetParameter(name=net.name)
    ref = caffe_pb2.NetParameter()
    ref.CopyFrom(net)
    del ref.layer[:]
    nodes = {node.name: node for node in spec.layers}
    for lp in net.layer:
        if lp.type != "BN":
            ref.layer.add().CopyFrom(lp)
        node = nodes.get(lp.name)
        if node is None or not node.param_shapes:
            continue
        if lp.type == "BN":
            c = node.param_shapes[0][1]
            slope, bias = rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c)
            mean, var = rng.normal(0, 0.1, c), rng.uniform(0.5, 1.5, c)
            blobs = [a.reshape(1, c, 1, 1) for a in (slope, bias, mean, var)]
            bn = ref.layer.add(name=lp.name, type="BatchNorm", bottom=lp.bottom, top=lp.top)
            bn.batch_norm_param.use_global_stats = True
            bn.batch_norm_param.eps = lp.bn_param.eps
            ref.layer.add(name=lp.name + "_scale", type="Scale", bottom=lp.top, top=lp.top).scale_param.bias_term = True
            ref_blobs = {lp.name: [mean, var, np.ones(1)], lp.name + "_scale": [slope, bias]}
        else:
            fan_in = np.prod(node.param_shapes[0][1:])
            blobs = [rng.normal(0, np.sqrt(2.0 / fan_in) if len(s) > 1 else 0.1, s) for s in node.param_shapes]
            ref_blobs = {lp.name: blobs}
        layer = ours_w.layer.add(name=lp.name, type=lp.type)
        for a in blobs:
            array_to_blob(np.asarray(a, np.float32), layer.blobs.add())
        for n, arrays in ref_blobs.items():
            layer = theirs_w.layer.add(name=n, type=ref.layer[[r.name for r in ref.layer].index(n)].type)
            for a in arrays:
                array_to_blob(np.asarray(a, np.float32), layer.blobs.add())
    write_caffemodel(tmp_path / "ours.caffemodel", ours_w)
    write_caffemodel(tmp_path / "ref.caffemodel", theirs_w)
    (tmp_path / "ref.prototxt").write_text(text_format.MessageToString(ref))

    onnx_path = tmp_path / "net.onnx"
    blobs = ["conv6", "conv6_interp"]  # the logits, and their zoom_factor 8 Interp (the net's output)
    argv = ["convert", str(prototxt), str(tmp_path / "ours.caffemodel"), str(onnx_path), "-outputs", blobs[0]]
    assert cli.main(argv) == 0, capsys.readouterr().err
    x = np.random.default_rng(1).uniform(-1, 1, size=(1, 3, 473, 473)).astype(np.float32)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ours = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"data": x})))
    del sess
    cv_net = cv2.dnn.readNetFromCaffe(str(tmp_path / "ref.prototxt"), str(tmp_path / "ref.caffemodel"))
    cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv_net.enableFusion(False)
    cv_net.setInput(x)
    layer = _opencv_layer_names(ref)
    _compare(ours, dict(zip(blobs, cv_net.forward([layer[b] for b in blobs]))), "pspnet50")


def test_yolov3_one_bottom_upsample_net_converts_and_matches_opencv(zoo, tmp_path, capsys):
    """OpenCV's Caffe importer has no Upsample: its reference net writes each one as the Deconvolution it equals
    (one 2 x 2 kernel of ones per channel, stride 2)."""

    from google.protobuf import text_format

    if not HEAVY:
        pytest.skip("YOLOv3 (62M weights, 107 layers) takes about 20 s on 2 cores; set CAFFECOMPAT_ZOO_HEAVY=1")
    text = (zoo / "yolov3_darknet/yolov3.prototxt").read_text()
    prototxt = tmp_path / "yolov3.prototxt"
    prototxt.write_text(text)
    shape = (1, 3, 128, 128)
    net = read_net_prototxt(prototxt)
    conv.set_input_shapes(net, make_state(net, caffe_pb2.TEST), {"data": shape}, str(prototxt))
    weights = tmp_path / "weights.caffemodel"
    _write_weights(net, weights)
    onnx_path = tmp_path / "net.onnx"
    argv = ["convert", str(prototxt), str(weights), str(onnx_path), "-input_shape", "data:1,3,128,128"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    x = np.random.default_rng(1).uniform(-1, 1, size=shape).astype(np.float32)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    ours = dict(zip(names, sess.run(names, {"data": x})))
    del sess

    spec = netspec.build(net, caffe_pb2.TEST)
    channels = {node.name: node.bottom_shapes[0][1] for node in spec.layers if node.type == "Upsample"}
    assert len(channels) == 2
    ref = caffe_pb2.NetParameter()
    ref.CopyFrom(net)
    model = caffe_pb2.NetParameter()
    model.MergeFromString(weights.read_bytes())
    for lp in ref.layer:
        if lp.type == "Upsample":
            lp.type = "Deconvolution"
            lp.ClearField("upsample_param")
            cp = lp.convolution_param
            cp.num_output, cp.group, cp.bias_term = channels[lp.name], channels[lp.name], False
            cp.kernel_size.append(2)
            cp.stride.append(2)
            blob = model.layer.add(name=lp.name, type="Deconvolution").blobs.add()
            array_to_blob(np.ones((channels[lp.name], 1, 2, 2), np.float32), blob)
    (tmp_path / "ref.prototxt").write_text(text_format.MessageToString(ref))
    write_caffemodel(tmp_path / "ref.caffemodel", model)
    cv_net = cv2.dnn.readNetFromCaffe(str(tmp_path / "ref.prototxt"), str(tmp_path / "ref.caffemodel"))
    cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv_net.enableFusion(False)
    cv_net.setInput(x)
    layer = _opencv_layer_names(ref)
    _compare(ours, dict(zip(names, cv_net.forward([layer[b] for b in names]))), "yolov3")


@pytest.mark.parametrize("prototxt", ["yolov3_darknet/yolov3.prototxt", "yolov2_voc_region/yolo-voc.2.0.prototxt"])
def test_zoo_yolo_nets_build(zoo, prototxt):
    # Their fork fields (UpsampleParameter.stride, region_param, reorg as written) are in the schema and honoured.
    spec = netspec.build(read_net_prototxt(zoo / prototxt), caffe_pb2.TEST)
    assert spec.layers
