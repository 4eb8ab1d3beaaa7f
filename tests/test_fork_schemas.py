"""The forks' schemas in our superset schema: each fork's fields parse, and each is honoured or refused by name.

The field lists below are ours: for each fork, the fields its caffe.proto adds
(to BVLC's messages, or in its own messages) that its published nets use,
with the kind of value the fork gives them. Then OpenCV's DetectionOutput
`clip` against cv2.dnn (the layers of OpenCV's ResNet-10 SSD face detector,
rebuilt small), SSD's adaptive NMS (eta) against a hand-computed case and
SSD's Forward loop, and BVLC files parsing byte-identically.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import descriptor_pool, message_factory, text_format
from google.protobuf.descriptor import FieldDescriptor as FD

from caffecompat import glog
from caffecompat.errors import CaffeCompatError, NotSupportedError
from caffecompat.formats import forks, protofile
from caffecompat.formats.net import read_net_prototxt
from caffecompat.layers.registry import supported_types
from caffecompat.net.export import export
from caffecompat.proto import caffe_pb2
from tests.layer_nets import forward, make_net, opencv_forward, random_params, relative_error
from tests.test_layers_ssd import ssd_detection_output

ROOT = Path(__file__).resolve().parent.parent
f32 = np.float32


@pytest.fixture(autouse=True)
def quiet_log():
    glog.set_stream(io.StringIO())
    yield
    glog.set_stream(None)


# "Message.field": the protobuf type the fork gives it (a message's name for message fields).
FORK_SCHEMAS: dict[str, dict[str, str]] = {
    "OpenCV (modules/dnn/src/caffe/opencv-caffe.proto)": {
        "DetectionOutputParameter.clip": "bool",
        "DetectionOutputParameter.normalized_bbox": "bool",
        "PriorBoxParameter.offset_h": "float", "PriorBoxParameter.offset_w": "float",
        "PriorBoxParameter.width": "float", "PriorBoxParameter.height": "float",
        "PoolingParameter.ceil_mode": "bool",
        "LayerParameter.norm_param": "NormalizeParameter",
        "NormalizeParameter.across_spatial": "bool", "NormalizeParameter.eps": "float",
        "LayerParameter.proposal_param": "ProposalParameter", "ProposalParameter.feat_stride": "uint32",
        "ProposalParameter.ratio": "float", "ProposalParameter.nms_thresh": "float",
        "LayerParameter.roi_pooling_param": "ROIPoolingParameter",
        "LayerParameter.psroi_pooling_param": "PSROIPoolingParameter",
    },
    "SSD (weiliu89/caffe)": {
        "LayerParameter.detection_output_param": "DetectionOutputParameter",
        "DetectionOutputParameter.nms_param": "NonMaximumSuppressionParameter",
        "NonMaximumSuppressionParameter.eta": "float", "NonMaximumSuppressionParameter.top_k": "int32",
        "DetectionOutputParameter.save_output_param": "SaveOutputParameter",
        "DetectionOutputParameter.visualize": "bool", "DetectionOutputParameter.save_file": "string",
        "LayerParameter.prior_box_param": "PriorBoxParameter", "PriorBoxParameter.step_h": "float",
        "LayerParameter.permute_param": "PermuteParameter",
        "LayerParameter.multibox_loss_param": "MultiBoxLossParameter",
        "TransformationParameter.resize_param": "ResizeParameter",
        "SolverParameter.eval_type": "string",
    },
    "DeepLab v2": {
        "LayerParameter.interp_param": "InterpParameter", "InterpParameter.zoom_factor": "int32",
        "LayerParameter.dense_crf_param": "DenseCRFParameter", "ImageDataParameter.label_type": "enum",
        "LayerParameter.seg_accuracy_param": "SegAccuracyParameter",
    },
    "PSPNet (hszhao/PSPNet)": {
        "LayerParameter.bn_param": "BNParameter", "BNParameter.slope_filler": "FillerParameter",
        "BNParameter.frozen": "bool", "BNParameter.momentum": "float",
        "BatchNormParameter.update_global_stats": "bool",
    },
    "Fast R-CNN (rbgirshick/caffe-fast-rcnn)": {
        "LayerParameter.roi_pooling_param": "ROIPoolingParameter", "ROIPoolingParameter.pooled_h": "uint32",
        "ROIPoolingParameter.spatial_scale": "float",
        "LayerParameter.smooth_l1_loss_param": "SmoothL1LossParameter", "SmoothL1LossParameter.sigma": "float",
        "DropoutParameter.scale_train": "bool",
    },
    "R-FCN (daijifeng001/caffe-rfcn)": {
        "LayerParameter.psroi_pooling_param": "PSROIPoolingParameter", "PSROIPoolingParameter.output_dim": "int32",
        "PSROIPoolingParameter.group_size": "int32",
        "LayerParameter.box_annotator_ohem_param": "BoxAnnotatorOHEMParameter",
        "BoxAnnotatorOHEMParameter.roi_per_img": "uint32",
    },
    "YOLOv2 ports (ysh329/darknet2caffe)": {
        "LayerParameter.region_param": "RegionParameter", "RegionParameter.anchors": "string",
        "RegionParameter.classes": "uint32", "RegionParameter.num": "uint32", "RegionParameter.jitter": "float",
        "RegionParameter.nms_thresh": "float",
        "LayerParameter.reorg_param": "ReorgParameter", "ReorgParameter.stride": "uint32",
    },
    "YOLOv3 ports (one-bottom Upsample)": {
        "LayerParameter.upsample_param": "UpsampleParameter", "UpsampleParameter.stride": "uint32",
    },
    "NVIDIA Caffe (0.15)": {
        "BatchNormParameter.scale_bias": "bool", "BatchNormParameter.scale_filler": "FillerParameter",
        "ConvolutionParameter.cudnn_convolution_algo_seeker": "enum",
        "TransformationParameter.use_gpu_transform": "bool",
        "LayerParameter.detectnet_groundtruth_param": "DetectNetGroundTruthParameter",
        "DetectNetAugmentationParameter.flip_prob": "float",
        "SolverParameter.max_epoch": "int32", "SolverParameter.per_parameter_reduce": "bool",
    },
}

# What we do with some of them (the rest follow from whether their layer type is implemented).
HONOURED = ["DetectionOutputParameter.clip", "NonMaximumSuppressionParameter.eta", "PoolingParameter.ceil_mode",
            "NonMaximumSuppressionParameter.top_k", "InterpParameter.zoom_factor",
            "ConvolutionParameter.cudnn_convolution_algo_seeker",  # changes only speed
            "UpsampleParameter.stride"]
REFUSED = ["DetectionOutputParameter.visualize", "DetectionOutputParameter.save_file",
           "PriorBoxParameter.width", "DropoutParameter.scale_train", "BatchNormParameter.update_global_stats",
           "SolverParameter.max_epoch", "DetectNetAugmentationParameter.flip_prob"]

_SCALARS = {FD.TYPE_BOOL: "bool", FD.TYPE_FLOAT: "float", FD.TYPE_INT32: "int32", FD.TYPE_UINT32: "uint32",
            FD.TYPE_STRING: "string", FD.TYPE_ENUM: "enum", FD.TYPE_INT64: "int64"}


def _field(key: str):
    message, name = key.split(".")
    return getattr(caffe_pb2, message).DESCRIPTOR.fields_by_name.get(name)


@pytest.mark.parametrize("fork", list(FORK_SCHEMAS))
def test_every_listed_field_of_the_fork_parses_with_its_type(fork):
    for key, kind in FORK_SCHEMAS[fork].items():
        field = _field(key)
        assert field is not None, f"{fork}: {key} missing from our schema"
        ours = field.message_type.name if field.type == FD.TYPE_MESSAGE else _SCALARS[field.type]
        assert ours == kind, f"{fork}: {key} is {ours} in our schema, {kind} in the fork's"
        status = forks.field_status(key)
        assert status == "honoured" or status.startswith("refused: "), (key, status)


def test_which_fields_are_honoured_and_which_refused():
    for key in HONOURED:
        assert forks.field_status(key) == "honoured", key
    for key in REFUSED:
        assert forks.field_status(key).startswith("refused: "), key
    # A field of a fork layer's own message follows its layer type.
    region = "Region" in supported_types()
    assert (forks.field_status("RegionParameter.anchors") == "honoured") == region
    if not region:
        assert forks.field_status("RegionParameter.anchors") == "refused: layer type Region is not implemented"


DET_INPUTS = ('layer { name: "loc" type: "Input" top: "loc" input_param { shape { dim: 1 dim: 8 } } }\n'
              'layer { name: "conf" type: "Input" top: "conf" input_param { shape { dim: 1 dim: 4 } } }\n'
              'layer { name: "prior" type: "Input" top: "prior" input_param { shape { dim: 1 dim: 2 dim: 8 } } }\n')


def _det(params: str) -> str:
    return (DET_INPUTS + 'layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" '
            f'top: "det" detection_output_param {{ num_classes: 2 {params} }} }}\n')


def test_refused_fields_are_named_before_anything_runs(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(_det('visualize: false save_file: "out.txt" nms_param { eta: 0.9 } clip: 1 '
                         'save_output_param { output_directory: "out" }'))
    with pytest.raises(NotSupportedError) as e:
        read_net_prototxt(path)
    msg = str(e.value)
    assert msg.startswith("not supported: layer det of type DetectionOutput (field "
                          "detection_output_param.save_output_param: DetectionOutputParameter.save_output_param of SSD")
    assert "DetectionOutputParameter.save_file of SSD, writing detection files" in msg and msg.endswith("2 in all)")
    assert "visualize" not in msg and "eta" not in msg and "clip" not in msg  # restated default; honoured
    path.write_text(_det("clip: true nms_param { nms_threshold: 0.6 eta: 0.5 }")
                    + 'layer { name: "c" type: "Convolution" bottom: "prior" top: "c" convolution_param { '
                      'num_output: 1 kernel_size: 1 cudnn_convolution_algo_seeker: GET } }\n')
    read_net_prototxt(path)


def test_nvidias_epoch_schedule_is_refused_in_a_solver(tmp_path):
    from caffecompat.formats.solver import read_solver_prototxt

    path = tmp_path / "solver.prototxt"
    path.write_text('net: "net.prototxt"\nbase_lr: 0.01\nmax_epoch: 30\nper_parameter_reduce: false\n')
    with pytest.raises(NotSupportedError, match="solver field max_epoch of NVIDIA Caffe") as e:
        read_solver_prototxt(path)
    assert "per_parameter_reduce" not in str(e.value)


def test_the_yolo_zoo_files_parse_now(zoo):
    for rel in ("yolov2_voc_region/yolo-voc.2.0.prototxt", "yolov3_darknet/yolov3.prototxt"):
        net = read_net_prototxt(zoo / rel, check=False)
        assert any(lp.type in ("Region", "Upsample") for lp in net.layer)
    region = next(lp for lp in read_net_prototxt(zoo / "yolov2_voc_region/yolo-voc.2.0.prototxt", check=False).layer
                  if lp.type == "Region")
    assert region.region_param.anchors.startswith("1.08,1.19") and region.region_param.classes == 10
    assert region.region_param.jitter == f32(0.2) and region.region_param.nms_thresh == f32(0.3)


def _other_yolo_proto(tmp_path: Path) -> Path:
    """BVLC's caffe.proto with another YOLO port's RegionParameter (its names differ from darknet2caffe's)."""
    text = (ROOT / "proto" / "caffe.proto").read_text()
    anchor = "  optional WindowDataParameter window_data_param = 129;\n"
    assert text.count(anchor) == 1
    text = text.replace(anchor, anchor + "  optional RegionParameter region_param = 149;\n")
    text += ("\nmessage RegionParameter {\n  optional uint32 classes = 1 [default = 20];\n"
             "  optional uint32 coords = 2 [default = 4];\n  optional uint32 boxes_of_each_grid = 3 [default = 5];\n"
             "  optional bool softmax = 4 [default = false];\n}\n")
    folder = tmp_path / "yolo_port"
    folder.mkdir()
    (folder / "caffe.proto").write_text(text)
    return folder / "caffe.proto"


def test_a_fork_that_disagrees_on_a_name_is_read_with_its_own_proto(tmp_path):
    pytest.importorskip("grpc_tools")
    path = tmp_path / "yolo.prototxt"
    path.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 125 dim: 13 '
                    'dim: 13 } } }\nlayer { name: "region" type: "Region" bottom: "data" top: "region"\n'
                    '  region_param { classes: 20 boxes_of_each_grid: 5 softmax: true } }\n')
    with pytest.raises(CaffeCompatError, match=r":3:\d+: malformed net prototxt: unknown field 'boxes_of_each_grid' "
                                               "in RegionParameter: .*-proto FILE"):
        read_net_prototxt(path)
    with pytest.raises(NotSupportedError, match=r"layer region of type Region \(field region_param."
                                                r"boxes_of_each_grid of .*caffe.proto\)"):
        read_net_prototxt(path, proto=_other_yolo_proto(tmp_path))


