"""Files from Caffe forks: which fields and layer types come from which fork, and what we do with them.

Our schema (proto/caffe.proto + proto/forks.proto) reads the text files of the
common forks. After reading a net, `prepare_net` translates the fork spellings
that mean a BVLC setting (`pooling_param { ceil_mode: false }` is
`round_mode: FLOOR`) and then lists every fork layer or field that caffecompat
does not implement, all in one error, before anything runs:

    not supported: layer conv4_3_norm of type Normalize (field norm_param of SSD); layer ...

A fork field counts as implemented when a layer type that reads it is
registered (caffecompat/layers); a fork layer type without a parameter message
(Axpy, ReLU6 without relu6_param) when its type is registered. A fork field on
a layer of a type that does not read it is ignored, as the fork itself ignores
it, and so is a fork field that only restates its default. Inside the
parameter message of a layer type we run, the fields FORK_MESSAGE_FIELDS marks
as not honoured are refused by name (`visualize` of SSD's DetectionOutput);
`field_status` says what happens to any fork field. Fields of a user's
own caffe.proto (-proto) that our schema lacks are reported the same way by
caffecompat.formats.userproto, in the same message.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message as pb_message

from caffecompat.errors import CaffeCompatError, NotSupportedError
from caffecompat.proto import caffe_pb2


@dataclass(frozen=True)
class ForkField:
    """A field a fork added to a BVLC message: its fork and the layer types that read it."""

    fork: str
    readers: tuple[str, ...] = ()  # layer types reading it; () for fields of BVLC messages every layer may carry
    inert: bool = False  # changes only speed (a cuDNN or GPU choice): ignored whatever its value


SSD = "SSD"
DEEPLAB = "DeepLab/PSPNet"
SEGNET = "SegNet"
FAST_RCNN = "Fast R-CNN"
RFCN = "R-FCN"
YOLO = "the YOLOv2 ports (darknet2caffe)"
NVIDIA = "NVIDIA Caffe"
OPENCV = "OpenCV's importer"

# Every field proto/forks.proto adds to a BVLC message, "Message.field" (tests check the list is complete).
FORK_FIELDS: dict[str, ForkField] = {
    "LayerParameter.annotated_data_param": ForkField(SSD, ("AnnotatedData",)),
    "LayerParameter.multibox_loss_param": ForkField(SSD, ("MultiBoxLoss",)),
    "LayerParameter.permute_param": ForkField(SSD, ("Permute",)),
    "LayerParameter.prior_box_param": ForkField(SSD, ("PriorBox",)),
    "LayerParameter.detection_output_param": ForkField(SSD, ("DetectionOutput",)),
    "LayerParameter.detection_evaluate_param": ForkField(SSD, ("DetectionEvaluate",)),
    "LayerParameter.norm_param": ForkField(SSD, ("Normalize",)),
    "LayerParameter.video_data_param": ForkField(SSD, ("VideoData",)),
    "LayerParameter.interp_param": ForkField(DEEPLAB, ("Interp",)),
    "LayerParameter.bn_param": ForkField(f"{DEEPLAB} and {SEGNET}", ("BN",)),
    "LayerParameter.seg_accuracy_param": ForkField(DEEPLAB, ("SegAccuracy",)),
    "LayerParameter.mat_read_param": ForkField(DEEPLAB, ("MatRead",)),
    "LayerParameter.mat_write_param": ForkField(DEEPLAB, ("MatWrite",)),
    "LayerParameter.dense_crf_param": ForkField(DEEPLAB, ("DenseCRF",)),
    "LayerParameter.domain_transform_param": ForkField(DEEPLAB, ("DomainTransform",)),
    "LayerParameter.bias_channel_param": ForkField(DEEPLAB, ("BiasChannel",)),
    "LayerParameter.adaptive_bias_channel_param": ForkField(DEEPLAB, ("AdaptiveBiasChannel",)),
    "LayerParameter.unique_label_param": ForkField(DEEPLAB, ("UniqueLabel",)),
    "LayerParameter.upsample_param": ForkField(SEGNET, ("Upsample",)),
    "LayerParameter.dense_image_data_param": ForkField(SEGNET, ("DenseImageData",)),
    "LayerParameter.shuffle_channel_param": ForkField("ShuffleNet", ("ShuffleChannel",)),
    "LayerParameter.relu6_param": ForkField("the ReLU6 forks", ("ReLU6",)),
    "LayerParameter.roi_pooling_param": ForkField("Fast R-CNN", ("ROIPooling",)),
    "LayerParameter.psroi_pooling_param": ForkField("R-FCN", ("PSROIPooling",)),
    "LayerParameter.smooth_l1_loss_param": ForkField(f"{FAST_RCNN} and {RFCN}", ("SmoothL1Loss",)),
    "LayerParameter.box_annotator_ohem_param": ForkField(RFCN, ("BoxAnnotatorOHEM",)),
    "LayerParameter.reorg_param": ForkField(YOLO, ("Reorg",)),
    "LayerParameter.region_param": ForkField(YOLO, ("Region",)),
    "LayerParameter.proposal_param": ForkField(OPENCV, ("Proposal",)),
    "LayerParameter.detectnet_groundtruth_param": ForkField(NVIDIA, ("DetectNetTransformation",)),
    "LayerParameter.detectnet_augmentation_param": ForkField(NVIDIA, ("DetectNetTransformation",)),
    "ConvolutionParameter.cudnn_convolution_algo_seeker": ForkField(NVIDIA, inert=True),
    "TransformationParameter.use_gpu_transform": ForkField(NVIDIA, inert=True),
    # Translated into round_mode by prepare_net.
    "PoolingParameter.ceil_mode": ForkField("BVLC pull request 3057 (DenseNet, OpenCV)"),
    "TransformationParameter.resize_param": ForkField(SSD),
    "TransformationParameter.noise_param": ForkField(SSD),
    "TransformationParameter.distort_param": ForkField(SSD),
    "TransformationParameter.expand_param": ForkField(SSD),
    "TransformationParameter.emit_constraint": ForkField(SSD),
    "TransformationParameter.crop_h": ForkField(SSD),
    "TransformationParameter.crop_w": ForkField(SSD),
    "TransformationParameter.scale_factors": ForkField(DEEPLAB),
    "TransformationParameter.crop_width": ForkField(DEEPLAB),
    "TransformationParameter.crop_height": ForkField(DEEPLAB),
    "ImageDataParameter.ignore_label": ForkField(DEEPLAB),
    "ImageDataParameter.label_type": ForkField(DEEPLAB),
    "LossParameter.weight_by_label_freqs": ForkField(SEGNET),
    "LossParameter.class_weighting": ForkField(SEGNET),
    "DropoutParameter.sample_weights_test": ForkField(SEGNET),
    "DropoutParameter.scale_train": ForkField(f"{FAST_RCNN} and {RFCN}"),
    "BatchNormParameter.update_global_stats": ForkField(DEEPLAB),
    "BatchNormParameter.scale_bias": ForkField(NVIDIA),
    "BatchNormParameter.scale_filler": ForkField(NVIDIA),
    "BatchNormParameter.bias_filler": ForkField(NVIDIA),
    "SolverParameter.eval_type": ForkField(SSD),
    "SolverParameter.ap_version": ForkField(SSD),
    "SolverParameter.show_per_class_result": ForkField(SSD),
    "SolverParameter.plateau_winsize": ForkField(SSD),
    "SolverParameter.test_epoch_size": ForkField(NVIDIA),
    "SolverParameter.test_interval_epoch": ForkField(NVIDIA),
    "SolverParameter.max_epoch": ForkField(NVIDIA),
    "SolverParameter.epoch_size": ForkField(NVIDIA),
    "SolverParameter.per_parameter_reduce": ForkField(NVIDIA, inert=True),
}

YOLO3 = "the YOLOv3 ports"


@dataclass(frozen=True)
class MessageField:
    """A field of a fork's own parameter message: its fork, and why a layer we implement would not honour it."""

    fork: str
    refused: str = ""  # "" when the layer honours it; else what to do instead
    harmless: tuple[object, ...] = ()  # values of a refused field that ask for what the layer does anyway


