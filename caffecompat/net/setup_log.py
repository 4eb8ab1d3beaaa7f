"""The log Caffe's Net::Init writes while it builds a net (net.cpp), line for line.

    The NetState phase (0) differed from the phase (1) specified by a rule in layer data
    Initializing net from parameters: <the filtered NetParameter>
    Creating Layer conv1 / conv1 <- data / conv1 -> conv1 / Setting up conv1
    Top shape: 16 16 28 28 (200704) / Memory required for data: 999488
    ...
    conv1 needs backward computation. / data does not need backward computation.
    This network produces output loss / Network initialization done.

`log_net_init` writes what Net::Init logs before its layers are set up (the
include/exclude rules that drop layers, then the net); `log_net_setup` writes
the rest from the resolved NetSpec. Each line names the Caffe source line that
writes it, so logs from caffecompat and from Caffe compare line by line.
Layer-specific lines (a data layer's "Opened lmdb") come from the layers.
"""

from __future__ import annotations

import math

from google.protobuf import descriptor, text_encoding
from google.protobuf.message import Message

from caffecompat import glog
from caffecompat.layers.registry import LayerNode
from caffecompat.net.backward import plan
from caffecompat.net.memory import cumulative_data_bytes
from caffecompat.net.spec import NetSpec
from caffecompat.net.state import filter_layers
from caffecompat.proto import caffe_pb2
from caffecompat.solver.fmt import caffe_float

_F = descriptor.FieldDescriptor


def _ftoa(value: float, digits: int) -> str:
    # protobuf's SimpleFtoa/SimpleDtoa: %.{DIG}g, or %.{DIG+3}g (FLT) / %.{DIG+2}g (DBL) when that does not
    # read back as the same value.
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    short = f"{value:.{digits}g}"
    if digits == 6:
        import numpy as np

        if np.float32(short) == np.float32(value):
            return short
        return f"{value:.9g}"
    return short if float(short) == value else f"{value:.17g}"


def _scalar(field: descriptor.FieldDescriptor, value: object) -> str:
    if field.type == _F.TYPE_STRING:
        return '"' + text_encoding.CEscape(value, as_utf8=True) + '"'
    if field.type == _F.TYPE_BYTES:
        return '"' + text_encoding.CEscape(value, as_utf8=False) + '"'
    if field.type == _F.TYPE_ENUM:
        enum = field.enum_type.values_by_number.get(value)
        return enum.name if enum is not None else str(value)
    if field.type == _F.TYPE_BOOL:
        return "true" if value else "false"
    if field.type == _F.TYPE_FLOAT:
        return _ftoa(float(value), 6)
    if field.type == _F.TYPE_DOUBLE:
        return _ftoa(float(value), 15)
    return str(value)


def debug_string(msg: Message, indent: int = 0) -> str:
    """What C++ protobuf's Message::DebugString gives: set fields in number order, floats as SimpleFtoa."""
    pad = " " * indent
    out: list[str] = []
    for field, value in msg.ListFields():
        values = value if field.is_repeated else [value]
        for v in values:
            if field.type in (_F.TYPE_MESSAGE, _F.TYPE_GROUP):
                out.append(f"{pad}{field.name} {{\n{debug_string(v, indent + 2)}{pad}}}\n")
            else:
                out.append(f"{pad}{field.name}: {_scalar(field, v)}\n")
    return "".join(out)


