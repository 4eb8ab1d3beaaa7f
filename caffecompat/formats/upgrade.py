"""Bring old net and solver definitions up to the current schema, as Caffe does on load.

Caffe has changed its net format three times and keeps reading every older
one, converting it in memory (src/caffe/util/upgrade_proto.cpp):

* V0 (2013): `layers { layer { type: "conv" kernelsize: 11 } }`, with separate
  "padding" layers, becomes V1;
* V1 (2014): `layers { type: CONVOLUTION blobs_lr: 1 }` becomes V2
  `layer { type: "Convolution" param { lr_mult: 1 } }`;
* transformation fields inside data-layer parameters move to `transform_param`;
* `input` / `input_dim` / `input_shape` become an Input layer;
* BatchNorm layers that declare three `param` specs get lr/decay multipliers 0;
* a solver's `solver_type` enum becomes the `type` string.

`upgrade_net` and `upgrade_solver` apply those steps in Caffe's order. Steps
Caffe aborts on raise CaffeCompatError; settings Caffe drops with an error
message but carries on past (a V0 field on a layer type that has no such
setting) are logged and reported through the optional `problems` list.
"""

from __future__ import annotations

from google.protobuf import message as pb_message

from caffecompat import glog
from caffecompat.errors import CaffeCompatError
from caffecompat.proto import caffe_pb2

V1 = caffe_pb2.V1LayerParameter

# --- V0 -> V1 ---------------------------------------------------------------

# UpgradeV0LayerType: V0 type strings and the V1 enum each maps to.
_V0_TYPES: dict[str, int] = {
    "accuracy": V1.ACCURACY,
    "bnll": V1.BNLL,
    "concat": V1.CONCAT,
    "conv": V1.CONVOLUTION,
    "data": V1.DATA,
    "dropout": V1.DROPOUT,
    "euclidean_loss": V1.EUCLIDEAN_LOSS,
    "flatten": V1.FLATTEN,
    "hdf5_data": V1.HDF5_DATA,
    "hdf5_output": V1.HDF5_OUTPUT,
    "im2col": V1.IM2COL,
    "images": V1.IMAGE_DATA,
    "infogain_loss": V1.INFOGAIN_LOSS,
    "innerproduct": V1.INNER_PRODUCT,
    "lrn": V1.LRN,
    "multinomial_logistic_loss": V1.MULTINOMIAL_LOGISTIC_LOSS,
    "pool": V1.POOLING,
    "relu": V1.RELU,
    "sigmoid": V1.SIGMOID,
    "softmax": V1.SOFTMAX,
    "softmax_loss": V1.SOFTMAX_LOSS,
    "split": V1.SPLIT,
    "tanh": V1.TANH,
    "window_data": V1.WINDOW_DATA,
}

_DATA_SOURCES = {
    "data": "data_param",
    "hdf5_data": "hdf5_data_param",
    "images": "image_data_param",
    "window_data": "window_data_param",
}

# UpgradeV0LayerParameter: each V0 field -> {V0 layer type: (V1 sub-message, its field)};
# type "*" means any layer type.
_V0_FIELDS: dict[str, dict[str, tuple[str, str]]] = {
    "num_output": {"conv": ("convolution_param", "num_output"),
                   "innerproduct": ("inner_product_param", "num_output")},
    "biasterm": {"conv": ("convolution_param", "bias_term"),
                 "innerproduct": ("inner_product_param", "bias_term")},
    "weight_filler": {"conv": ("convolution_param", "weight_filler"),
                      "innerproduct": ("inner_product_param", "weight_filler")},
    "bias_filler": {"conv": ("convolution_param", "bias_filler"),
                    "innerproduct": ("inner_product_param", "bias_filler")},
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size"),
                   "pool": ("pooling_param", "kernel_size")},
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")},
    "pool": {"pool": ("pooling_param", "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {**{t: (p, "source") for t, p in _DATA_SOURCES.items()},
               "infogain_loss": ("infogain_loss_param", "source")},
    "scale": {"*": ("transform_param", "scale")},
    "meanfile": {"*": ("transform_param", "mean_file")},
    "batchsize": {t: (p, "batch_size") for t, p in _DATA_SOURCES.items()},
    "cropsize": {"*": ("transform_param", "crop_size")},
    "mirror": {"*": ("transform_param", "mirror")},
    "rand_skip": {"data": ("data_param", "rand_skip"), "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", None)},
}


def _net_needs_v0_upgrade(net: caffe_pb2.NetParameter) -> bool:
    # NetNeedsV0ToV1Upgrade: any `layers` entry carrying a V0 `layer` message.
    return any(lay.HasField("layer") for lay in net.layers)


