"""Net surgery for fine-tuning: a deploy net turned into the train_val net and deploy net of a new task.

What a Caffe user does by hand to fine-tune a Model Zoo net (the Flickr Style
recipe, models/finetune_flickr_style): the deploy's Input becomes a TRAIN and a
TEST Data layer, the classifier layer (the head) is renamed so that `-weights`
does not copy it (it starts from its fillers), resized to the new number of
classes and made to learn 10x faster, the final Softmax becomes a
SoftmaxWithLoss and an Accuracy is added for the TEST phase. Freezing the
layers up to a cut gives every parameter blob of those layers lr_mult 0 (with
explicit `param` specs where the deploy has none, as Scale layers often lack
them), so Net::Init finds no layer below the cut that needs backward.
"""

from __future__ import annotations

from dataclasses import dataclass

from caffecompat.errors import CaffeCompatError
from caffecompat.net import spec as netspec
from caffecompat.proto import caffe_pb2

# The suffix of the renamed head: fc8 -> fc8_ft (a new name, so -weights leaves it to its fillers).
HEAD_SUFFIX = "_ft"


@dataclass
class Data:
    """What the Data layers read: the two databases, batch sizes and the transformation."""

    train_source: str
    val_source: str
    train_batch: int
    test_batch: int
    transform: caffe_pb2.TransformationParameter  # the TEST one; TRAIN adds mirror
    mirror: bool


def input_layer(net: caffe_pb2.NetParameter, path: str) -> int:
    """The index of the deploy's one Input layer (input_dim / input_shape are upgraded into one on read)."""
    found = [i for i, lp in enumerate(net.layer) if lp.type == "Input"]
    if not found:
        raise CaffeCompatError(f"{path}: the net has no Input layer (nor input / input_dim); give a deploy "
                               "net whose images come from an Input layer")
    if len(found) > 1 or len(net.layer[found[0]].top) != 1:
        names = ", ".join(net.layer[i].name for i in found)
        raise CaffeCompatError(f"{path}: not supported: fine-tuning a net with several inputs ({names}); "
                               "write its train_val.prototxt by hand")
    return found[0]


def input_chw(net: caffe_pb2.NetParameter, path: str) -> tuple[int, int, int]:
    """(channels, height, width) of the deploy's input."""
    lp = net.layer[input_layer(net, path)]
    shapes = list(lp.input_param.shape)
    dims = list(shapes[0].dim) if shapes else []
    if len(dims) != 4:
        raise CaffeCompatError(f"{path}: layer {lp.name} (Input): its shape {dims} is not N x C x H x W; "
                               "fine-tuning needs an image input")
    return int(dims[1]), int(dims[2]), int(dims[3])


def _is_classifier(lp: caffe_pb2.LayerParameter) -> bool:
    if lp.type == "InnerProduct":
        return True
    if lp.type == "Convolution":
        cp = lp.convolution_param
        kernel = list(cp.kernel_size) or [cp.kernel_h, cp.kernel_w]
        return all(k == 1 for k in kernel)
    return False


def final_softmax(net: caffe_pb2.NetParameter) -> int | None:
    """The index of the net's last Softmax layer, or None."""
    found = [i for i, lp in enumerate(net.layer) if lp.type == "Softmax"]
    return found[-1] if found else None


def find_head(net: caffe_pb2.NetParameter, path: str, name: str = "") -> int:
    """The index of the head: layer `name`, or the last InnerProduct / 1x1 Convolution before the final Softmax."""
    if name:
        found = [i for i, lp in enumerate(net.layer) if lp.name == name]
        if not found:
            raise CaffeCompatError(f"-head {name}: {path} has no layer of that name; give the classifier layer "
                                   "to replace (e.g. fc8)")
        i = found[0]
        if not _is_classifier(net.layer[i]):
            raise CaffeCompatError(f"-head {name}: layer {name} of {path} is a {net.layer[i].type}; the head must "
                                   "be an InnerProduct or a 1x1 Convolution")
        return i
    end = final_softmax(net)
    if end is None:
        raise CaffeCompatError(f"{path}: no identifiable head: the net has no final Softmax; name the classifier "
                               "layer to replace with -head LAYER")
    for i in range(end - 1, -1, -1):
        if _is_classifier(net.layer[i]):
            return i
    raise CaffeCompatError(f"{path}: no identifiable head: no InnerProduct or 1x1 Convolution before the final "
                           f"Softmax {net.layer[end].name}; name the classifier layer with -head LAYER")


