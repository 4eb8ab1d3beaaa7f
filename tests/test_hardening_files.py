"""Hardening of files and folders: -proto never runs a command, groups of files are installed whole,
temporaries of live writers survive sweeps, snapshot pairs never mix, HDF5 links are refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from caffecompat import glog, outfiles

HOLDER = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("ready", flush=True)
time.sleep(60)
"""


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _host() -> str:
    return outfiles.temp_path("x").name.split("-")[-2]


@pytest.mark.skipif(os.name == "nt", reason="no flock on Windows: the sweep is off there")
@pytest.mark.parametrize("pid", ["unused", "live unrelated"])
def test_sweep_keeps_a_live_writers_temporary_whatever_its_pid(tmp_path, capsys, pid):
    # Another PID namespace: the pid in the name is unused here, or some unrelated live process's.
    fake = _dead_pid() if pid == "unused" else 1
    tmp = tmp_path / f".out.bin.caffecompat-tmp-{fake}-{_host()}-beef"
    tmp.write_bytes(b"being written")
    writer = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        glog.set_stream(None)
        assert outfiles.sweep_stale(tmp_path, once=False) == []
        outfiles.write_atomic(tmp_path / "out.bin", b"other run")
        assert tmp.read_bytes() == b"being written"
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()
    # Its writer gone, the lock is free: the next sweep removes it, and says so.
    assert outfiles.sweep_stale(tmp_path, once=False) == [tmp]
    assert f"Removed {tmp}, a temporary file left by caffecompat process {fake}" in capsys.readouterr().err


def test_our_own_temporaries_are_locked_while_written(tmp_path):
    tmp = outfiles.write_temp(tmp_path / "a.bin", b"x")
    db = outfiles.make_temp_dir(tmp_path / "db", "database")
    (db / "data.mdb").write_bytes(b"partial")
    out = subprocess.run([sys.executable, "-c", "import sys; from caffecompat import outfiles; "
                          "print(len(outfiles.sweep_stale(sys.argv[1])))", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "0", out.stderr
    assert tmp.exists() and db.exists()
    outfiles.commit(tmp, tmp_path / "a.bin")
    outfiles.install_folder(db, tmp_path / "db")
    assert (tmp_path / "a.bin").read_bytes() == b"x" and (tmp_path / "db" / "data.mdb").exists()
    assert [p.name for p in tmp_path.iterdir() if outfiles.is_temp_name(p.name)] == []


# --- convert -external_data: the model and its data file are one group ----------------------------

IP_NET = """name: "ip"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 300 } }
"""


def _ip_weights(folder: Path, seed: int) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """The net, a caffemodel of random weights (the 300 x 4 matrix goes to external data), W and b."""
    from caffecompat.formats.blob import array_to_blob
    from caffecompat.formats.caffemodel import write_caffemodel
    from caffecompat.proto import caffe_pb2

    net_path = folder / "ip.prototxt"
    net_path.write_text(IP_NET)
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=(300, 4)).astype(np.float32), rng.normal(size=300).astype(np.float32)
    net = caffe_pb2.NetParameter(name="ip")
    lp = net.layer.add(name="ip", type="InnerProduct")
    array_to_blob(w, lp.blobs.add())
    array_to_blob(b, lp.blobs.add())
    path = folder / f"ip{seed}.caffemodel"
    write_caffemodel(path, net)
    return net_path, path, w, b


def _check_model_computes(model: Path, w: np.ndarray, b: np.ndarray) -> None:
    import onnxruntime as ort

    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 7
    got = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"data": x})[0]
    np.testing.assert_allclose(got, x @ w.T + b, rtol=1e-5, atol=1e-5)  # InnerProduct by hand


def _data_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".data"))