def _upgrade_v0_padding(net: caffe_pb2.NetParameter, source: str) -> caffe_pb2.NetParameter:
    """UpgradeV0PaddingLayers: fold each "padding" layer into the conv/pool layer it feeds."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layers[:]
    last_top: dict[str, int] = {name: -1 for name in net.input}
    for i, conn in enumerate(net.layers):
        v0 = conn.layer
        if v0.type != "padding":
            out.layers.add().CopyFrom(conn)
        for j, bottom in enumerate(conn.bottom):
            if bottom not in last_top:
                # Caffe aborts on a bottom no earlier layer or input produces.
                raise CaffeCompatError(
                    f"{source}: V0 layer {v0.name!r} reads blob {bottom!r}, which no earlier "
                    "layer or input produces; cannot upgrade"
                )
            src_idx = last_top[bottom]
            if src_idx < 0 or net.layers[src_idx].layer.type != "padding":
                continue
            pad_layer = net.layers[src_idx]
            # Caffe only folds a single-input, single-output padding layer into a
            # single-input conv or pool layer; anything else aborts.
            if v0.type not in ("conv", "pool"):
                raise CaffeCompatError(
                    f"{source}: V0 padding layer {pad_layer.layer.name!r} feeds layer "
                    f"{v0.name!r} of type {v0.type!r}; only conv and pool layers can absorb "
                    "padding"
                )
            if len(conn.bottom) != 1 or len(pad_layer.bottom) != 1 or len(pad_layer.top) != 1:
                raise CaffeCompatError(
                    f"{source}: V0 padding layer {pad_layer.layer.name!r} and the layer "
                    f"{v0.name!r} it feeds must each have exactly one input and output"
                )
            target = out.layers[len(out.layers) - 1]
            target.layer.pad = pad_layer.layer.pad
            target.bottom[j] = pad_layer.bottom[0]
        for top in conn.top:
            last_top[top] = i
    return out


def _upgrade_v0_layer(
    conn: caffe_pb2.V1LayerParameter, out: caffe_pb2.V1LayerParameter, source: str,
    problems: list[str],
) -> None:
    """UpgradeV0LayerParameter: move one V0 layer's settings into V1 sub-messages."""
    out.bottom.extend(conn.bottom)
    out.top.extend(conn.top)
    if not conn.HasField("layer"):
        return
    v0 = conn.layer
    if v0.HasField("name"):
        out.name = v0.name
    if v0.HasField("type"):
        if v0.type not in _V0_TYPES:
            # UpgradeV0LayerType aborts on a type it does not know.
            raise CaffeCompatError(
                f"{source}: V0 layer {v0.name!r} has unknown type {v0.type!r}; known V0 types: "
                f"{', '.join(sorted(_V0_TYPES))}"
            )
        out.type = _V0_TYPES[v0.type]
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for field, targets in _V0_FIELDS.items():
        if not v0.HasField(field):
            continue
        where = targets.get(v0.type) or targets.get("*")
        if where is None:
            # Caffe logs "Unknown parameter X for layer type T", drops it, and goes on.
            problems.append(
                f"{source}: V0 layer {v0.name!r}: parameter {field} does not apply to layer "
                f"type {v0.type!r}; dropped"
            )
            continue
        sub_name, sub_field = where
        value = getattr(v0, field)
        sub = getattr(out, sub_name)
        if sub_field is None:
            sub.CopyFrom(value)
        elif field == "pool":
            # The V0 and current pooling enums share value names (MAX, AVE, STOCHASTIC).
            name = caffe_pb2.V0LayerParameter.PoolMethod.Name(value)
            sub.pool = caffe_pb2.PoolingParameter.PoolMethod.Value(name)
        elif isinstance(value, pb_message.Message):
            getattr(sub, sub_field).CopyFrom(value)
        elif hasattr(getattr(sub, sub_field), "append"):  # repeated: conv pad, kernel_size, stride
            getattr(sub, sub_field).append(value)
        else:
            setattr(sub, sub_field, value)


def _upgrade_v0_net(net: caffe_pb2.NetParameter, source: str, problems: list[str]) -> None:
    """UpgradeV0Net: keeps only name, layers, input, input_dim and force_backward."""
    padded = _upgrade_v0_padding(net, source)
    net.Clear()
    if padded.HasField("name"):
        net.name = padded.name
    for conn in padded.layers:
        _upgrade_v0_layer(conn, net.layers.add(), source, problems)
    net.input.extend(padded.input)
    net.input_dim.extend(padded.input_dim)
    if padded.HasField("force_backward"):
        net.force_backward = padded.force_backward


# --- data transformation fields ---------------------------------------------