# --- BVLC files parse as with BVLC's schema alone ------------------------------------------------------

def _bvlc_only_class():
    generate = pytest.importorskip("proto.generate", reason="proto/generate.py needs grpcio-tools (dev extra)")
    files = generate.compile_files("caffe.proto")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(files["caffe.proto"])
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("caffe.NetParameter"))


def test_bvlc_and_zoo_files_serialize_byte_identically(bvlc, zoo):
    pytest.importorskip("grpc_tools")
    bvlc_net = _bvlc_only_class()
    same = forks_only = 0
    for path in sorted([*bvlc.rglob("*.prototxt"), *zoo.rglob("*.prototxt")]):
        if "solver" in path.name:
            continue
        text = path.read_text()
        theirs = bvlc_net()
        try:
            text_format.Parse(text, theirs)
        except text_format.ParseError:
            protofile.parse_text(text, caffe_pb2.NetParameter, path, "net")  # a fork's file: ours reads it
            forks_only += 1
            continue
        ours = protofile.parse_text(text, caffe_pb2.NetParameter, path, "net")
        assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True), path
        same += 1
    assert same >= 30 and forks_only >= 5, (same, forks_only)


# --- SSD's adaptive NMS ------------------------------------------------------------------------------------

def test_adaptive_nms_hand_computed():
    # Three boxes of class 1 (CORNER code, zero offsets: the priors are the boxes). A (0.9) is kept and the
    # threshold 0.6 > 0.5 becomes 0.6 * 0.5 = 0.3; B (0.8) overlaps A by 0.4 / 1 = 0.4 > 0.3: suppressed
    # (with eta 1 it is kept: 0.4 <= 0.6); C (0.7) overlaps nothing: kept.
    boxes = np.array([[0, 0, 1, 1], [0, 0, 1, 0.4], [2, 2, 3, 3]], f32)
    prior = np.stack([boxes.reshape(-1), np.ones(12, f32)])[None]
    loc = np.zeros((1, 12), f32)
    conf = np.array([[0.1, 0.9, 0.2, 0.8, 0.3, 0.7]], f32)
    feeds = {"loc": loc, "conf": conf, "prior": prior}
    layers = ('layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "det" '
              'detection_output_param { num_classes: 2 nms_param { nms_threshold: 0.6 ETA } } }\n')
    shapes = {k: v.shape for k, v in feeds.items()}
    adaptive = forward(make_net(layers.replace("ETA", "eta: 0.5"), shapes), {}, feeds, ["det"])["det"][0, 0]
    fixed = forward(make_net(layers.replace("ETA", ""), shapes), {}, feeds, ["det"])["det"][0, 0]
    np.testing.assert_allclose(adaptive, [[0, 1, 0.9, 0, 0, 1, 1], [0, 1, 0.7, 2, 2, 3, 3]], rtol=1e-6)
    np.testing.assert_allclose(fixed[:, 2], [0.9, 0.8, 0.7], rtol=1e-6)
    for opset in (11, 13):  # the Loop is valid ONNX, and runs the same, at the layer's lowest opset too
        model = export(make_net(layers.replace("ETA", "eta: 0.5"), shapes), params={}, opset=opset).model
        onnx.checker.check_model(model, full_check=True)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(sess.run(None, feeds)[0][0, 0], adaptive)