def test_failed_re_export_keeps_the_old_model_and_its_data(tmp_path, monkeypatch, capsys):
    from caffecompat import cli
    from caffecompat.errors import CaffeCompatError

    net, old_weights, w1, b1 = _ip_weights(tmp_path, 1)
    _, new_weights, w2, b2 = _ip_weights(tmp_path, 2)
    out = tmp_path / "m.onnx"
    assert cli.main(["convert", str(net), str(old_weights), str(out), "-external_data"]) == 0
    assert _data_files(tmp_path) == ["m.onnx.data"]
    _check_model_computes(out, w1, b1)
    real = outfiles.write_temp

    def full_disk(target, data, what="file"):  # the data fits, the model then does not
        if str(target).endswith(".onnx"):
            raise CaffeCompatError(f"{target}: cannot write the {what}: no space left on the device")
        return real(target, data, what)

    monkeypatch.setattr(outfiles, "write_temp", full_disk)
    assert cli.main(["convert", str(net), str(new_weights), str(out), "-external_data"]) == 1
    assert "no space left" in capsys.readouterr().err
    _check_model_computes(out, w1, b1)
    assert _data_files(tmp_path) == ["m.onnx.data"]
    assert [p.name for p in tmp_path.iterdir() if outfiles.is_temp_name(p.name)] == []
    # A re-export that succeeds replaces the pair and leaves one data file.
    monkeypatch.setattr(outfiles, "write_temp", real)
    assert cli.main(["convert", str(net), str(new_weights), str(out), "-external_data"]) == 0
    _check_model_computes(out, w2, b2)
    assert len(_data_files(tmp_path)) == 1
    # And a plain (internal) export over it removes the data file nothing names any more.
    assert cli.main(["convert", str(net), str(old_weights), str(out)]) == 0
    _check_model_computes(out, w1, b1)
    assert _data_files(tmp_path) == []


KILL_AT = r"""
import os, signal, sys
from caffecompat import cli, outfiles
real = getattr(outfiles, sys.argv[1])
def killed(tmp, target, *a, **k):
    if str(target).endswith(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(tmp, target, *a, **k)
setattr(outfiles, sys.argv[1], killed)
cli.main(["convert", *sys.argv[3:], "-external_data"])
"""


