"""`caffecompat upgrade IN OUT`: Caffe's three upgrade tools in one command."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest

from caffecompat import cli, glog
from caffecompat.formats import caffemodel, protofile
from caffecompat.proto import caffe_pb2


@pytest.fixture(autouse=True)
def quiet_log():
    stream = io.StringIO()
    glog.set_stream(stream)
    yield stream
    glog.set_stream(None)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("caffecompat upgrade: error: ")
    return err


def test_upgrades_v1_prototxt_like_caffe(golden, tmp_path, quiet_log):
    d = golden / "forward" / "v1_legacy"
    out = tmp_path / "up.prototxt"
    assert cli.main(["upgrade", str(d / "net.prototxt"), str(out)]) == 0
    expected = protofile.read_text(d / "upgraded_by_caffe.prototxt", caffe_pb2.NetParameter, "net")
    assert protofile.read_text(out, caffe_pb2.NetParameter, "net") == expected
    assert f"Wrote upgraded NetParameter text proto to {out}" in quiet_log.getvalue()


def test_upgrades_v1_caffemodel(golden, tmp_path, quiet_log):
    src = golden / "forward" / "v1_legacy" / "weights_v1.caffemodel"
    for args in ([], ["-binary"]):
        out = tmp_path / "up.caffemodel"
        assert cli.main(["upgrade", *args, str(src), str(out)]) == 0
        up = protofile.read_binary(out, caffe_pb2.NetParameter, "caffemodel")
        assert len(up.layers) == 0 and [lay.name for lay in up.layer] == ["conv1_1", "conv2_1", "fc6", "fc8"]
        # blobs are carried over unchanged, legacy dims included
        assert up.layer[2].blobs[0].height == 32 and up.layer[2].blobs[0].width == 432
        old = caffemodel.read_weights(src).blobs
        new = caffemodel.read_weights(out).blobs
        for name in old:
            for a, b in zip(old[name], new[name]):
                np.testing.assert_array_equal(a, b)
    assert "NetParameter binary proto" in quiet_log.getvalue()


def test_upgrades_solver(tmp_path, quiet_log):
    src = tmp_path / "old_solver.prototxt"
    src.write_text('net: "train.prototxt"\nbase_lr: 0.01\nsolver_type: ADAGRAD\n')
    for args in ([], ["-solver"]):
        out = tmp_path / "new_solver.prototxt"
        assert cli.main(["upgrade", *args, str(src), str(out)]) == 0
        solver = protofile.read_text(out, caffe_pb2.SolverParameter, "solver")
        assert solver.type == "AdaGrad" and not solver.HasField("solver_type")
        assert not solver.HasField("snapshot_prefix")  # the tool keeps what the user wrote


def test_current_file_is_copied_with_a_note(bvlc, tmp_path, quiet_log):
    src = bvlc / "examples" / "mnist" / "lenet.prototxt"
    out = tmp_path / "lenet.prototxt"
    assert cli.main(["upgrade", str(src), str(out)]) == 0
    assert "File already in latest proto format" in quiet_log.getvalue()
    assert protofile.read_text(out, caffe_pb2.NetParameter, "n") == protofile.read_text(
        src, caffe_pb2.NetParameter, "n")


def test_in_place(golden, tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_bytes((golden / "forward" / "v1_legacy" / "net.prototxt").read_bytes())
    assert cli.main(["upgrade", str(path), str(path)]) == 0
    assert len(protofile.read_text(path, caffe_pb2.NetParameter, "n").layer) == 13


def test_refuses_input_under_another_name(golden, tmp_path, capsys):
    path = tmp_path / "net.prototxt"
    path.write_bytes((golden / "forward" / "v1_legacy" / "net.prototxt").read_bytes())
    (tmp_path / "link.prototxt").symlink_to(path)
    assert cli.main(["upgrade", str(path), str(tmp_path / "link.prototxt")]) == 1
    assert "same path" in _one_error_line(capsys)


def test_v0_problems_exit_1_but_write(tmp_path):
    src = tmp_path / "v0.prototxt"
    src.write_text('input: "x"\nlayers { layer { name: "r" type: "relu" group: 2 } bottom: "x" top: "y" }\n')
    out = tmp_path / "out.prototxt"
    assert cli.main(["upgrade", str(src), str(out)]) == 1
    assert protofile.read_text(out, caffe_pb2.NetParameter, "n").layer[0].type == "ReLU"


@pytest.mark.parametrize("name,content,args,match", [
    ("bad.prototxt", b'name: "x"\nlayer {\n  nmae: "a"\n}\n', [], r"bad.prototxt:3:\d+: malformed"),
    ("bad_solver.prototxt", b"base_lr: 0.1\nmax_iter: 10\nlr_policy: step\n", [], r"bad_solver.prototxt:3:"),
    ("t.caffemodel", None, [], r"t.caffemodel: not a valid caffemodel"),
    ("t.caffemodel", None, ["-binary"], r"t.caffemodel: not a valid caffemodel"),
    ("noise.caffemodel", bytes(range(255, -1, -1)), [], r"noise.caffemodel: not a valid caffemodel"),
    ("empty.caffemodel", b"", [], "empty"),
    ("binary.prototxt", b"\xff\xfe\x00", ["-text"], "not text"),
])
def test_bad_input_is_one_line_and_exit_1(golden, tmp_path, capsys, name, content, args, match):
    src = tmp_path / name
    if content is None:  # truncated caffemodel
        content = (golden / "forward" / "v1_legacy" / "weights_v1.caffemodel").read_bytes()[:-7]
    src.write_bytes(content)
    out = tmp_path / "out"
    assert cli.main(["upgrade", *args, str(src), str(out)]) == 1
    err = _one_error_line(capsys)
    assert re.search(match, err), err
    assert not out.exists()


def test_missing_input(tmp_path, capsys):
    assert cli.main(["upgrade", str(tmp_path / "none.prototxt"), str(tmp_path / "o")]) == 1
    assert "no such" in _one_error_line(capsys)