def _ssd_inputs(num: int, priors: int, classes: int, seed: int, spread: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.integers(0, 4, size=(priors, 2)) / 4 + 0.125 + rng.normal(scale=0.03, size=(priors, 2))
    sizes = rng.uniform(0.1, 0.5, size=(priors, 2))
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1)
    prior = np.stack([boxes.reshape(-1), np.tile([0.1, 0.1, 0.2, 0.2], priors)])[None].astype(f32)
    loc = rng.normal(scale=spread, size=(num, priors * 4)).astype(f32)
    logits = rng.normal(scale=3, size=(num, priors, classes))
    conf = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    return {"loc": loc, "conf": conf.reshape(num, -1).astype(f32), "prior": prior}


@pytest.mark.parametrize("eta,nms,clip,top_k", [(0.9, 0.8, False, 25), (0.7, 0.95, True, 25), (0.5, 0.45, False, 25),
                                               (0.8, 0.9, False, -1)])
def test_adaptive_nms_and_clip_are_ssds_forward(eta, nms, clip, top_k):
    feeds = _ssd_inputs(2, 40, 4, seed=int(eta * 10), spread=3.0 if clip else 1.0)
    params = (f"num_classes: 4 code_type: CENTER_SIZE nms_param {{ nms_threshold: {nms} eta: {eta} "
              + (f"top_k: {top_k} " if top_k > 0 else "")
              + f"}} confidence_threshold: 0.02 keep_top_k: 70 clip: {str(clip).lower()}")
    layers = ('layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "det" '
              f'detection_output_param {{ {params} }} }}\n')
    ours = forward(make_net(layers, {k: v.shape for k, v in feeds.items()}), {}, feeds, ["det"])["det"]
    kwargs = {"code": "CENTER_SIZE", "nms": nms, "top_k": top_k, "threshold": 0.02, "keep_top_k": 70, "clip": clip}
    want = ssd_detection_output(feeds["loc"], feeds["conf"], feeds["prior"], 4, eta=eta, **kwargs)
    assert ours.shape == want.shape
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-6)
    plain = ssd_detection_output(feeds["loc"], feeds["conf"], feeds["prior"], 4, **kwargs)
    if nms > 0.5:
        assert plain.shape[2] > want.shape[2]  # eta really shrinks the threshold here
    else:
        np.testing.assert_array_equal(plain, want)  # at or below 0.5 the threshold never adapts
    if clip:
        assert want[0, 0, :, 3:].min() == 0 and want[0, 0, :, 3:].max() == 1