def _rule_messages(state: caffe_pb2.NetState, rule: caffe_pb2.NetStateRule, layer: str) -> str | None:
    """StateMeetsRule's log line when `rule` is not met (None when it is), with its net.cpp line."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return (f"296]The NetState phase ({state.phase}) differed from the phase ({rule.phase}) specified by a rule "
                f"in layer {layer}")
    if rule.HasField("min_level") and state.level < rule.min_level:
        return (f"306]The NetState level ({state.level}) is above the min_level ({rule.min_level}) specified by a "
                f"rule in layer {layer}")
    if rule.HasField("max_level") and state.level > rule.max_level:
        return (f"316]The NetState level ({state.level}) is above the max_level ({rule.max_level}) specified by a "
                f"rule in layer {layer}")
    for stage in rule.stage:
        if stage not in state.stage:
            return f"332]The NetState did not contain stage '{stage}' specified by a rule in layer {layer}"
    for stage in rule.not_stage:
        if stage in state.stage:
            return f"347]The NetState contained a not_stage '{stage}' specified by a rule in layer {layer}"
    return None


def log_net_init(net: caffe_pb2.NetParameter, state: caffe_pb2.NetState, source: str = "net") -> None:
    """Net::Init before the layers: FilterNet's rule lines, then the filtered NetParameter."""
    kept = filter_layers(net, state, source)  # raises on a layer with both include and exclude rules
    for layer in net.layer:
        # FilterNet tries exclude rules while the layer is in, include rules while it is out; each unmet
        # rule it tries logs why.
        included = not layer.include
        for rule in layer.exclude:
            if not included:
                break
            message = _rule_messages(state, rule, layer.name)
            if message is None:
                included = False
            else:
                _info(message)
        for rule in layer.include:
            if included:
                break
            message = _rule_messages(state, rule, layer.name)
            if message is None:
                included = True
            else:
                _info(message)
    filtered = caffe_pb2.NetParameter()
    filtered.CopyFrom(net)
    filtered.state.CopyFrom(state)
    del filtered.layer[:]
    filtered.layer.extend(kept)
    glog.info("net.cpp:53", "Initializing net from parameters: \n" + debug_string(filtered))


def _info(located: str) -> None:
    line, message = located.split("]", 1)
    glog.info(f"net.cpp:{line}", message)


def _shape_string(shape: tuple[int, ...]) -> str:
    # Blob::shape_string: each dimension followed by a space, then (count).
    return "".join(f"{d} " for d in shape) + f"({math.prod(shape)})"


def _inner_layers(node: LayerNode) -> int:
    """How many layers this layer's LayerSetUp creates through the layer registry (each logs its creation)."""
    t = node.param.type
    if t in ("SoftmaxWithLoss", "InfogainLoss"):
        return 1  # their internal Softmax
    if t == "Scale" and node.param.scale_param.bias_term:
        return 1  # its internal Bias
    return 0


def log_net_setup(spec: NetSpec) -> None:
    """Net::Init from the first layer on: each layer's set-up, the backward decisions, the outputs."""
    memory = cumulative_data_bytes(spec)
    available: set[str] = set()
    for node, used in zip(spec.layers, memory):
        name = node.name
        glog.info("layer_factory.hpp:77", f"Creating layer {name}")
        glog.info("net.cpp:86", f"Creating Layer {name}")
        for blob in node.bottom_blobs:
            glog.info("net.cpp:408", f"{name} <- {blob}")
            available.discard(blob)
        for j, blob in enumerate(node.top_blobs):
            if j < len(node.bottom_blobs) and node.bottom_blobs[j] == blob:
                glog.info("net.cpp:369", f"{name} -> {blob} (in-place)")
            else:
                glog.info("net.cpp:382", f"{name} -> {blob}")
            available.add(blob)
        for _ in range(_inner_layers(node)):
            glog.info("layer_factory.hpp:77", f"Creating layer {name}")
        glog.info("net.cpp:124", f"Setting up {name}")
        for shape, weight in zip(node.top_shapes, node.loss_weights):
            glog.info("net.cpp:131", f"Top shape: {_shape_string(tuple(shape))}")
            if weight:
                glog.info("net.cpp:134", f"    with loss weight {caffe_float(weight)}")
        glog.info("net.cpp:139", f"Memory required for data: {used}")
        for i, tensor in enumerate(node.param_names):
            if not spec.owns(node, tensor):
                owner = spec.params[tensor]
                glog.info("net.cpp:467", f"Sharing parameters '{node.param.param[i].name}' owned by layer "
                                         f"'{owner.layer}', param index {owner.index}")
    # The backward decisions are logged before force_backward applies.
    need = plan(spec, force_backward=False).layer_need
    for i in range(len(spec.layers) - 1, -1, -1):
        name = spec.layers[i].name
        if need[i]:
            glog.info("net.cpp:200", f"{name} needs backward computation.")
        else:
            glog.info("net.cpp:202", f"{name} does not need backward computation.")
    for blob in sorted(available):
        glog.info("net.cpp:244", f"This network produces output {blob}")
    glog.info("net.cpp:257", "Network initialization done.")
