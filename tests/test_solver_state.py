"""The .solverstate format: Caffe's snapshots read back, our writes, and resume checks."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest

from caffecompat import glog
from caffecompat.errors import CaffeCompatError
from caffecompat.formats.caffemodel import read_caffemodel
from caffecompat.proto import caffe_pb2
from caffecompat.solver.solverstate import (
    SolverStateData,
    check_history,
    flatten_history,
    read_solverstate,
    split_history,
    write_solverstate,
)

# train/net.prototxt's learnable blobs: conv1, conv2, ip1, ip2 weights and biases.
NET_SHAPES = [(16, 3, 5, 5), (16,), (24, 8, 3, 3), (24,), (48, 1176), (48,), (10, 48), (10,)]
# train/net_bn.prototxt adds BatchNorm (mean, variance, scale factor) and Scale (gamma, beta) after each conv.
BN_SHAPES = [
    (16, 3, 5, 5), (16,), (16,), (16,), (1,), (16,), (16,),
    (24, 8, 3, 3), (24,), (24,), (24,), (1,), (24,), (24,),
    (48, 1176), (48,), (10, 48), (10,),
]  # fmt: skip
CURRENT_STEP = {"sgd_step_iter_12": 1, "sgd_step_iter_24": 2, "sgd_step_resume_iter_24": 2,
                "finetune_step_iter_24": 2, "nesterov_multistep_iter_24": 2, "deconv_sgd_iter_24": 2}  # fmt: skip


@pytest.fixture(autouse=True)
def quiet_log():
    stream = io.StringIO()
    glog.set_stream(stream)
    yield stream
    glog.set_stream(None)


def expected_shapes(name: str, folder: Path | None = None) -> list[tuple[int, ...]]:
    if name.startswith("deconv_") and folder is not None:
        # train/net_deconv.prototxt: the shapes Caffe wrote into the run's own snapshot.
        model = read_caffemodel(folder / f"{name}.caffemodel")
        shapes = [tuple(b.shape.dim) for lp in model.layer for b in lp.blobs]
    else:
        shapes = BN_SHAPES if name.startswith("bn_") else NET_SHAPES
    depth = 2 if name.startswith(("adam", "adadelta")) else 1
    return shapes * depth


def test_golden_solverstates_read_back(golden):
    files = sorted((golden / "train/out").glob("*.solverstate"))
    assert len(files) == 12
    for path in files:
        name = path.stem
        state = read_solverstate(path)
        assert state.iteration == int(re.search(r"_iter_(\d+)$", name).group(1))
        assert state.learned_net == f"train/out/{name}.caffemodel"
        assert state.current_step == CURRENT_STEP.get(name, 0), name
        shapes = expected_shapes(name, golden / "train/out")
        assert [h.shape for h in state.history] == shapes, name
        assert all(h.dtype == np.float32 for h in state.history)
        restored = check_history(state, shapes, path)
        assert len(restored) == len(shapes)


def test_golden_frozen_params_keep_zero_history(golden):
    # finetune: conv1 has lr_mult 0, so its momentum history stays zero but is still stored.
    state = read_solverstate(golden / "train/out/finetune_step_iter_24.solverstate")
    assert not state.history[0].any() and not state.history[1].any()
    assert state.history[2].any()
    # BatchNorm's statistics blobs are learnable params with lr_mult 0.
    state = read_solverstate(golden / "train/out/bn_sgd_fixed_iter_24.solverstate")
    for i in (2, 3, 4, 9, 10, 11):
        assert not state.history[i].any()


def test_golden_rewrite_is_byte_identical(golden, tmp_path):
    for name in ("sgd_step_iter_12", "adam_fixed_iter_24"):
        source = golden / f"train/out/{name}.solverstate"
        state = read_solverstate(source)
        out = tmp_path / f"{name}.solverstate"
        write_solverstate(out, state.iteration, state.learned_net, state.history, state.current_step)
        assert out.read_bytes() == source.read_bytes()


def test_round_trip(tmp_path, quiet_log):
    rng = np.random.default_rng(0)
    history = [rng.standard_normal(s).astype(np.float32) for s in [(2, 3), (4,), (2, 3), (4,)]]
    path = tmp_path / "x_iter_7.solverstate"
    write_solverstate(path, 7, "x_iter_7.caffemodel", history, 3)
    assert f"sgd_solver.cpp:284] Snapshotting solver state to binary proto file {path}" in quiet_log.getvalue()
    state = read_solverstate(path)
    assert (state.iteration, state.learned_net, state.current_step) == (7, "x_iter_7.caffemodel", 3)
    assert len(state.history) == 4
    for a, b in zip(state.history, history, strict=True):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_flatten_and_split_follow_caffe_order():
    m0, m1, v0, v1 = (np.full(2, i, np.float32) for i in range(4))
    flat = flatten_history([[m0, v0], [m1, v1]])
    # AdaDelta/Adam: every parameter's first blob, then every parameter's second blob
    assert [int(a[0]) for a in flat] == [0, 1, 2, 3]
    per_param = split_history(flat, 2)
    assert per_param[0][0] is m0 and per_param[0][1] is v0 and per_param[1][1] is v1
    assert flatten_history([[m0], [m1]]) == [m0, m1]
    with pytest.raises(CaffeCompatError, match="cannot be split"):
        split_history(flat[:3], 2)


def test_history_count_mismatch(tmp_path):
    state = SolverStateData(12, "a.caffemodel", [np.zeros(3, np.float32)] * 2)
    with pytest.raises(CaffeCompatError) as err:
        check_history(state, [(3,)] * 4, "a_iter_12.solverstate")
    message = str(err.value)
    assert message.startswith("a_iter_12.solverstate: holds 2 history blobs")
    assert "need 4" in message and "another net" in message


def test_history_shape_mismatch_names_the_param():
    state = SolverStateData(12, "a.caffemodel", [np.zeros((3, 2), np.float32), np.zeros(3, np.float32)])
    with pytest.raises(CaffeCompatError) as err:
        check_history(state, [(3, 2), (4,)], "s.solverstate", names=["ip1 weights", "ip1 bias"])
    message = str(err.value)
    assert "history blob #1 has shape [3]" in message
    assert "(ip1 bias) has shape [4]" in message
    assert "another net" in message


def test_legacy_4d_history_blob_is_accepted(tmp_path):
    state = caffe_pb2.SolverState(iter=5)
    blob = state.history.add(num=1, channels=1, height=2, width=3)
    blob.data.extend([1, 2, 3, 4, 5, 6])
    path = tmp_path / "old.solverstate"
    path.write_bytes(state.SerializeToString())
    loaded = read_solverstate(path)
    assert loaded.history[0].shape == (1, 1, 2, 3)
    (restored,) = check_history(loaded, [(2, 3)], path)
    np.testing.assert_array_equal(restored, [[1, 2, 3], [4, 5, 6]])
    with pytest.raises(CaffeCompatError, match="has shape"):
        check_history(loaded, [(3, 2)], path)


def test_hdf5_solverstate_round_trip(tmp_path):
    from caffecompat.formats.hdf5_snapshot import solverstate_to_hdf5

    history = [np.arange(6, dtype=np.float32).reshape(2, 3), np.full((4,), -1.5, np.float32)]
    path = tmp_path / "x_iter_7.solverstate.h5"
    path.write_bytes(solverstate_to_hdf5(7, "x_iter_7.caffemodel.h5", history, 3))
    state = read_solverstate(path)
    assert (state.iteration, state.learned_net, state.current_step) == (7, "x_iter_7.caffemodel.h5", 3)
    for a, b in zip(state.history, history, strict=True):
        np.testing.assert_array_equal(a, b)
    # An HDF5 state under a binary name is still read for what it is.
    disguised = tmp_path / "x_iter_7.solverstate"
    disguised.write_bytes(path.read_bytes())
    assert read_solverstate(disguised).iteration == 7
    # write_solverstate writes the binary format only: an .h5 name is refused, not written as protobuf.
    with pytest.raises(CaffeCompatError, match="writes the binary format"):
        write_solverstate(tmp_path / "y_iter_1.solverstate.h5", 1, "", [], 0)
    broken = tmp_path / "broken.solverstate.h5"
    broken.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    with pytest.raises(CaffeCompatError, match="broken.solverstate.h5: cannot read the HDF5 solver state"):
        read_solverstate(broken)


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(CaffeCompatError, match="nope.solverstate: no such solverstate file"):
        read_solverstate(tmp_path / "nope.solverstate")
    bad = tmp_path / "bad.solverstate"
    bad.write_bytes(b"\xff\xff\xff\xff")
    with pytest.raises(CaffeCompatError, match="bad.solverstate: not a valid solverstate"):
        read_solverstate(bad)