# --- OpenCV's face detector (samples/dnn/face_detector/deploy.prototxt), rebuilt small ---------------------

def _conv(name: str, bottom: str, out: int, kernel: int, stride: int = 1, pad: int = 0) -> str:
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" convolution_param {{ '
            f'num_output: {out} kernel_size: {kernel} stride: {stride} pad: {pad} }} }}\n')


def _bn_scale_relu(name: str, blob: str) -> str:
    return (f'layer {{ name: "{name}_bn" type: "BatchNorm" bottom: "{blob}" top: "{blob}" }}\n'
            f'layer {{ name: "{name}_scale" type: "Scale" bottom: "{blob}" top: "{blob}" '
            'scale_param { bias_term: true } }\n'
            f'layer {{ name: "{name}_relu" type: "ReLU" bottom: "{blob}" top: "{blob}" }}\n')


def _head(source: str, min_size: float, max_size: float, step: float, ratios: tuple[int, ...]) -> str:
    """The face detector's per-source head: loc/conf 3x3 convs, Permute, Flatten and a PriorBox."""
    text = ""
    priors = 2 + 2 * len(ratios)  # min, sqrt(min * max), each ratio and its flip
    for kind, out in (("loc", 4 * priors), ("conf", 2 * priors)):
        text += _conv(f"{source}_mbox_{kind}", source, out, 3, pad=1)
        text += (f'layer {{ name: "{source}_mbox_{kind}_perm" type: "Permute" bottom: "{source}_mbox_{kind}" '
                 f'top: "{source}_mbox_{kind}_perm" permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}\n'
                 f'layer {{ name: "{source}_mbox_{kind}_flat" type: "Flatten" bottom: "{source}_mbox_{kind}_perm" '
                 f'top: "{source}_mbox_{kind}_flat" flatten_param {{ axis: 1 }} }}\n')
    text += (f'layer {{ name: "{source}_mbox_priorbox" type: "PriorBox" bottom: "{source}" bottom: "data" '
             f'top: "{source}_mbox_priorbox" prior_box_param {{ min_size: {min_size} max_size: {max_size} '
             + "".join(f"aspect_ratio: {r} " for r in ratios)
             + 'flip: true clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 '
             f'step: {step} offset: 0.5 }} }}\n')
    return text


