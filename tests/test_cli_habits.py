"""Caffe's command-line habits: gflags syntax, glog's settings and log files, tool names,
device_query, test -phase, and progress bars that stay off logs."""

from __future__ import annotations

import ctypes
import io
import os
import re
import socket
from pathlib import Path

import lmdb
import pytest

from caffecompat import glog
from caffecompat.cli import ALIASES, main, parse_args
from caffecompat.commands import device_query
from caffecompat.errors import CaffeCompatError
from caffecompat.progress import Progress
from caffecompat.proto import caffe_pb2

REPO = Path(__file__).resolve().parent.parent


def _list(golden: Path, tmp_path: Path, n: int = 3, missing: bool = False) -> Path:
    lines = (golden / "images" / "val.txt").read_text().splitlines()[:n]
    if missing:
        lines.append("no_such_image.png 0")
    path = tmp_path / "list.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _first_datum(db: Path) -> caffe_pb2.Datum:
    env = lmdb.open(str(db), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            _, value = next(iter(txn.cursor()))
            return caffe_pb2.Datum.FromString(value)
    finally:
        env.close()


def test_gflags_boolean_and_value_forms(golden, tmp_path):
    listing = _list(golden, tmp_path)
    root = f"{golden / 'images'}/"
    runs = {
        "gray_eq_true": (["convert_imageset", "-gray=true", "-resize_height=8", "--resize_width", "9"], 1),
        "gray_then_nogray": (["convert-lmdb", "-gray", "-nogray", "-resize_height", "8", "--resize_width=9"], 3),
        "gray_eq_false_then_gray": (["convert-lmdb", "--gray=false", "--gray", "-resize_height=8",
                                     "-resize_width=9"], 1),
        "gray_eq_0": (["convert-lmdb", "-gray=0", "-shuffle=yes", "-resize_height=8", "-resize_width=9"], 3),
    }
    for name, (argv, channels) in runs.items():
        db = tmp_path / name
        assert main([*argv, root, str(listing), str(db)]) == 0, name
        datum = _first_datum(db)
        assert (datum.channels, datum.height, datum.width) == (channels, 8, 9), name


def test_gflags_errors_are_one_line(golden, tmp_path, capsys):
    assert main(["convert-lmdb", "-gray=maybe", "a/", "b", str(tmp_path / "db")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("caffecompat convert-lmdb: error: -gray=maybe: -gray is a boolean flag; give -gray=true or "
                   "-gray=false (or -gray alone)")
    # A boolean takes no separate value (as in gflags): `-gray true` leaves `true` a positional argument.
    with pytest.raises(SystemExit):
        parse_args(["convert-lmdb", "-gray", "true", "a/", "b", "db"])


def test_caffe_tool_names_resolve_to_subcommands():
    assert parse_args(["compute_image_mean", "db"]).command == "compute-mean"
    args = parse_args(["upgrade_net_proto_binary", "in", "out"])
    assert (args.command, args.binary, args.program) == ("upgrade", True, "upgrade_net_proto_binary")
    assert parse_args(["upgrade_solver_proto_text", "in", "out"]).solver
    assert parse_args(["upgrade_net_proto_text", "in", "out"]).text
    assert parse_args(["device-query"]).command == "device_query"
    assert parse_args(["parse_log", "log", "out"]).command == "parse-log"
    # Log files are named after the Caffe tool a subcommand imitates.
    assert parse_args(["train", "-solver", "s"]).program == "caffe"
    assert parse_args(["convert-lmdb", "a/", "b", "c"]).program == "convert_imageset"
    assert ALIASES["extract_features"] == ["extract-features"]
    from caffecompat.cli import _subparser, build_parser

    if _subparser(build_parser(), "extract-features") is not None:
        args = parse_args(["extract_features", "w.caffemodel", "m.prototxt", "fc7", "out", "2", "lmdb"])
        assert (args.command, args.program) == ("extract-features", "extract_features")


def test_console_scripts_name_caffe_tools():
    tomllib = pytest.importorskip("tomllib")
    import caffecompat.cli as cli

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for name in ("convert_imageset", "compute_image_mean", "upgrade_net_proto_text", "upgrade_net_proto_binary",
                 "upgrade_solver_proto_text", "extract_features"):
        assert scripts[name] == f"caffecompat.cli:{name}"
        assert callable(getattr(cli, name)) and name in ALIASES


def _severities(text: str) -> set[str]:
    return {line[0] for line in text.splitlines() if re.match(r"^[IWEF]\d{4} ", line)}


def test_glog_minloglevel_from_environment_and_flag(golden, tmp_path, monkeypatch, capsys):
    listing = _list(golden, tmp_path, missing=True)
    argv = ["convert-lmdb", f"{golden / 'images'}/", str(listing), str(tmp_path / "db"), "-overwrite"]
    monkeypatch.setenv("GLOG_minloglevel", "2")
    assert main(argv) == 0
    assert _severities(capsys.readouterr().err) == {"E"}  # the unreadable image; no INFO, no WARNING
    assert main([*argv, "-minloglevel=1"]) == 0  # the flag wins over the environment
    assert _severities(capsys.readouterr().err) == {"W", "E"}
    monkeypatch.setenv("GLOG_minloglevel", "x")
    assert main(argv) == 1
    assert "GLOG_minloglevel=x: expected a severity level" in capsys.readouterr().err


def test_log_dir_writes_glog_named_files(golden, tmp_path, monkeypatch, capsys):
    listing = _list(golden, tmp_path, missing=True)
    logs = tmp_path / "logs"
    logs.mkdir()
    monkeypatch.setenv("USER", "tester")
    argv = ["convert_imageset", f"{golden / 'images'}/", str(listing), str(tmp_path / "db"), "-log_dir", str(logs)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    host = socket.gethostname()
    pattern = re.compile(rf"^convert_imageset\.{re.escape(host)}\.tester\.log\.(INFO|WARNING|ERROR)\."
                         rf"\d{{8}}-\d{{6}}\.{os.getpid()}$")
    files = {m[1]: logs / p.name for p in logs.iterdir() if (m := pattern.match(p.name))}
    assert set(files) == {"INFO", "WARNING", "ERROR"}
    for severity, path in files.items():
        link = logs / f"convert_imageset.{severity}"
        assert link.is_symlink() and os.readlink(link) == path.name
        head = path.read_text().splitlines()
        assert re.fullmatch(r"Log file created at: \d{4}/\d\d/\d\d \d\d:\d\d:\d\d", head[0])
        assert head[1] == f"Running on machine: {host}"
        assert head[2] == "Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg"
    # INFO holds every line stderr got; WARNING the W and E lines; ERROR the E lines.
    info = files["INFO"].read_text().splitlines()[3:]
    assert info == [line for line in err.splitlines() if re.match(r"^[IWEF]\d{4} ", line)]
    assert _severities(files["WARNING"].read_text()) == {"W", "E"}
    assert _severities(files["ERROR"].read_text()) == {"E"}


def test_glog_environment_log_dir_and_logtostderr(golden, tmp_path, monkeypatch, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    argv = ["compute-mean", str(golden / "lmdb" / "val_32")]
    monkeypatch.setenv("GLOG_log_dir", str(logs))
    monkeypatch.setenv("GLOG_logtostderr", "1")
    assert main(argv) == 0
    assert list(logs.iterdir()) == []
    monkeypatch.setenv("GLOG_logtostderr", "false")
    assert main(argv) == 0
    assert sorted(p.name for p in logs.iterdir() if p.is_symlink()) == ["compute_image_mean.INFO"]
    assert "mean_value channel [2]" in (logs / "compute_image_mean.INFO").read_text()
    capsys.readouterr()
    assert main([*argv, "-log_dir", str(tmp_path / "absent")]) == 1
    assert "no such folder" in capsys.readouterr().err


def test_test_phase_flag(golden, monkeypatch, capsys):
    monkeypatch.chdir(golden)
    base = ["test", "-model", "train/net.prototxt", "-weights", "train/out/sgd_step_iter_24.caffemodel",
            "-iterations=1"]
    assert main([*base, "-phase", "TRAIN"]) == 0
    err = capsys.readouterr().err
    # The TRAIN net: its data layer reads lmdb/train_32 (batch 16) and it has no Accuracy layers.
    assert "The NetState phase (0) differed from the phase (1) specified by a rule in layer data" in err
    assert "Top shape: 16 3 32 32 (49152)" in err
    assert re.findall(r"caffe\.cpp:\d+\] Batch 0, (\S+) =", err) == ["loss"]
    assert main([*base, "-phase=TEST"]) == 0
    assert re.findall(r"caffe\.cpp:\d+\] Batch 0, (\S+) =", capsys.readouterr().err) == [
        "accuracy", "accuracy_top3", "loss"]


class _FakeDriver:
    """The CUDA driver API entry points device_query calls, answering for one made-up device."""

    ATTRS = {1: 1024, 2: 1024, 3: 1024, 4: 64, 5: 2147483647, 6: 65535, 7: 65535, 8: 49152, 9: 65536, 10: 32,
             11: 2147483647, 12: 65536, 13: 1980000, 14: 512, 15: 1, 16: 132, 17: 0, 75: 9, 76: 0}

    def cuInit(self, flags):  # noqa: N802 - the driver's names
        return 0

    def cuDeviceGetCount(self, n):  # noqa: N802
        n._obj.value = 1
        return 0

    def cuDeviceGet(self, dev, ordinal):  # noqa: N802
        dev._obj.value = ordinal
        return 0

    def cuDeviceGetName(self, buf, size, dev):  # noqa: N802
        ctypes.memmove(buf, b"Fake GPU\0", 9)
        return 0

    def cuDeviceTotalMem_v2(self, size, dev):  # noqa: N802
        size._obj.value = 150 * 2**30
        return 0

    def cuDeviceGetAttribute(self, value, attr, dev):  # noqa: N802
        value._obj.value = self.ATTRS[attr]
        return 0


def test_device_query_logs_caffes_lines(monkeypatch, capsys):
    monkeypatch.setattr(device_query, "load_driver", lambda: device_query.Driver(_FakeDriver()))
    assert main(["device_query", "-gpu", "0"]) == 0
    lines = [line.split("] ", 1)[1] for line in capsys.readouterr().err.splitlines()]
    assert lines[:6] == ["Querying GPUs 0", "Device id:                     0", "Major revision number:         9",
                         "Minor revision number:         0", "Name:                          Fake GPU",
                         f"Total global memory:           {150 * 2**30}"]
    assert "Maximum dimension of block:    1024, 1024, 64" in lines
    assert "Concurrent copy and execution: Yes" in lines and "Kernel execution timeout:      No" in lines
    assert any(line.startswith("ONNX Runtime ") for line in lines)
    assert main(["device_query", "-gpu", "1"]) == 1
    assert "no CUDA device 1; this machine has 1" in capsys.readouterr().err


def test_device_query_without_devices(monkeypatch, capsys):
    assert main(["device_query"]) == 0  # caffe device_query without -gpu queries nothing
    assert "execution providers: " in capsys.readouterr().err
    monkeypatch.setattr(device_query, "load_driver", lambda: None)
    assert main(["device_query", "-gpu=all"]) == 1
    assert "no NVIDIA driver found" in capsys.readouterr().err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal():
    pipe = io.StringIO()
    glog.set_stream(pipe)
    try:
        bar = Progress("convert", 20, unit="images", stream=pipe, where="convert_imageset.cpp:1")
        for _ in range(20):
            bar.update()
        bar.close()
    finally:
        glog.set_stream(None)
    lines = pipe.getvalue().splitlines()
    # Off a terminal: glog lines only (here one, the work being quicker than a line per 5 s).
    assert len(lines) == 1 and re.match(r"^I\d{4} .* convert_imageset\.cpp:1\] convert \[#{30}\] 20/20 ", lines[0])

    tty = _Terminal()
    glog.set_stream(tty)
    try:
        bar = Progress("convert", 4, unit="images", stream=tty)
        bar.update()
        glog.info("x.cpp:1", "a log line")
        bar.update(3)
        bar.close()
    finally:
        glog.set_stream(None)
    text = tty.getvalue()
    # The bar is erased before the log line and drawn again after it; the log line stands on its own line.
    before, line, after = re.split(r"(I\d{4} [^\n]* x\.cpp:1\] a log line\n)", text)
    assert before.startswith("\rconvert [") and before.endswith("\r\033[K")
    assert after.startswith("\rconvert [#######") and "] 4/4 " in after.splitlines()[-1]
    assert text.endswith("\n") and glog._terminal_bar is None


def test_glog_configure_reads_gflags_booleans():
    glog.configure(environ={"GLOG_logtostderr": "yes", "GLOG_minloglevel": "1"})
    try:
        assert glog._logtostderr is True and glog._minloglevel == 1
    finally:
        glog.shutdown()
    assert glog._minloglevel == 0 and glog._logtostderr is False
    with pytest.raises(CaffeCompatError, match="GLOG_logtostderr=maybe"):
        glog.configure(environ={"GLOG_logtostderr": "maybe"})
