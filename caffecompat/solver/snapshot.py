"""Net::ToProto for snapshots: the resolved TRAIN net's layers with their blobs, as Caffe writes them."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from caffecompat import glog
from caffecompat.formats import protofile
from caffecompat.formats.blob import array_to_blob
from caffecompat.layers import registry
from caffecompat.net.spec import NetSpec
from caffecompat.proto import caffe_pb2


def net_to_proto(spec: NetSpec, values: Mapping[str, np.ndarray],
                 diffs: Mapping[str, np.ndarray] | None = None) -> caffe_pb2.NetParameter:
    """The NetParameter Caffe's Net::ToProto writes: every layer (splits too) with phase and blobs."""
    net = caffe_pb2.NetParameter(name=spec.name)
    for node in spec.layers:
        layer = net.layer.add()
        layer.CopyFrom(node.param)
        del layer.blobs[:]
        # Net::Init stamps each layer with the net's phase.
        if not layer.HasField("phase"):
            layer.phase = spec.phase
        impl = registry.get(node)
        # LossLayer::LayerSetUp records the default loss_weight 1 in the layer it writes back.
        if impl.loss and not layer.loss_weight:
            layer.loss_weight.append(1.0)
        # BatchNormLayer::LayerSetUp adds `param { lr_mult: 0 }` for each statistic it masks.
        if impl.statistics_params:
            while len(layer.param) < len(node.param_names):
                layer.param.add(lr_mult=0.0)
        for name in node.param_names:
            array_to_blob(values[name], layer.blobs.add(), None if diffs is None else diffs.get(name))
    return net


def write_snapshot_model(path: str | os.PathLike, spec: NetSpec, values: Mapping[str, np.ndarray],
                         diffs: Mapping[str, np.ndarray] | None = None) -> None:
    """Write the .caffemodel of a snapshot atomically, with Caffe's log line."""
    glog.info("solver.cpp:464", f"Snapshotting to binary proto file {path}")
    protofile.write_binary(path, net_to_proto(spec, values, diffs))