def _face_detector(clip: str) -> str:
    sources = [("conv4_3_norm", 12, 24, 4, (2,)), ("fc7", 24, 40, 8, (2, 3)), ("conv6_2_h", 40, 56, 16, (2,))]
    text = ('layer { name: "data_bn" type: "BatchNorm" bottom: "data" top: "data_bn" }\n'
            'layer { name: "data_scale" type: "Scale" bottom: "data_bn" top: "data_bn" '
            'scale_param { bias_term: true } }\n'
            + _conv("conv1_h", "data_bn", 8, 7, 2, 3) + _bn_scale_relu("conv1", "conv1_h")
            + 'layer { name: "conv1_pool" type: "Pooling" bottom: "conv1_h" top: "conv1_pool" '
              'pooling_param { pool: MAX kernel_size: 3 stride: 2 } }\n'
            + _conv("layer_256_1_bn1", "conv1_pool", 16, 3, 1, 1) + _bn_scale_relu("l256", "layer_256_1_bn1")
            + 'layer { name: "conv4_3_norm" type: "Normalize" bottom: "layer_256_1_bn1" top: "conv4_3_norm" '
              'norm_param { across_spatial: false scale_filler { type: "constant" value: 20 } '
              'channel_shared: false } }\n'
            + _conv("fc7", "layer_256_1_bn1", 16, 3, 2, 1) + _bn_scale_relu("last", "fc7")
            + _conv("conv6_2_h", "fc7", 16, 3, 2, 1)
            + 'layer { name: "conv6_2_relu" type: "ReLU" bottom: "conv6_2_h" top: "conv6_2_h" }\n')
    for s in sources:
        text += _head(s[0], *s[1:])
    for kind, axis in (("loc", 1), ("conf", 1), ("priorbox", 2)):
        suffix = "" if kind == "priorbox" else "_flat"
        bottoms = " ".join(f'bottom: "{s[0]}_mbox_{kind}{suffix}"' for s in sources)
        text += (f'layer {{ name: "mbox_{kind}" type: "Concat" {bottoms} top: "mbox_{kind}" '
                 f'concat_param {{ axis: {axis} }} }}\n')
    return text + (
        'layer { name: "mbox_conf_reshape" type: "Reshape" bottom: "mbox_conf" top: "mbox_conf_reshape" '
        'reshape_param { shape { dim: 0 dim: -1 dim: 2 } } }\n'
        'layer { name: "mbox_conf_softmax" type: "Softmax" bottom: "mbox_conf_reshape" top: "mbox_conf_softmax" '
        'softmax_param { axis: 2 } }\n'
        'layer { name: "mbox_conf_flatten" type: "Flatten" bottom: "mbox_conf_softmax" top: "mbox_conf_flatten" '
        'flatten_param { axis: 1 } }\n'
        'layer { name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc" bottom: "mbox_conf_flatten" '
        'bottom: "mbox_priorbox" top: "detection_out" include { phase: TEST } detection_output_param { '
        'num_classes: 2 share_location: true background_label_id: 0 nms_param { nms_threshold: 0.45 top_k: 400 } '
        f'code_type: CENTER_SIZE keep_top_k: 200 confidence_threshold: 0.2 {clip} }} }}\n')