@pytest.mark.parametrize("point", [".data", ".onnx"])
def test_kill_during_re_export_leaves_the_old_pair(tmp_path, point):
    from caffecompat import cli

    net, old_weights, w1, b1 = _ip_weights(tmp_path, 1)
    _, new_weights, _, _ = _ip_weights(tmp_path, 2)
    out = tmp_path / "m.onnx"
    assert cli.main(["convert", str(net), str(old_weights), str(out), "-external_data"]) == 0
    # kill -9 just before the data file's rename, or just before the model's (the data then in place)
    run = subprocess.run([sys.executable, "-c", KILL_AT, "commit", point, str(net), str(new_weights), str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == -9, run.stderr[-2000:]
    _check_model_computes(out, w1, b1)


# --- -proto: protoc sees only paths we made ------------------------------------------------------

SCHEMA = """syntax = "proto2";
message Node { optional Node child = 1; optional int32 v = 2; }
message NetParameter { optional string name = 1; optional Node node = 2; }
message SolverParameter { optional string net = 1; }
"""


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def _importing(name: str) -> str:
    return SCHEMA.replace('syntax = "proto2";', f'syntax = "proto2";\nimport "{name}";')


@pytest.fixture
def proto_dir(tmp_path, monkeypatch):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is not installed (the proto extra)")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "n.prototxt").write_text('name: "n"\n')
    return tmp_path


def test_proto_named_like_a_protoc_response_file_runs_nothing(proto_dir, capsys):
    from caffecompat import cli

    marker = proto_dir / "ran"
    plugin = proto_dir / "plugin.sh"
    plugin.write_text(f"#!/bin/sh\ntouch {marker}\n")
    plugin.chmod(0o755)
    (proto_dir / "ok.proto").write_text(SCHEMA)
    (proto_dir / "out").mkdir()
    # protoc reads `@opts` as "the options in file opts"
    (proto_dir / "opts").write_text(f"--plugin=protoc-gen-x={plugin}\n--x_out={proto_dir / 'out'}\nok.proto\n")
    (proto_dir / "@opts").write_text(SCHEMA)
    assert cli.main(["convert", "-proto", "./@opts", "n.prototxt", "-", "m.onnx"]) == 1
    line = _one_error(capsys)
    assert "-proto" not in line and "n.prototxt" in line  # @opts compiled as a schema; the net has no layers
    assert not marker.exists()
    (proto_dir / "@opts").write_text("not a schema")
    assert cli.main(["convert", "-proto", "./@opts", "n.prototxt", "-", "m.onnx"]) == 1
    line = _one_error(capsys)
    assert "-proto @opts: protoc cannot compile it" in line and "absl" not in line
    assert not marker.exists()


@pytest.mark.parametrize("name", ["--decode_raw", "@schema.proto", "a:b=c.proto"])
def test_proto_with_an_option_like_name_is_just_a_file(proto_dir, name):
    from caffecompat.formats import userproto

    (proto_dir / name).write_text(SCHEMA)
    assert userproto.schema(f"./{name}").message_class("NetParameter")(name="x").name == "x"


def test_proto_imports_stay_in_its_folder(proto_dir, capsys):
    from caffecompat import cli

    outside = proto_dir / "elsewhere"
    outside.mkdir()
    (outside / "other.proto").write_text('syntax = "proto2";\nmessage Other { optional int32 a = 1; }\n')
    schema_dir = proto_dir / "schema"
    schema_dir.mkdir()
    (schema_dir / "link.proto").symlink_to(outside / "other.proto")
    (schema_dir / "caffe.proto").write_text(_importing('link.proto'))
    assert cli.main(["convert", "-proto", "schema/caffe.proto", "n.prototxt", "-", "m.onnx"]) == 1
    assert "imports link.proto, which leads outside" in _one_error(capsys)
    (schema_dir / "up.proto").write_text(_importing('../elsewhere/other.proto'))
    assert cli.main(["convert", "-proto", "schema/up.proto", "n.prototxt", "-", "m.onnx"]) == 1
    assert "protoc cannot compile it" in _one_error(capsys)
    # The bundled descriptor protos still resolve.
    (schema_dir / "wk.proto").write_text(_importing('google/protobuf/descriptor.proto'))
    assert cli.main(["convert", "-proto", "schema/wk.proto", "n.prototxt", "-", "m.onnx"]) == 1
    assert "protoc" not in _one_error(capsys)  # compiled; the net just has no layers to convert


@pytest.mark.parametrize("depth", [20000, 300])
def test_deeply_nested_text_of_a_recursive_schema_is_one_line(proto_dir, capsys, depth):
    from caffecompat import cli

    (proto_dir / "rec.proto").write_text(SCHEMA)
    (proto_dir / "deep.prototxt").write_text('name: "x"\nnode ' + "{ child " * depth + "{ v: 1 }" + " }" * depth)
    assert cli.main(["convert", "-proto", "rec.proto", "deep.prototxt", "-", "m.onnx"]) == 1
    line = _one_error(capsys)
    assert "deep.prototxt" in line and ("nest too deeply" in line or "field node of rec.proto" in line)


# --- snapshot pairs: never a mix, one run per prefix -----------------------------------------------

def _ip_spec(folder: Path):
    from caffecompat.formats.net import read_net_prototxt
    from caffecompat.net import spec as netspec
    from caffecompat.proto import caffe_pb2

    (folder / "ip.prototxt").write_text(IP_NET)
    spec = netspec.build(read_net_prototxt(folder / "ip.prototxt"), caffe_pb2.TRAIN)
    shapes = {n: s for node in spec.layers for n, s in zip(node.param_names, node.param_shapes)}
    return spec, shapes


def _write_generation(spec, shapes, model: Path, state: Path, gen: int) -> None:
    from caffecompat.solver.snapshot import write_snapshot

    values = {n: np.full(s, gen, np.float32) for n, s in shapes.items()}
    history = [np.full(s, -gen, np.float32) for s in shapes.values()]
    write_snapshot(str(model), str(state), spec, values, None, gen, history, 0)


FS_STEPS = ("open", "fsync", "link", "replace", "rename", "unlink", "close")


def kill_loop(folder: str) -> dict[str, int]:
    """50 snapshot writes over one pair, each SIGKILLed at a random file-system step, each then resumed.

    Run in a process of its own (test below): it forks one writer per write and
    wants no other threads of the test session around when it does.
    """
    import random
    import signal

    from caffecompat.errors import CaffeCompatError
    from caffecompat.formats.blob import blob_to_array
    from caffecompat.proto import caffe_pb2
    from caffecompat.solver.snapshot import learned_net_of
    from caffecompat.solver.solverstate import read_solverstate

    os.chdir(folder)
    spec, shapes = _ip_spec(Path(folder))
    model, state = Path("s_iter_5.caffemodel"), Path("s_iter_5.solverstate")
    with open(os.devnull, "w") as quiet:
        glog.set_stream(quiet)  # the log of 50 writes is not the point
        _write_generation(spec, shapes, model, state, 1)  # the older pair of the same names
        rng = random.Random(19)
        outcomes = {"new": 0, "old": 0, "refused": 0}
        for gen in range(2, 52):
            die_at = rng.randrange(1, 40)
            pid = os.fork()
            if pid == 0:  # the writer: SIGKILL at its die_at-th file-system step
                count = [0]
                for name in FS_STEPS:
                    real = getattr(os, name)

                    def step(*a, _real=real, _count=count, _at=die_at, **k):
                        _count[0] += 1
                        if _count[0] == _at:
                            os.kill(os.getpid(), signal.SIGKILL)
                        return _real(*a, **k)

                    setattr(os, name, step)
                _write_generation(spec, shapes, model, state, gen)
                os._exit(0)
            os.waitpid(pid, 0)
            # Resume as SGDSolver::Restore does: the solverstate, then the caffemodel it names.
            st = read_solverstate(state)
            try:
                weights = learned_net_of(str(state), st.learned_net)
            except CaffeCompatError as e:
                assert "\n" not in str(e) and "are not one snapshot" in str(e)
                outcomes["refused"] += 1
                continue
            net = caffe_pb2.NetParameter.FromString(Path(weights).read_bytes())
            assert {float(v) for b in net.layer[1].blobs for v in blob_to_array(b).ravel()} == {float(st.iteration)}
            assert {float(v) for h in st.history for v in h.ravel()} == {-float(st.iteration)}
            outcomes["new" if st.iteration == gen else "old"] += 1
        glog.set_stream(None)
    return outcomes


def test_kill_at_random_points_of_snapshot_writes_never_resumes_a_mixed_pair(tmp_path):
    import json

    repo = Path(__file__).resolve().parent.parent
    run = subprocess.run(
        [sys.executable, "-c", "import json, sys; from tests.test_hardening_files import kill_loop; "
                               "print(json.dumps(kill_loop(sys.argv[1])))", str(tmp_path)],
        cwd=repo, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    outcomes = json.loads(run.stdout.strip().splitlines()[-1])
    assert sum(outcomes.values()) == 50
    assert outcomes["new"] and outcomes["old"] and outcomes["refused"], outcomes


def test_resume_from_a_mixed_pair_is_refused_in_one_line(work, capsys):
    # A run killed between the renames beside an older pair: new caffemodel, old solverstate.
    old = (work / "state.solverstate").read_bytes()
    net = work / "snap" / "s_iter_2.caffemodel"
    net.write_bytes(net.read_bytes() + b"\x00")  # another caffemodel under the name it gives
    from caffecompat.cli import main

    assert main(["train", "-solver", "solver.prototxt", "-snapshot", "state.solverstate"]) == 1
    line = _one_error(capsys)
    assert "state.solverstate and its learned_net snap/s_iter_2.caffemodel are not one snapshot" in line
    assert (work / "state.solverstate").read_bytes() == old


def test_a_missing_learned_net_says_where_it_looked_and_falls_back_beside_the_solverstate(work, capsys):
    from caffecompat.cli import main

    moved = work / "moved"
    moved.mkdir()
    (work / "state.solverstate").rename(moved / "state.solverstate")
    (work / "snap" / "s_iter_2.caffemodel").rename(work / "lost.caffemodel")
    assert main(["train", "-solver", "solver.prototxt", "-snapshot", "moved/state.solverstate"]) == 1
    line = _one_error(capsys)
    assert ("the solverstate moved/state.solverstate names learned_net 'snap/s_iter_2.caffemodel', which does "
            "not exist (relative paths are taken from the working directory") in line
    assert "also tried moved/s_iter_2.caffemodel" in line
    (work / "lost.caffemodel").rename(moved / "s_iter_2.caffemodel")
    assert main(["train", "-solver", "solver.prototxt", "-snapshot", "moved/state.solverstate",
                 "-iterations", "3"]) == 0
    assert "using moved/s_iter_2.caffemodel, beside the solverstate" in capsys.readouterr().err
    assert (work / "snap" / "s_iter_3.solverstate").exists()


def test_a_second_train_on_one_snapshot_prefix_is_refused(work, capsys):
    from caffecompat.cli import main

    text = (work / "solver.prototxt").read_text()
    (work / "long.prototxt").write_text(re.sub(r"max_iter: \d+", "max_iter: 100000", text))
    first = subprocess.Popen([sys.executable, "-m", "caffecompat.cli", "train", "-solver", "long.prototxt"],
                             cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = work / "snap" / ".s.caffecompat-lock"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (lock.exists() and lock.read_text().strip()):
            time.sleep(0.05)
        assert lock.exists(), "the first run never took its lock"
        assert main(["train", "-solver", "solver.prototxt"]) == 1
        line = _one_error(capsys)
        assert f"snapshot_prefix 'snap/s' is in use by another training run (pid {first.pid} on host " in line
        assert "give this run another snapshot_prefix" in line
    finally:
        first.kill()
        first.wait()
    # Its holder dead, the lock is free again: the kernel dropped it.
    assert main(["train", "-solver", "solver.prototxt"]) == 0
    assert not lock.exists()


# --- HDF5Data: no reading outside the listed files --------------------------------------------------

def _h5_source(folder: Path, name: str, top: str = "data"):
    from caffecompat.data import make_source
    from caffecompat.proto import caffe_pb2

    (folder / "list.txt").write_text(f"{folder / name}\n")
    lp = caffe_pb2.LayerParameter(name="h5", type="HDF5Data", top=[top])
    lp.hdf5_data_param.source = str(folder / "list.txt")
    lp.hdf5_data_param.batch_size = 2
    return lambda: make_source(lp, caffe_pb2.TRAIN, np.random.default_rng(0))


def _hostile_h5(folder: Path, kind: str) -> None:
    import h5py

    secret = folder / "secret.bin"
    secret.write_bytes(np.arange(8, dtype=np.float32).tobytes())
    with h5py.File(folder / "other.h5", "w") as f:
        f["x"] = np.ones((4, 2), np.float32)
    with h5py.File(folder / "in.h5", "w") as f:
        if kind == "external link":
            f["data"] = h5py.ExternalLink(str(folder / "other.h5"), "/x")
        elif kind == "soft link":
            f["real"] = np.ones((4, 2), np.float32)
            f["data"] = h5py.SoftLink("/real")
        elif kind == "link in a group path":
            f["g"] = h5py.ExternalLink(str(folder / "other.h5"), "/")
        elif kind == "external storage":
            f.create_dataset("data", shape=(4, 2), dtype=np.float32, external=[(str(secret), 0, 32)])
        elif kind == "virtual":
            layout = h5py.VirtualLayout(shape=(4, 2), dtype=np.float32)
            layout[:] = h5py.VirtualSource(str(folder / "other.h5"), "x", shape=(4, 2))
            f.create_virtual_dataset("data", layout)
        elif kind == "soft link loop":
            f["data"] = h5py.SoftLink("/loop")
            f["loop"] = h5py.SoftLink("/data")
        elif kind == "external link loop":
            f["data"] = h5py.ExternalLink(str(folder / "in.h5"), "/data")


@pytest.mark.parametrize("kind", ["external link", "soft link", "link in a group path", "external storage",
                                  "virtual", "soft link loop", "external link loop"])
def test_hdf5_links_and_external_storage_are_refused(tmp_path, monkeypatch, kind):
    from caffecompat.data import hdf5_data
    from caffecompat.errors import CaffeCompatError

    monkeypatch.delenv(hdf5_data.ALLOW_LINKS_ENV, raising=False)
    _hostile_h5(tmp_path, kind)
    # (a top g/x names the dataset x of group g, here reached through the link)
    source = _h5_source(tmp_path, "in.h5", "g/x" if kind == "link in a group path" else "data")
    with pytest.raises(CaffeCompatError) as e:
        source()
    assert "\n" not in str(e.value)
    assert "which could read any file" in str(e.value) and hdf5_data.ALLOW_LINKS_ENV in str(e.value)


@pytest.mark.parametrize("kind, rows", [("external link", 1.0), ("soft link", 1.0), ("external storage", None),
                                        ("soft link loop", "loop"), ("external link loop", "loop")])
def test_hdf5_links_when_allowed_are_followed_or_one_line(tmp_path, monkeypatch, kind, rows):
    from caffecompat.data import hdf5_data
    from caffecompat.errors import CaffeCompatError

    monkeypatch.setenv(hdf5_data.ALLOW_LINKS_ENV, "1")
    _hostile_h5(tmp_path, kind)
    source = _h5_source(tmp_path, "in.h5")
    if rows == "loop":
        with pytest.raises(CaffeCompatError) as e:
            source()
        assert "\n" not in str(e.value) and "in.h5" in str(e.value)
        return
    batch = source().next_batch()[0]
    if rows is None:  # the external raw file's floats, as Caffe would read them
        np.testing.assert_array_equal(batch, np.arange(4, dtype=np.float32).reshape(2, 2))
    else:
        assert (batch == rows).all()


def test_a_failed_rename_in_a_group_puts_the_old_files_back(tmp_path, monkeypatch):
    a, b, c = tmp_path / "a.caffemodel", tmp_path / "b.solverstate", tmp_path / "c.new"
    a.write_bytes(b"old a")
    b.write_bytes(b"old b")
    real = os.replace

    def fails_on_b(src, dst, *args, **kw):
        if str(dst) == str(b):
            raise OSError(28, "No space left on device")
        return real(src, dst, *args, **kw)

    monkeypatch.setattr(os, "replace", fails_on_b)
    from caffecompat.errors import CaffeCompatError

    with pytest.raises(CaffeCompatError, match="b.solverstate: cannot write the snapshot: no space left"):
        outfiles.write_atomic_group([(a, b"new a"), (c, b"new c"), (b, b"new b")], "snapshot")
    monkeypatch.setattr(os, "replace", real)
    assert a.read_bytes() == b"old a" and b.read_bytes() == b"old b" and not c.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.caffemodel", "b.solverstate"]
    outfiles.write_atomic_group([(a, b"new a"), (c, b"new c"), (b, b"new b")], "snapshot")
    assert (a.read_bytes(), b.read_bytes(), c.read_bytes()) == (b"new a", b"new b", b"new c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.caffemodel", "b.solverstate", "c.new"]


def test_replacing_a_database_folder_is_one_step(tmp_path, monkeypatch):
    # A kill can come between any two steps: with one step, the target always holds a whole database.
    target = tmp_path / "db"
    target.mkdir()
    (target / "data.mdb").write_bytes(b"old")
    new = outfiles.make_temp_dir(target, "database")
    (new / "data.mdb").write_bytes(b"new")
    renames: list[tuple] = []
    real = os.rename
    monkeypatch.setattr(os, "rename", lambda *a, **k: (renames.append(a), real(*a, **k))[1])
    outfiles.install_folder(new, target)
    assert (target / "data.mdb").read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["db"]
    if sys.platform.startswith("linux"):
        assert renames == []  # swapped by renameat2, not renamed aside then in


SWEEPER = r"""
import sys, time
from caffecompat import glog, outfiles
glog.set_stream(None)
end = time.monotonic() + float(sys.argv[2])
n = 0
while time.monotonic() < end:
    n += len(outfiles.sweep_stale(sys.argv[1], once=False))
print(n)
"""


@pytest.mark.skipif(os.name == "nt", reason="no flock on Windows: the sweep is off there")
def test_writes_beside_a_sweep_running_in_a_loop_all_land(tmp_path):
    # A sweep may open a new temporary between its creation and its lock: the writer must notice, not lose it.
    sweeper = subprocess.Popen([sys.executable, "-c", SWEEPER, str(tmp_path), "2"], stdout=subprocess.PIPE,
                               text=True)
    try:
        time.sleep(0.5)
        for i in range(100):
            outfiles.write_atomic_group([(tmp_path / f"m{i}.caffemodel", b"m" * 100),
                                         (tmp_path / f"m{i}.solverstate", str(i).encode())])
            outfiles.write_atomic(tmp_path / "same.bin", str(i).encode())
    finally:
        removed = sweeper.communicate(timeout=60)[0].strip()
    assert removed == "0"  # nothing of a live writer was taken
    assert (tmp_path / "same.bin").read_bytes() == b"99"
    assert all((tmp_path / f"m{i}.solverstate").read_bytes() == str(i).encode() for i in range(100))
    assert [p.name for p in tmp_path.iterdir() if outfiles.is_temp_name(p.name)] == []


def test_the_sweep_removes_old_empty_births_only(tmp_path):
    tail = f"{outfiles.BIRTH_MARK}123-{_host()}-0a0b"
    old_empty, young_empty, old_full = (tmp_path / f".{n}{tail}" for n in ("a", "b", "c"))
    old_empty.touch()
    young_empty.touch()
    old_full.write_bytes(b"data")
    for p in (old_empty, old_full):
        os.utime(p, (time.time() - 3600, time.time() - 3600))
    outfiles.sweep_stale(tmp_path, once=False)
    assert not old_empty.exists() and young_empty.exists() and old_full.exists()