def layer_index(net: caffe_pb2.NetParameter, name: str, flag: str, path: str) -> int:
    """The index of the first layer called `name`; the error names `flag`."""
    for i, lp in enumerate(net.layer):
        if lp.name == name:
            return i
    raise CaffeCompatError(f"{flag} {name}: {path} has no layer of that name; give one of its layer names "
                           "(e.g. the input of its last block)")


def param_counts(net: caffe_pb2.NetParameter, path: str) -> dict[str, int]:
    """How many parameter blobs each layer of the deploy has (by layer name), as the layer registry sets them up."""
    spec = netspec.build(net, caffe_pb2.TEST, source=path)
    counts: dict[str, int] = {}
    for info in spec.params.values():
        counts[info.layer] = max(counts.get(info.layer, 0), info.index + 1)
    return counts


def freeze(lp: caffe_pb2.LayerParameter, blobs: int, global_stats: bool = True) -> None:
    """lr_mult 0 and decay_mult 0 on each of the layer's `blobs` parameter blobs; BatchNorm uses its global stats.

    `global_stats` False (no pretrained statistics: zeros from the fillers) leaves a BatchNorm as it is.
    """
    # Net::Init: a layer whose every param has lr_mult 0 and whose bottoms need no backward is skipped by Backward.
    # It reads the net's own param specs (a missing one counts as lr_mult 1), not the ones BatchNormLayer::LayerSetUp
    # adds itself: a frozen BatchNorm keeps three explicit specs (UpgradeNetBatchNorm's "deprecated BatchNorm
    # params" line is then logged, and only zeroes them), or it and every layer above it would run backward.
    while len(lp.param) < blobs:
        lp.param.add()
    for p in lp.param:
        p.lr_mult = 0
        p.decay_mult = 0
    if lp.type == "BatchNorm" and global_stats:
        # BatchNormLayer: frozen statistics are the stored ones, not the batch's (use_global_stats).
        lp.batch_norm_param.use_global_stats = True


def _rename_blob(layers: list[caffe_pb2.LayerParameter], old: str, new: str) -> None:
    for lp in layers:
        for field in (lp.bottom, lp.top):
            for k, b in enumerate(field):
                if b == old:
                    field[k] = new


def new_head(lp: caffe_pb2.LayerParameter, classes: int) -> str:
    """Make `lp` the fresh head: renamed <name>_ft, `classes` outputs, gaussian/constant fillers, lr_mult 10/20.

    Returns the new name.
    """
    # Caffe's fine-tuning recipe (finetune_flickr_style): a new name so CopyTrainedLayersFrom skips it.
    lp.name = lp.name + HEAD_SUFFIX
    p = lp.inner_product_param if lp.type == "InnerProduct" else lp.convolution_param
    p.num_output = classes
    p.weight_filler.Clear()
    p.weight_filler.type = "gaussian"
    p.weight_filler.std = 0.01
    has_bias = p.bias_term if p.HasField("bias_term") else True
    p.bias_filler.Clear()
    if has_bias:
        p.bias_filler.type = "constant"
        p.bias_filler.value = 0
    else:
        p.ClearField("bias_filler")
    del lp.param[:]
    # The recipe's multipliers: the new layer learns 10x (weights) and 20x (bias, not decayed) the base rate.
    lp.param.add(lr_mult=10, decay_mult=1)
    if has_bias:
        lp.param.add(lr_mult=20, decay_mult=0)
    return lp.name


def _data_layer(name: str, top: str, phase: int, source: str, batch: int,
                transform: caffe_pb2.TransformationParameter) -> caffe_pb2.LayerParameter:
    lp = caffe_pb2.LayerParameter(name=name, type="Data", top=[top, "label"])
    lp.include.add(phase=phase)
    lp.transform_param.CopyFrom(transform)
    lp.data_param.source = source
    lp.data_param.batch_size = batch
    lp.data_param.backend = caffe_pb2.DataParameter.LMDB
    return lp


