"""Snapshots: Net::ToProto (the resolved TRAIN net's layers with their blobs, as Caffe writes them) and
Solver::Snapshot's pair of files, written all-or-nothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from caffecompat import glog, outfiles
from caffecompat.errors import CaffeCompatError
from caffecompat.formats.blob import array_to_blob
from caffecompat.layers import registry
from caffecompat.net.spec import NetSpec
from caffecompat.proto import caffe_pb2
from caffecompat.solver.solverstate import solverstate_proto


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


def write_snapshot(model_path: str, state_path: str, spec: NetSpec, values: Mapping[str, np.ndarray],
                   diffs: Mapping[str, np.ndarray] | None, iteration: int, history: Sequence[np.ndarray],
                   current_step: int, hdf5: bool = False) -> None:
    """Solver::Snapshot: the .caffemodel, then the .solverstate naming it, both or neither.

    Each goes to a temporary file first; only when both are complete are they
    renamed, so a failed write (or a kill) never leaves a snapshot half-written.
    With `hdf5` (snapshot_format: HDF5) both are Caffe's HDF5 files.
    """
    if hdf5:
        from caffecompat.formats.hdf5_snapshot import net_to_hdf5, solverstate_to_hdf5

        glog.info("solver.cpp:474", f"Snapshotting to HDF5 file {model_path}")
        model = net_to_hdf5(spec, values, diffs)
    else:
        glog.info("solver.cpp:464", f"Snapshotting to binary proto file {model_path}")
        model = net_to_proto(spec, values, diffs).SerializeToString()
    model_tmp = outfiles.write_temp(model_path, model, "snapshot")
    del model
    state_tmp = None
    try:
        if hdf5:
            glog.info("sgd_solver.cpp:300", f"Snapshotting solver state to HDF5 file {state_path}")
            state = solverstate_to_hdf5(iteration, model_path, history, current_step)
        else:
            glog.info("sgd_solver.cpp:284", f"Snapshotting solver state to binary proto file {state_path}")
            state = solverstate_proto(iteration, model_path, history, current_step).SerializeToString()
        state_tmp = outfiles.write_temp(state_path, state, "snapshot")
        del state
        outfiles.commit(model_tmp, model_path, "snapshot")
    except BaseException:
        outfiles.discard(model_tmp)
        if state_tmp is not None:
            outfiles.discard(state_tmp)
        raise
    outfiles.commit(state_tmp, state_path, "snapshot")


def snapshot_failed(error: CaffeCompatError, iteration: int, last: str | None) -> CaffeCompatError:
    """The error that stops training when the snapshot of `iteration` could not be written."""
    if last:
        where = f"the last complete snapshot is {last}: resume with -snapshot {last}"
    else:
        where = "this run wrote no snapshot before"
    return CaffeCompatError(f"{error}; training stopped at iteration {iteration} without this snapshot; {where}")