# Fields inside the fork messages of implemented layer types that some fork adds (or that the layer does not
# honour): "Message.field". A refused field set in a file (to a value not in `harmless`) is reported by name
# before anything runs; the layer's other fields are all honoured.
FORK_MESSAGE_FIELDS: dict[str, MessageField] = {
    "DetectionOutputParameter.clip": MessageField(OPENCV),
    "DetectionOutputParameter.normalized_bbox": MessageField(
        OPENCV, "priors in pixels; give PriorBox normalized priors (its default)", (True,)),
    "DetectionOutputParameter.visualize": MessageField(SSD, "drawing the detections; remove it", (False,)),
    "DetectionOutputParameter.visualize_threshold": MessageField(SSD, "read only by visualize; remove it"),
    "DetectionOutputParameter.save_output_param": MessageField(
        SSD, "writing detection files; read the detections from the top instead"),
    "DetectionOutputParameter.save_file": MessageField(SSD, "writing detection files; remove it"),
    "NonMaximumSuppressionParameter.eta": MessageField(SSD),
    "PriorBoxParameter.offset_h": MessageField(OPENCV, "explicit prior offsets; use offset"),
    "PriorBoxParameter.offset_w": MessageField(OPENCV, "explicit prior offsets; use offset"),
    "PriorBoxParameter.width": MessageField(OPENCV, "explicit prior sizes; use min_size, max_size, aspect_ratio"),
    "PriorBoxParameter.height": MessageField(OPENCV, "explicit prior sizes; use min_size, max_size, aspect_ratio"),
    "UpsampleParameter.stride": MessageField(YOLO3),  # the one-bottom nearest-neighbour factor (upsample.py)
}

