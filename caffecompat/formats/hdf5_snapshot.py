"""Caffe's HDF5 snapshot files (snapshot_format: HDF5): `.caffemodel.h5` weights and `.solverstate.h5`.

Weights (Net::ToHDF5) are a group `data` with one group per layer holding
datasets `0`, `1`, ... for each parameter blob the layer owns (and, with
snapshot_diff, the same under `diff` for every blob). A solver state
(SGDSolver::SnapshotSolverStateToHDF5) holds the int datasets `iter` and
`current_step`, the string `learned_net` and a group `history` with datasets
`0` .. `n-1` in Caffe's flat history order (see solver.solverstate).

Files are built in memory and returned as bytes so that callers can write
them atomically (caffecompat.outfiles).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from caffecompat.errors import CaffeCompatError

if TYPE_CHECKING:
    from caffecompat.net.spec import NetSpec

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def is_hdf5(path: str | os.PathLike) -> bool:
    """H5Fis_hdf5: whether the file at `path` starts with the HDF5 signature (only a regular file is opened:
    a FIFO would block, a device read without end; the reader proper then refuses them)."""
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(HDF5_MAGIC)) == HDF5_MAGIC
    except OSError:
        return False


def _h5py():
    import h5py

    return h5py


def net_to_hdf5(spec: NetSpec, values: Mapping[str, np.ndarray], diffs: Mapping[str, np.ndarray] | None = None,
                what: str = "snapshot_format: HDF5") -> bytes:
    """Net::ToHDF5: the bytes of a `.caffemodel.h5` holding `values` (and `diffs` when given).

    `what` names the caller in the error for a repeated layer name."""
    h5py = _h5py()
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        data = f.create_group("data")
        diff = f.create_group("diff") if diffs is not None else None
        for node in spec.layers:
            if node.name in data:
                raise CaffeCompatError(f"{what}: layer name '{node.name}' appears more than once in net "
                                       f"'{spec.name}'; HDF5 weights need unique layer names: rename one, or "
                                       "write a binary caffemodel")
            group = data.create_group(node.name)
            diff_group = diff.create_group(node.name) if diff is not None else None
            for i, name in enumerate(node.param_names):
                # Net::ToHDF5: only parameters a layer owns are saved; diffs are saved for every blob.
                if spec.owns(node, name):
                    group.create_dataset(str(i), data=np.asarray(values[name], np.float32))
                if diff_group is not None:
                    diff_group.create_dataset(str(i), data=np.asarray(diffs[name], np.float32))
    return buffer.getvalue()


def read_hdf5_weights(path: str | os.PathLike) -> list[tuple[str, dict[int, np.ndarray]]]:
    """The `data` group of an HDF5 weights file: (layer name, {blob index: array}) in the file's order."""
    h5py = _h5py()
    try:
        with h5py.File(os.fspath(path), "r") as f:
            if "data" not in f:
                raise CaffeCompatError(f"{path}: HDF5 weights file without a 'data' group; give a caffemodel "
                                       "written by Caffe's Net::ToHDF5 (snapshot_format: HDF5) or a binary one")
            out = []
            for lname, group in f["data"].items():
                blobs = {}
                for key, dataset in group.items():
                    if not key.isdigit():
                        raise CaffeCompatError(f"{path}: dataset data/{lname}/{key} is not a blob index; "
                                               "HDF5 weights name their blobs 0, 1, ...")
                    blobs[int(key)] = np.asarray(dataset, np.float32)
                out.append((lname, blobs))
            return out
    except OSError as e:
        raise CaffeCompatError(f"{path}: cannot read the HDF5 weights: {e}") from None


def solverstate_to_hdf5(iteration: int, learned_net: str, history: Sequence[np.ndarray],
                        current_step: int) -> bytes:
    """SGDSolver::SnapshotSolverStateToHDF5: the bytes of a `.solverstate.h5`."""
    h5py = _h5py()
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        # hdf5_save_int writes a one-element int dataset; hdf5_save_string a scalar fixed-length string.
        f.create_dataset("iter", data=np.array([iteration], np.int32))
        _string_dataset(f, "learned_net", os.fsencode(learned_net))
        f.create_dataset("current_step", data=np.array([current_step], np.int32))
        group = f.create_group("history")
        for i, h in enumerate(history):
            group.create_dataset(str(i), data=np.asarray(h, np.float32))
    return buffer.getvalue()


def _string_dataset(f, name: str, value: bytes) -> None:
    # hdf5_save_string (H5LTmake_dataset_string): a scalar string of strlen + 1 bytes, NUL-terminated;
    # Caffe's hdf5_load_string reads it into a buffer of that size and needs the terminator.
    h5py = _h5py()
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(value) + 1)
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    dataset = h5py.h5d.create(f.id, name.encode(), tid, h5py.h5s.create(h5py.h5s.SCALAR))
    dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(value + b"\0", dtype=f"S{len(value) + 1}"))


def read_hdf5_solverstate(path: str | os.PathLike) -> tuple[int, str, list[np.ndarray], int]:
    """SGDSolver::RestoreSolverStateFromHDF5's reads: (iter, learned_net or '', history, current_step)."""
    h5py = _h5py()
    if not os.path.isfile(path):
        raise CaffeCompatError(f"{path}: no such solverstate file; give the .solverstate.h5 a snapshot wrote")
    try:
        with h5py.File(os.fspath(path), "r") as f:
            missing = [k for k in ("iter", "current_step", "history") if k not in f]
            if missing:
                raise CaffeCompatError(f"{path}: not a Caffe HDF5 solver state (no {', '.join(missing)}); "
                                       "resume from the .solverstate.h5 written beside the run's .caffemodel.h5")
            iteration = int(np.asarray(f["iter"]).reshape(-1)[0])
            current_step = int(np.asarray(f["current_step"]).reshape(-1)[0])
            learned = ""
            if "learned_net" in f:
                raw = f["learned_net"][()]
                learned = os.fsdecode(raw) if isinstance(raw, bytes) else str(raw)
            group = f["history"]
            count = len(group)
            names = [str(i) for i in range(count)]
            absent = [n for n in names if n not in group]
            if absent:
                raise CaffeCompatError(f"{path}: history holds {count} entries but no dataset history/{absent[0]}; "
                                       "the file is damaged: resume from another snapshot")
            history = [np.asarray(group[n], np.float32) for n in names]
            return iteration, learned, history, current_step
    except OSError as e:
        raise CaffeCompatError(f"{path}: cannot read the HDF5 solver state: {e}") from None
