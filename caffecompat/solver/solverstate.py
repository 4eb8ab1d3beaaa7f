""".solverstate snapshots: Caffe's SolverState message in a binary protobuf file.

A snapshot holds the iteration reached, the .caffemodel written beside it
(`learned_net`), the learning-rate policy's `current_step` and the solver's
history blobs. Caffe stores history as one flat list: for each parameter the
first history blob, then (AdaDelta, Adam) for each parameter the second one.
`flatten_history` / `split_history` convert between that and per-parameter
lists as `updates.Param.history` holds them.

A name ending in `.h5` (snapshot_format: HDF5) is read as Caffe's HDF5
solver state (caffecompat.formats.hdf5_snapshot), with history in the same order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from google.protobuf import message as pb_message

from caffecompat import glog
from caffecompat.errors import CaffeCompatError
from caffecompat.formats import protofile
from caffecompat.formats.blob import array_to_blob, blob_to_array
from caffecompat.formats.hdf5_snapshot import is_hdf5, read_hdf5_solverstate
from caffecompat.proto import caffe_pb2


@dataclass
class SolverStateData:
    """The contents of a .solverstate file."""

    iteration: int
    learned_net: str
    history: list[np.ndarray] = field(default_factory=list)  # flat, in Caffe's order
    current_step: int = 0
    legacy_shapes: list[bool] = field(default_factory=list)  # blob stored with num/channels/height/width


def flatten_history(per_param: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Caffe's history_ order: every parameter's first blob, then every parameter's second blob."""
    if not per_param:
        return []
    depth = len(per_param[0])
    return [blobs[k] for k in range(depth) for blobs in per_param]


def split_history(flat: Sequence[np.ndarray], n_params: int) -> list[list[np.ndarray]]:
    """Inverse of `flatten_history`: per-parameter lists from Caffe's flat history."""
    if n_params == 0:
        return []
    if len(flat) % n_params:
        raise CaffeCompatError(f"{len(flat)} history blobs cannot be split over {n_params} parameters")
    depth = len(flat) // n_params
    return [[flat[k * n_params + i] for k in range(depth)] for i in range(n_params)]


def is_hdf5_name(path: str | os.PathLike) -> bool:
    """Solver::Restore: a solver state whose name ends in ".h5" is read as HDF5."""
    return os.fspath(path).endswith(".h5")


def _refuse_caffemodel(data: bytes, path: str | os.PathLike) -> None:
    # Any bytes parse as some SolverState; a file that is a net with layers is a caffemodel given by mistake.
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(data)
    except pb_message.DecodeError:  # not a NetParameter either: the caller's error stands
        return
    if len(net.layer) or len(net.layers):
        raise CaffeCompatError(
            f"{path}: is a caffemodel (trained weights), not a .solverstate: to start training from these "
            f"weights use -weights {path}; to resume a run, give the .solverstate written beside its caffemodel"
        )


def read_solverstate(path: str | os.PathLike) -> SolverStateData:
    """Read a .solverstate (binary protobuf) or .solverstate.h5 (HDF5) file."""
    # An HDF5 file under a binary name would fail to parse in Caffe; its content says what it is.
    if is_hdf5_name(path) or is_hdf5(path):
        iteration, learned, history, current_step = read_hdf5_solverstate(path)
        return SolverStateData(iteration, learned, history, current_step, [False] * len(history))
    data = protofile.read_bytes(path, "solverstate")
    try:
        state = protofile.parse_binary(data, caffe_pb2.SolverState, path, "solverstate")
    except CaffeCompatError:
        _refuse_caffemodel(data, path)
        raise
    if not state.history and not state.learned_net:
        _refuse_caffemodel(data, path)
    history = [blob_to_array(b, where=f"{path} history blob #{i}") for i, b in enumerate(state.history)]
    legacy = [not b.HasField("shape") and b.HasField("num") for b in state.history]
    learned = state.learned_net
    return SolverStateData(
        iteration=state.iter,
        # protobuf hands back a string that is not UTF-8 as bytes: a file name all the same.
        learned_net=os.fsdecode(learned) if isinstance(learned, bytes) else learned,
        history=history,
        current_step=state.current_step,
        legacy_shapes=legacy,
    )


def write_solverstate(
    path: str | os.PathLike,
    iteration: int,
    learned_net: str,
    history: Sequence[np.ndarray],
    current_step: int,
) -> None:
    """SGDSolver::SnapshotSolverStateToBinaryProto: write the state (atomically) and log it."""
    if is_hdf5_name(path):
        raise CaffeCompatError(f"{path}: write_solverstate writes the binary format; name the file "
                               "<prefix>_iter_N.solverstate (HDF5 states are written by snapshot_format: HDF5)")
    state = solverstate_proto(iteration, learned_net, history, current_step)
    glog.info("sgd_solver.cpp:284", f"Snapshotting solver state to binary proto file {path}")
    protofile.write_binary(path, state, "solver state")


def solverstate_proto(iteration: int, learned_net: str, history: Sequence[np.ndarray],
                      current_step: int) -> caffe_pb2.SolverState:
    """The SolverState message SGDSolver::SnapshotSolverStateToBinaryProto writes."""
    state = caffe_pb2.SolverState()
    state.iter = iteration
    state.learned_net = learned_net
    state.current_step = current_step
    for h in history:
        array_to_blob(h, state.history.add())
    return state


def _shape_matches(stored: tuple[int, ...], expected: tuple[int, ...], legacy: bool) -> bool:
    # Blob::ShapeEquals: a legacy blob's num/channels/height/width is the shape padded with leading 1s.
    if legacy and len(expected) <= 4:
        return stored == (1,) * (4 - len(expected)) + expected
    return stored == expected


def check_history(
    state: SolverStateData,
    expected_shapes: Sequence[Sequence[int]],
    path: str | os.PathLike,
    names: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """The snapshot's history in the shapes of the net being resumed, or a CaffeCompatError.

    `expected_shapes` is the flat history layout (see `flatten_history`); `names`,
    when given, names each entry in messages (e.g. "conv1 weights").
    """
    fix = "the snapshot is for another net or solver type: resume with the net and solver that wrote it"
    # SGDSolver::RestoreSolverStateFromBinaryProto: CHECK_EQ on the number of history blobs.
    if len(state.history) != len(expected_shapes):
        raise CaffeCompatError(
            f"{path}: holds {len(state.history)} history blobs but this net and solver need "
            f"{len(expected_shapes)}; {fix}"
        )
    glog.info("sgd_solver.cpp:336", "SGDSolver: restoring history")
    out = []
    for i, (h, shape) in enumerate(zip(state.history, expected_shapes, strict=True)):
        expected = tuple(int(d) for d in shape)
        legacy = state.legacy_shapes[i] if i < len(state.legacy_shapes) else False
        if not _shape_matches(tuple(h.shape), expected, legacy):
            which = f" ({names[i]})" if names is not None and i < len(names) else ""
            raise CaffeCompatError(
                f"{path}: history blob #{i} has shape {list(h.shape)} but this net's parameter"
                f"{which} has shape {list(expected)}; {fix}"
            )
        out.append(h.reshape(expected))
    return out