# Layer types that only forks have (their parameters, if any, are FORK_FIELDS).
FORK_TYPES: dict[str, str] = {
    **{t: SSD for t in ("AnnotatedData", "MultiBoxLoss", "Permute", "PriorBox", "DetectionOutput",
                        "DetectionEvaluate", "Normalize", "VideoData", "SmoothL1Loss")},
    **{t: DEEPLAB for t in ("Interp", "SegAccuracy", "ImageSegData", "MatRead", "MatWrite", "DenseCRF",
                            "DomainTransform", "BiasChannel", "AdaptiveBiasChannel", "UniqueLabel")},
    "BN": f"{DEEPLAB} and {SEGNET}",
    "Upsample": SEGNET,
    "DenseImageData": SEGNET,
    "ShuffleChannel": "ShuffleNet",
    "ConvolutionDepthwise": "the depthwise-convolution forks",
    "DepthwiseConvolution": "the depthwise-convolution forks",
    "ReLU6": "the ReLU6 forks",
    "Axpy": "SENet",
    "ImageLabelmapData": "HED",
    "ROIPooling": "Fast R-CNN",
    "PSROIPooling": "R-FCN",
    "BoxAnnotatorOHEM": RFCN,
    "Reorg": YOLO,
    "Region": YOLO,
    "DetectNetTransformation": NVIDIA,
    "Proposal": OPENCV,
}


def _registered() -> frozenset[str]:
    from caffecompat.layers.registry import supported_types

    return frozenset(supported_types())


def _is_default(field: pb_descriptor.FieldDescriptor, value: object) -> bool:
    if field.is_repeated or field.type == field.TYPE_MESSAGE:
        return False
    return value == field.default_value


def _fork_fields_in(msg: pb_message.Message, path: str) -> Iterable[tuple[str, ForkField, pb_descriptor.FieldDescriptor,
                                                                           object]]:
    """(path, ForkField, field, value) of every fork field set in `msg` and its BVLC sub-messages."""
    for field, value in msg.ListFields():
        key = f"{msg.DESCRIPTOR.name}.{field.name}"
        where = f"{path}{field.name}"
        fork = FORK_FIELDS.get(key)
        if fork is not None:
            yield where, fork, field, value
            continue
        if field.type != field.TYPE_MESSAGE:
            continue
        items = value if field.is_repeated else [value]
        for i, item in enumerate(items):
            suffix = f"[{i}]." if field.is_repeated else "."
            yield from _fork_fields_in(item, where + suffix)


def _refused_in(msg: pb_message.Message, path: str, label: str) -> list[str]:
    """The refused FORK_MESSAGE_FIELDS set in `msg` (a fork's parameter message) and its sub-messages."""
    problems = []
    for field, value in msg.ListFields():
        key = f"{msg.DESCRIPTOR.name}.{field.name}"
        known = FORK_MESSAGE_FIELDS.get(key)
        if known is not None and known.refused and value not in known.harmless:
            problems.append(f"{label} (field {path}{field.name}: {key} of {known.fork}, {known.refused})")
        elif field.type == field.TYPE_MESSAGE and not field.is_repeated:
            problems += _refused_in(value, f"{path}{field.name}.", label)
    return problems


def layer_problems(lp: caffe_pb2.LayerParameter, registered: frozenset[str] | None = None) -> list[str]:
    """What of layer `lp` comes from a fork and is not implemented, one entry per field (or type)."""
    registered = _registered() if registered is None else registered
    known_type = lp.type in registered
    label = f"layer {lp.name} of type {lp.type}"
    problems = []
    for where, fork, field, value in _fork_fields_in(lp, ""):
        if fork.readers:
            # A fork reads its layer's own parameter message only in the layer types that use it.
            if lp.type in fork.readers and not known_type:
                problems.append(f"{label} (field {where} of {fork.fork})")
        elif not fork.inert and not _is_default(field, value):
            problems.append(f"{label} (field {where} of {fork.fork})")
    if known_type:
        for where, fork, _field, value in _fork_fields_in(lp, ""):
            if lp.type in fork.readers and isinstance(value, pb_message.Message):
                problems += _refused_in(value, where + ".", label)
    if not problems and not known_type and lp.type in FORK_TYPES:
        problems.append(f"{label} (a layer of {FORK_TYPES[lp.type]})")
    return problems