def finetune_nets(deploy: caffe_pb2.NetParameter, path: str, head: int, classes: int, data: Data,
                  freeze_upto: int | None = None,
                  global_stats: bool = True) -> tuple[caffe_pb2.NetParameter, caffe_pb2.NetParameter]:
    """(train_val, deploy) nets for fine-tuning `deploy` with head index `head` on `classes` classes.

    `freeze_upto`: the index of the last frozen layer (every layer up to it gets lr_mult 0); `global_stats`
    False (no stored statistics: training from the fillers) takes use_global_stats off every BatchNorm.
    """
    src = input_layer(deploy, path)
    softmax = final_softmax(deploy)
    if softmax is not None and softmax < head:
        softmax = None
    counts = param_counts(deploy, path) if freeze_upto is not None else {}
    old_head = deploy.layer[head]
    old_top = old_head.top[0] if len(old_head.top) else old_head.name
    taken = {lp.name for lp in deploy.layer}
    if old_head.name + HEAD_SUFFIX in taken:
        raise CaffeCompatError(f"{path}: already has a layer {old_head.name + HEAD_SUFFIX}, the name the new head "
                               f"would take; rename it or give another -head")

    new_deploy = caffe_pb2.NetParameter()
    new_deploy.CopyFrom(deploy)
    new_name = new_head(new_deploy.layer[head], classes)
    new_top = new_name if old_top == old_head.name else old_top
    if new_top != old_top:
        _rename_blob(list(new_deploy.layer)[head:], old_top, new_top)

    train = caffe_pb2.NetParameter()
    train.CopyFrom(new_deploy)
    del train.layer[:]
    if deploy.name:
        train.name = deploy.name
    loss_bottom = new_top
    for i, lp in enumerate(new_deploy.layer):
        if i == src:
            test_t = caffe_pb2.TransformationParameter()
            test_t.CopyFrom(data.transform)
            train_t = caffe_pb2.TransformationParameter()
            train_t.CopyFrom(data.transform)
            if data.mirror:
                train_t.mirror = True
            train.layer.append(_data_layer(lp.name, lp.top[0], caffe_pb2.TRAIN, data.train_source,
                                           data.train_batch, train_t))
            train.layer.append(_data_layer(lp.name, lp.top[0], caffe_pb2.TEST, data.val_source,
                                           data.test_batch, test_t))
            continue
        if softmax is not None and i == softmax:
            # The probabilities become the loss; what comes after them is the deploy's own business.
            loss_bottom = lp.bottom[0]
            break
        out = train.layer.add()
        out.CopyFrom(lp)
        if freeze_upto is not None and i <= freeze_upto:
            freeze(out, counts.get(lp.name, 0), global_stats)
        if out.type == "BatchNorm" and not global_stats:
            # BatchNormLayer's default: the batch's statistics in TRAIN, their moving averages in TEST.
            out.batch_norm_param.ClearField("use_global_stats")
    tail = new_deploy.layer[softmax] if softmax is not None else None
    acc = train.layer.add(name="accuracy", type="Accuracy", bottom=[loss_bottom, "label"], top=["accuracy"])
    acc.include.add(phase=caffe_pb2.TEST)
    if classes > 5:
        acc5 = train.layer.add(name="accuracy_top5", type="Accuracy", bottom=[loss_bottom, "label"],
                               top=["accuracy_top5"])
        acc5.include.add(phase=caffe_pb2.TEST)
        acc5.accuracy_param.top_k = 5
    loss = train.layer.add(name="loss", type="SoftmaxWithLoss", bottom=[loss_bottom, "label"], top=["loss"])
    if tail is not None and tail.HasField("softmax_param"):
        loss.softmax_param.CopyFrom(tail.softmax_param)
        if tail.softmax_param.HasField("axis"):
            for a in train.layer:
                if a.type == "Accuracy":
                    a.accuracy_param.axis = tail.softmax_param.axis
    if softmax is None:
        # A deploy without a Softmax gets one, so classify reads probabilities.
        new_deploy.layer.add(name="prob", type="Softmax", bottom=[new_top], top=["prob"])
    return train, new_deploy