def _face_weights(spec, seed: int) -> dict[str, np.ndarray]:
    """Filler-free generated weights: signed convolutions (boxes spill out of the image), positive BN/Scale."""
    rng = np.random.default_rng(seed)
    params = random_params(spec, seed)
    for node in spec.layers:
        if node.type == "Convolution":
            w, b = node.param_names
            fan_in = int(np.prod(params[w].shape[1:]))
            params[w] = rng.normal(scale=1.5 / np.sqrt(fan_in), size=params[w].shape).astype(f32)
            params[b] = rng.normal(scale=0.3, size=params[b].shape).astype(f32)
    return params


def test_the_face_detector_with_clip_matches_opencv(tmp_path):
    pytest.importorskip("cv2")
    inputs = {"data": (1, 3, 64, 64)}
    feeds = {"data": np.random.default_rng(1).normal(size=inputs["data"]).astype(f32)}
    path = tmp_path / "deploy.prototxt"
    path.write_text('input: "data"\ninput_shape { dim: 1 dim: 3 dim: 64 dim: 64 }\n' + _face_detector("clip: 1"))
    read_net_prototxt(path)  # nothing refused
    spec = make_net(_face_detector("clip: 1"), inputs)
    params = _face_weights(spec, seed=2)
    blobs = {n.name: [params[p] for p in n.param_names] for n in spec.layers if n.param_names}
    ours = forward(spec, params, feeds, ["detection_out"])["detection_out"][0, 0]
    (theirs,) = opencv_forward(tmp_path, _face_detector("clip: 1"), inputs, blobs, feeds, ["detection_out"])
    theirs = theirs[0, 0][np.any(theirs[0, 0] != 0, axis=1)]
    theirs = theirs[np.lexsort((-theirs[:, 2], theirs[:, 1], theirs[:, 0]))]  # OpenCV sorts by score only
    assert ours.shape == theirs.shape and ours.shape[0] >= 5, (ours.shape, theirs.shape)
    assert relative_error(ours, theirs) < 1e-4
    assert ours[:, 3:].min() >= 0 and ours[:, 3:].max() <= 1
    unclipped = forward(make_net(_face_detector(""), inputs), params, feeds, ["detection_out"])["detection_out"][0, 0]
    assert unclipped[:, 3:].min() < 0 or unclipped[:, 3:].max() > 1  # the clip really bites