# NetNeedsDataUpgrade / UpgradeNetDataTransformation: these V1 data layers once held
# their transformation settings in their own parameter message.
_TRANSFORM_HOSTS = {
    V1.DATA: "data_param",
    V1.IMAGE_DATA: "image_data_param",
    V1.WINDOW_DATA: "window_data_param",
}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def _net_needs_data_upgrade(net: caffe_pb2.NetParameter) -> bool:
    for lay in net.layers:
        host = _TRANSFORM_HOSTS.get(lay.type)
        if host and any(getattr(lay, host).HasField(f) for f in _TRANSFORM_FIELDS):
            return True
    return False


def _upgrade_data_transformation(net: caffe_pb2.NetParameter) -> None:
    for lay in net.layers:
        host = _TRANSFORM_HOSTS.get(lay.type)
        if not host:
            continue
        param = getattr(lay, host)
        for f in _TRANSFORM_FIELDS:
            if param.HasField(f):
                setattr(lay.transform_param, f, getattr(param, f))
                param.ClearField(f)


# --- V1 -> V2 ---------------------------------------------------------------

# UpgradeV1LayerType: V1 enum name -> V2 type string (NONE becomes "").
_V1_TYPES: dict[str, str] = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

# UpgradeV1LayerParameter copies every V1 `*_param` sub-message to the V2 field of the same name.
_V1_SUBMESSAGES = tuple(
    f.name for f in V1.DESCRIPTOR.fields if f.name.endswith("_param")
)


def _upgrade_v1_layer(
    v1: caffe_pb2.V1LayerParameter, out: caffe_pb2.LayerParameter, index: int, source: str,
    problems: list[str],
) -> None:
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if v1.HasField("name"):
        out.name = v1.name
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        out.type = _V1_TYPES[V1.LayerType.Name(v1.type)]
    out.blobs.extend(v1.blobs)

    # Per-blob settings (param names, share modes, blobs_lr, weight_decay) merge into
    # one ParamSpec per blob index, adding as many specs as the longest list needs.
    def spec(i: int) -> caffe_pb2.ParamSpec:
        while len(out.param) <= i:
            out.param.add()
        return out.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        spec(i).share_mode = caffe_pb2.ParamSpec.DimCheckMode.Value(V1.DimCheckMode.Name(mode))
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        spec(i).decay_mult = decay
    out.loss_weight.extend(v1.loss_weight)
    for name in _V1_SUBMESSAGES:
        if v1.HasField(name):
            getattr(out, name).CopyFrom(getattr(v1, name))
    if v1.HasField("layer"):
        # Caffe ignores a V0 `layer` left inside a V1 layer, with an error message.
        problems.append(f"{source}: layer #{index} ({v1.name!r}) still holds a V0 layer; ignored")


def _upgrade_v1_net(
    net: caffe_pb2.NetParameter, source: str, problems: list[str],
    first: caffe_pb2.LayerParameter | None = None,
) -> None:
    """UpgradeV1Net; `first`, when given, becomes layer 0 ahead of the upgraded layers."""
    if len(net.layer):
        # UpgradeV1Net refuses a net with both `layer` and `layers` entries.
        raise CaffeCompatError(
            f"{source}: the net has both 'layer' and 'layers' entries; the current format "
            "uses only `layer { type: \"Name\" ... }`, so rewrite the `layers { type: NAME }` "
            "entries in that form (or all of them in the old one) and try again"
        )
    if first is not None:
        net.layer.append(first)
    # Built in place (not copied in afterwards): a caffemodel's blobs are copied only once.
    for i, v1 in enumerate(net.layers):
        _upgrade_v1_layer(v1, net.layer.add(), i, source, problems)
    del net.layers[:]


# --- input fields -----------------------------------------------------------

def _input_layer(net: caffe_pb2.NetParameter, source: str) -> caffe_pb2.LayerParameter | None:
    """UpgradeNetInput: `input` + shapes become a layer "input" of type Input.

    None for a bare `input` without shapes (old caffemodels): that is simply dropped.
    """
    inputs = list(net.input)
    if not len(net.input_shape) and not len(net.input_dim):
        return None
    layer = caffe_pb2.LayerParameter(name="input", type="Input")
    layer.top.extend(inputs)
    if len(net.input_shape):
        # input_shape wins over input_dim when both are given, as in Caffe.
        if len(net.input_shape) < len(inputs):
            raise CaffeCompatError(
                f"{source}: {len(inputs)} inputs but only {len(net.input_shape)} "
                "input_shape entries; give one input_shape per input"
            )
        layer.input_param.shape.extend(net.input_shape[: len(inputs)])
    else:
        dims = list(net.input_dim)
        if len(dims) < 4 * len(inputs):
            raise CaffeCompatError(
                f"{source}: {len(inputs)} inputs need {4 * len(inputs)} input_dim values "
                f"(4 per input), found {len(dims)}"
            )
        for i in range(len(inputs)):
            layer.input_param.shape.add().dim.extend(dims[4 * i: 4 * i + 4])
    return layer