def translate_ceil_mode(lp: caffe_pb2.LayerParameter, source: str) -> None:
    """`pooling_param { ceil_mode }` of the forks as BVLC's round_mode, in place."""
    p = lp.pooling_param
    if not (lp.HasField("pooling_param") and p.HasField("ceil_mode")):
        return
    # BVLC pull request 3057: ceil_mode true rounds the pooled size up (CEIL), false down (FLOOR).
    mode = caffe_pb2.PoolingParameter.CEIL if p.ceil_mode else caffe_pb2.PoolingParameter.FLOOR
    if p.HasField("round_mode") and p.round_mode != mode:
        raise CaffeCompatError(
            f"{source}: layer '{lp.name}' (Pooling) sets both ceil_mode: {str(p.ceil_mode).lower()} and round_mode: "
            f"{caffe_pb2.PoolingParameter.RoundMode.Name(p.round_mode)}, which disagree; keep one of them")
    p.round_mode = mode
    p.ClearField("ceil_mode")


def net_problems(net: caffe_pb2.NetParameter) -> list[str]:
    """Every unimplemented fork layer or field of `net`, in layer order."""
    registered = _registered()
    problems: list[str] = []
    for lp in net.layer:
        problems += layer_problems(lp, registered)
    return problems


def raise_problems(problems: list[str], source: str) -> None:
    """One NotSupportedError listing every problem, naming the file."""
    if problems:
        raise NotSupportedError(f"{'; '.join(problems)} (in {source}; {len(problems)} in all)"
                                if len(problems) > 1 else f"{problems[0]} (in {source})")


def prepare_net(net: caffe_pb2.NetParameter, source: str, problems: Iterable[str] = ()) -> None:
    """Translate fork spellings of BVLC settings in place, then raise for what remains unimplemented.

    `problems` are earlier findings about the same file (from reading it with a
    user's caffe.proto); they head the one error message.
    """
    for lp in net.layer:
        translate_ceil_mode(lp, source)
    raise_problems(list(problems) + net_problems(net), source)


def solver_problems(solver: caffe_pb2.SolverParameter) -> list[str]:
    """Fork fields of the solver itself that change what it does (SSD's detection evaluation)."""
    problems = []
    for field, value in solver.ListFields():
        fork = FORK_FIELDS.get(f"SolverParameter.{field.name}")
        if fork is not None and not fork.inert and not _is_default(field, value):
            problems.append(f"solver field {field.name} of {fork.fork}")
    return problems


def _readers_by_message() -> dict[str, frozenset[str]]:
    """The layer types reading each fork parameter message (and the messages nested in it), by message name."""
    readers: dict[str, set[str]] = {}

    def walk(message: pb_descriptor.Descriptor, types: tuple[str, ...], seen: frozenset[str]) -> None:
        readers.setdefault(message.name, set()).update(types)
        for f in message.fields:
            if f.message_type is not None and f.message_type.name not in seen:
                walk(f.message_type, types, seen | {f.message_type.name})

    layer = caffe_pb2.LayerParameter.DESCRIPTOR
    for key, fork in FORK_FIELDS.items():
        message, name = key.split(".")
        if message == "LayerParameter" and fork.readers:
            sub = layer.fields_by_name[name].message_type
            walk(sub, fork.readers, frozenset({sub.name}))
    return {m: frozenset(t) for m, t in readers.items()}


def field_status(key: str, registered: frozenset[str] | None = None) -> str:
    """What caffecompat does with the fork field `key` ("Message.field"): "honoured", or "refused: why"."""
    registered = _registered() if registered is None else registered
    message, name = key.split(".")
    known = FORK_MESSAGE_FIELDS.get(key)
    if known is not None:
        return f"refused: {known.refused}" if known.refused else "honoured"
    fork = FORK_FIELDS.get(key)
    if fork is not None:
        if key == "PoolingParameter.ceil_mode":
            return "honoured"  # translate_ceil_mode
        if fork.inert:
            return "honoured"  # nothing to do: it changes only speed
        if fork.readers:
            missing = [t for t in fork.readers if t not in registered]
            return f"refused: layer type {', '.join(missing)} is not implemented" if missing else "honoured"
        return "refused: unless it restates its default"
    readers = _readers_by_message().get(message)
    if readers is None:
        raise KeyError(f"{key} is not a field the forks add")
    missing = sorted(t for t in readers if t not in registered)
    if len(missing) == len(readers):
        return f"refused: layer type {', '.join(missing)} is not implemented"
    return "honoured"
