"""Snapshots: Net::ToProto (the resolved TRAIN net's layers with their blobs, as Caffe writes them) and
Solver::Snapshot's pair of files, installed as one group.

The pair is made consistent across kills as well as failures:

* both files are written and synced under temporary names, then the
  .caffemodel is renamed into place, then the .solverstate: the solverstate is
  the pair's commit point (a failure between the renames puts the old
  .caffemodel back; see outfiles.write_atomic_group);
* the solverstate carries the SHA-256 of the caffemodel it names in a field
  of its own (number PAIR_FIELD, which Caffe's SolverState lacks: protobuf
  keeps unknown fields of a binary message, so Caffe still reads the file), and
  resuming checks it: a kill between the renames, beside an older pair of the
  same names, leaves a new caffemodel with the old solverstate, which is then
  refused in one line instead of mixing two runs;
* a training run holds an flock on its snapshot prefix (`prefix_lock`), so a
  second run on the same prefix is refused at start.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from caffecompat import glog, outfiles
from caffecompat.errors import CaffeCompatError
from caffecompat.formats.blob import array_to_blob, encode_varint
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
        forced = impl.forced_zero_lr(node)
        if forced:
            # The fork BN's LayerSetUp: param specs up to its blob count, lr_mult and decay_mult 0 where it forces.
            while len(layer.param) < len(node.param_names):
                layer.param.add()
            for i in forced:
                layer.param[i].lr_mult = layer.param[i].decay_mult = 0.0
        for name in node.param_names:
            array_to_blob(values[name], layer.blobs.add(), None if diffs is None else diffs.get(name))
    return net


# The solverstate's field holding the SHA-256 of its caffemodel (unknown to Caffe, which keeps and ignores it).
PAIR_FIELD = 9001


def _pair_field(digest: bytes) -> bytes:
    return encode_varint(PAIR_FIELD << 3 | 2) + encode_varint(len(digest)) + digest


def write_snapshot(model_path: str, state_path: str, spec: NetSpec, values: Mapping[str, np.ndarray],
                   diffs: Mapping[str, np.ndarray] | None, iteration: int, history: Sequence[np.ndarray],
                   current_step: int, hdf5: bool = False) -> None:
    """Solver::Snapshot: the .caffemodel, then the .solverstate naming it, installed as one group.

    The files are made one after the other (the caffemodel's bytes are gone
    before the solverstate's are made) and renamed only when both are complete.
    With `hdf5` (snapshot_format: HDF5) both are Caffe's HDF5 files; those carry
    no pair digest (Caffe's HDF5 solverstate has no room for one), so only the
    write order protects them.
    """
    digest: list[bytes] = []

    def model() -> Iterator[bytes]:
        if hdf5:
            from caffecompat.formats.hdf5_snapshot import net_to_hdf5

            glog.info("solver.cpp:474", f"Snapshotting to HDF5 file {model_path}")
            yield net_to_hdf5(spec, values, diffs)
            return
        glog.info("solver.cpp:464", f"Snapshotting to binary proto file {model_path}")
        data = net_to_proto(spec, values, diffs).SerializeToString()
        digest.append(hashlib.sha256(data).digest())
        yield data

    def state() -> Iterator[bytes]:
        if hdf5:
            from caffecompat.formats.hdf5_snapshot import solverstate_to_hdf5

            glog.info("sgd_solver.cpp:300", f"Snapshotting solver state to HDF5 file {state_path}")
            yield solverstate_to_hdf5(iteration, model_path, history, current_step)
            return
        glog.info("sgd_solver.cpp:284", f"Snapshotting solver state to binary proto file {state_path}")
        yield solverstate_proto(iteration, model_path, history, current_step).SerializeToString() \
            + _pair_field(digest[0])

    outfiles.write_atomic_group([(model_path, model()), (state_path, state())], "snapshot")


def _pair_digest(state_path: str) -> bytes | None:
    """The caffemodel digest a solverstate of ours carries (None: one written by Caffe, an HDF5 one, or
    unreadable)."""
    from google.protobuf.unknown_fields import UnknownFieldSet

    if state_path.endswith(".h5"):
        return None

    try:
        msg = caffe_pb2.SolverState.FromString(Path(state_path).read_bytes())
    except Exception:  # noqa: BLE001 - the reader proper reports a damaged file
        return None
    for f in UnknownFieldSet(msg):
        if f.field_number == PAIR_FIELD and isinstance(f.data, bytes):
            return f.data
    return None


def _file_digest(path: str) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            h.update(chunk)
    return h.digest()


def learned_net_of(state_path: str, learned_net: str) -> str:
    """The caffemodel a solverstate's learned_net names, checked to be the one written with it.

    SGDSolver::RestoreSolverStateFromBinaryProto opens learned_net as written,
    relative to the working directory; when nothing is there, the solverstate's
    own folder is tried (snapshots moved together, or resumed from elsewhere) and
    the fall-back is logged.
    """
    path = learned_net
    if not os.path.isfile(path):
        beside = os.path.join(os.path.dirname(state_path), os.path.basename(learned_net))
        if os.path.isabs(learned_net) or not os.path.isfile(beside):
            also = "" if os.path.isabs(learned_net) else f"; also tried {beside}"
            raise CaffeCompatError(
                f"the solverstate {state_path} names learned_net '{learned_net}', which does not exist "
                f"(relative paths are taken from the working directory, {os.getcwd()}, as Caffe does{also}); "
                "run from the folder training ran in, or put the caffemodel there")
        glog.info("snapshot.py", f"learned_net '{learned_net}' of {state_path} is not in the working directory; "
                                 f"using {beside}, beside the solverstate")
        path = beside
    want = _pair_digest(state_path)
    if want is not None and _file_digest(path) != want:
        raise CaffeCompatError(
            f"{state_path} and its learned_net {path} are not one snapshot: the caffemodel was replaced after "
            "the solverstate was written (a run killed between writing the two, or another run on the same "
            "snapshot_prefix); resume from an earlier snapshot, or start from those weights with -weights "
            f"{path}")
    return path


def _lock_path(prefix: str) -> Path:
    head, name = os.path.split(prefix)
    return Path(head or ".") / f".{name}.caffecompat-lock"


@contextlib.contextmanager
def prefix_lock(prefix: str, solver_file: str) -> Iterator[None]:
    """Hold an exclusive flock on the snapshot prefix for a training run; refuse when another run holds it.

    The lock file (`.<prefix name>.caffecompat-lock` beside the snapshots) says
    which process holds it, and is removed (still locked) when the run ends.
    Where locks are not available (Windows, a file system without them) or the
    folder is not writable (the solver reports that), runs are not locked.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = _lock_path(prefix)
    fd = _take(path, prefix, solver_file, fcntl)
    if fd is None:
        yield
        return
    try:
        yield
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)


def _take(path: Path, prefix: str, solver_file: str, fcntl) -> int | None:  # noqa: ANN001 - the fcntl module
    """The descriptor of the lock file at `path`, locked by us (None: locks are not available here)."""
    for _ in range(8):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
            os.close(fd)
            who = f"pid {holder[0]} on host {holder[1]}" if len(holder) >= 2 else "another process"
            raise CaffeCompatError(
                f"{solver_file}: snapshot_prefix '{prefix}' is in use by another training run ({who}, which "
                f"holds {path}); two runs on one prefix overwrite each other's snapshots: give this run another "
                "snapshot_prefix, or wait for that run to end") from None
        except OSError:  # no locks on this file system
            os.close(fd)
            return None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except OSError:
            same = False
        if not same:  # the run that held it ended and removed the file after we opened it: take the new one
            os.close(fd)
            continue
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        except OSError:
            pass
        return fd
    return None


def snapshot_failed(error: CaffeCompatError, iteration: int, last: str | None) -> CaffeCompatError:
    """The error that stops training when the snapshot of `iteration` could not be written."""
    if last:
        where = f"the last complete snapshot is {last}: resume with -snapshot {last}"
    else:
        where = "this run wrote no snapshot before"
    return CaffeCompatError(f"{error}; training stopped at iteration {iteration} without this snapshot; {where}")