def _clear_input(net: caffe_pb2.NetParameter) -> None:
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")


# --- BatchNorm --------------------------------------------------------------

def _needs_batchnorm_upgrade(layer: caffe_pb2.LayerParameter) -> bool:
    # NetNeedsBatchNormUpgrade: old BatchNorm definitions declared three param specs.
    return layer.type == "BatchNorm" and len(layer.param) == 3


def _upgrade_batchnorm(net: caffe_pb2.NetParameter) -> None:
    for layer in net.layer:
        if _needs_batchnorm_upgrade(layer):
            # BatchNorm's blobs are statistics, never learned: lr and decay multipliers 0.
            for p in layer.param:
                p.lr_mult = 0.0
                p.decay_mult = 0.0


# --- public -----------------------------------------------------------------

def net_needs_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """Whether `net` uses any deprecated form that `upgrade_net` rewrites (NetNeedsUpgrade)."""
    return (
        len(net.layers) > 0
        or _net_needs_data_upgrade(net)
        or len(net.input) > 0
        or any(_needs_batchnorm_upgrade(lay) for lay in net.layer)
    )


def upgrade_net(
    net: caffe_pb2.NetParameter, source: str, problems: list[str] | None = None
) -> bool:
    """Upgrade `net` in place to the current format, as Caffe's UpgradeNetAsNeeded.

    Returns whether anything changed; logs one glog line naming `source` when
    it did. A net Caffe refuses to upgrade raises CaffeCompatError. Settings
    Caffe drops while carrying on are logged as errors and, when `problems`
    is given, appended to it (Caffe's upgrade tools then exit with status 1).
    """
    found: list[str] = []
    steps: list[tuple[str, int]] = []  # (what was deprecated, Caffe's log line for it)
    # Caffe's order: V0 -> V1, data transformation, V1 -> V2, input fields, BatchNorm.
    if _net_needs_v0_upgrade(net):
        _upgrade_v0_net(net, source, found)
        steps.append(("V0LayerParameter", 36))
    if _net_needs_data_upgrade(net):
        _upgrade_data_transformation(net)
        steps.append(("data transformation parameters", 49))
    has_input = len(net.input) > 0
    if len(net.layers):
        # Caffe turns input fields into a leading Input layer after the V1 -> V2 step;
        # placing that layer before the V1 layers are added gives the same net without
        # copying every layer (and its blobs) a second time.
        first = _input_layer(net, source) if has_input else None
        _upgrade_v1_net(net, source, found, first)
        steps.append(("V1LayerParameter", 63))
    elif has_input:
        layer = _input_layer(net, source)
        if layer is not None:
            # The Input layer goes first so that every layer after it can read its tops.
            rest = list(net.layer)
            del net.layer[:]
            net.layer.append(layer)
            net.layer.extend(rest)
    if has_input:
        _clear_input(net)
        steps.append(("input fields", 72))
    if any(_needs_batchnorm_upgrade(lay) for lay in net.layer):
        _upgrade_batchnorm(net)
        steps.append(("BatchNorm params", 82))
    for p in found:
        glog.error("upgrade_proto.cpp:237", p)
    if problems is not None:
        problems.extend(found)
    if steps:
        what = ", ".join(name for name, _ in steps)
        glog.info(
            f"upgrade_proto.cpp:{steps[0][1]}",
            f"Successfully upgraded file specified using deprecated {what}: {source}",
        )
    return bool(steps)


# UpgradeSolverType: SolverParameter.SolverType enum name -> `type` string.
_SOLVER_TYPES = {
    "SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
    "ADADELTA": "AdaDelta", "ADAM": "Adam",
}


def solver_needs_upgrade(solver: caffe_pb2.SolverParameter) -> bool:
    """Whether `solver` sets the deprecated `solver_type` enum (SolverNeedsTypeUpgrade)."""
    return solver.HasField("solver_type")


def upgrade_solver(solver: caffe_pb2.SolverParameter, source: str) -> bool:
    """Upgrade `solver` in place (`solver_type` enum -> `type` string), as UpgradeSolverAsNeeded.

    Returns whether anything changed and logs one glog line naming `source` when it did.
    """
    if not solver.HasField("solver_type"):
        return False
    if solver.HasField("type"):
        # Caffe refuses a solver that sets both the old enum and the new string.
        raise CaffeCompatError(
            f"{source}: sets both the old `solver_type` (enum) and the new `type` (string); "
            "keep only `type`"
        )
    name = caffe_pb2.SolverParameter.SolverType.Name(solver.solver_type)
    solver.type = _SOLVER_TYPES[name]
    solver.ClearField("solver_type")
    glog.info(
        "upgrade_proto.cpp:1091",
        "Successfully upgraded file specified using deprecated 'solver_type' field (enum) "
        f"to 'type' field (string): {source}",
    )
    return True
