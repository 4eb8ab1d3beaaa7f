"""Faults a user meets: damaged or truncated inputs, full and read-only disks, signals, kill -9, huge nets.

Each ends as one line naming the file and what to do (exit status 1), never a
traceback, a signal death or lost work. Full-disk tests mount a small tmpfs
and run only as root (skipped otherwise); read-only outputs are a read-only
tmpfs as root and a folder without write permission otherwise.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from caffecompat import outfiles
from caffecompat.cli import main
from caffecompat.data import lmdb_reader
from caffecompat.errors import CaffeCompatError
from caffecompat.net import fillers
from caffecompat.proto import caffe_pb2
from caffecompat.solver import signals
from tests import fuzz

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# --- fixtures -------------------------------------------------------------------


class Disk:
    """A folder on its own file system: a tmpfs of `size` bytes as root, else a plain folder."""

    def __init__(self, path: Path, size: int | None = None) -> None:
        self.path = path
        path.mkdir()
        self.mounted = False
        if IS_ROOT:
            opts = f"size={size}" if size else "size=16m"
            self.mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                                          capture_output=True).returncode == 0
        if size and not self.mounted:
            pytest.skip("a full disk needs a small tmpfs, which needs root")

    def readonly(self) -> None:
        """Make the folder unwritable: remount read-only (root), or remove write permission."""
        if self.mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)
        elif IS_ROOT:
            pytest.skip("read-only outputs as root need tmpfs")
        else:
            self.path.chmod(0o555)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False)
        elif self.path.exists():
            self.path.chmod(0o755)


@pytest.fixture
def disk(work):
    """Disk(name, size) inside the working directory, unmounted at the end."""
    made: list[Disk] = []

    def make(name: str = "disk", size: int | None = None) -> Disk:
        d = Disk(work / name, size)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def _temps(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if outfiles.is_temp_name(p.name)]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _cli(*args: str, cwd: Path, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "caffecompat.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kw)


def _big_lmdb(path: Path, records: int = 30) -> None:
    """An LMDB whose records (3 x 32 x 32) take overflow pages, so a cut loses data pages."""
    from caffecompat.data import datum
    from caffecompat.data.lmdb_writer import LmdbWriter

    writer = LmdbWriter(str(path))
    rng = np.random.default_rng(1)
    for i in range(records):
        img = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        writer.put(f"{i:08d}".encode(), datum.from_image(img, i % 4).SerializeToString())
    writer.finish()


# --- truncated and damaged databases -----------------------------------------------------


def test_truncated_lmdb_is_an_error_not_sigbus(work, capsys):
    _big_lmdb(work / "full")
    (work / "trunc").mkdir()
    data = (work / "full" / "data.mdb").read_bytes()
    (work / "trunc" / "data.mdb").write_bytes(data[: len(data) // 2])
    (work / "trunc.prototxt").write_text((work / "net.prototxt").read_text().replace('source: "db"',
                                                                                     'source: "trunc"'))
    # A child process: without the header check, reading past the end is a SIGBUS that would kill pytest.
    done = _cli("test", "-model", "trunc.prototxt", "-weights", "weights.caffemodel", cwd=work)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if ": error: " in x]
    assert "trunc" in line and "data.mdb is truncated" in line and f"{len(data) // 2} bytes" in line
    assert "copy the database again" in line
    # compute-mean blames the file, not its records.
    assert main(["compute-mean", "trunc", "m.binaryproto"]) == 1
    line = _error_line(capsys)
    assert line.startswith("caffecompat compute-mean: error: trunc: data.mdb is truncated")
    assert not (work / "m.binaryproto").exists()


@pytest.mark.parametrize("content, message", [
    (b"", "does not start with LMDB's header"),
    (b"x" * 10000, "does not start with LMDB's header"),
    ("first-page", "shorter than LMDB's two header pages"),
])
def test_damaged_lmdb_header(work, content, message):
    _big_lmdb(work / "full")
    (work / "bad").mkdir()
    if content == "first-page":
        content = (work / "full" / "data.mdb").read_bytes()[:4096]
    (work / "bad" / "data.mdb").write_bytes(content)
    with pytest.raises(CaffeCompatError, match=re.escape(message)):
        lmdb_reader.open_env(str(work / "bad"), "")
    lmdb_reader.check_data_file(str(work / "full"), "")  # the whole database passes


def test_compute_mean_checks_before_the_pass(work, capsys):
    # A missing database: one error, no "Opened lmdb" or "Starting iteration" first, "compute-mean:" once.
    assert main(["compute-mean", "missing", "m.binaryproto"]) == 1
    err = capsys.readouterr().err
    assert "Opened lmdb" not in err and "Starting iteration" not in err
    (line,) = [x for x in err.splitlines() if ": error: " in x]
    assert line == "caffecompat compute-mean: error: no such LMDB database: missing"
    (work / "notdb").mkdir()
    assert main(["compute-mean", "notdb", "m.binaryproto"]) == 1
    assert "notdb is not an LMDB database (no data.mdb in it)" in _error_line(capsys)
    # An output folder that does not exist is found before the pass over the records.
    assert main(["compute-mean", "db", "nowhere/m.binaryproto"]) == 1
    err = capsys.readouterr().err
    assert "Starting iteration" not in err and "Processed" not in err
    assert "nowhere/m.binaryproto: cannot write the mean file: folder nowhere does not exist" in err


# --- read-only and full disks --------------------------------------------------------


def _old_outputs(folder: Path, work: Path) -> dict[str, bytes]:
    shutil.copy(work / "mean.binaryproto", folder / "mean.binaryproto")
    (folder / "model.onnx").write_bytes(b"old model")
    (folder / "up.prototxt").write_bytes(b"old upgrade")
    shutil.copytree(work / "db", folder / "db")
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _commands(folder: str) -> list[list[str]]:
    images = _images()
    return [
        ["compute-mean", "db", f"{folder}/mean.binaryproto"],
        ["convert", "deploy.prototxt", "weights.caffemodel", f"{folder}/model.onnx"],
        ["upgrade", "net.prototxt", f"{folder}/up.prototxt"],
        ["convert-lmdb", "-overwrite", f"{images}/", f"{images}/list.txt", f"{folder}/db"],
    ]


def _images() -> str:
    """images/ in the working directory: 40 small PNGs and their list file."""
    import cv2

    folder = Path("images")
    if not (folder / "list.txt").exists():
        folder.mkdir(exist_ok=True)
        rng = np.random.default_rng(2)
        lines = []
        for i in range(40):
            cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
            lines.append(f"{i}.png {i % 4}")
        (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return str(folder)


def test_read_only_outputs_are_one_line_and_keep_old_files(work, disk, capsys):
    d = disk("out")
    old = _old_outputs(d.path, work)
    old_db = (d.path / "db" / "data.mdb").read_bytes()
    d.readonly()
    for argv in _commands(str(d.path)):
        assert main(argv) == 1, argv
        line = _error_line(capsys)
        assert "out" in line and ("read-only file system" in line or "permission denied" in line), line
    assert {p.name: p.read_bytes() for p in d.path.iterdir() if p.is_file()} == old
    assert (d.path / "db" / "data.mdb").read_bytes() == old_db
    assert _temps(d.path) == []


def test_read_only_snapshot_prefix_is_refused_before_training(work, disk, capsys):
    d = disk("snaps")
    d.readonly()
    (work / "ro_solver.prototxt").write_text(fuzz.SOLVER.replace('"snap/s"', '"snaps/s"'))
    assert main(["train", "-solver", "ro_solver.prototxt"]) == 1
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if ": error: " in x]
    assert line.startswith("caffecompat train: error: ro_solver.prototxt: cannot write snapshots to prefix "
                           "'snaps/s': ")
    # Checked before the solver is logged and before any net is built (as Caffe's CheckSnapshotWritePermissions).
    assert "Initializing solver" not in err and "Opened lmdb" not in err


def test_full_disk_outputs_are_one_line_and_keep_old_files(work, disk, capsys):
    d = disk("full", size=256 << 10)
    old = _old_outputs(d.path, work)
    old_db = (d.path / "db" / "data.mdb").read_bytes()
    # Fill the rest of the disk.
    # Unbuffered, so the write that fails raises here and closing the file has nothing left to flush.
    with open(d.path / "filler", "wb", buffering=0) as f, pytest.raises(OSError):
        while True:
            f.write(b"\0" * 4096)
    for argv in _commands(str(d.path)):
        if argv[0] == "convert-lmdb":
            # In a child: LMDB writing through a mapping on a full disk would be a SIGBUS.
            done = _cli(*argv, cwd=work)
            assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
            (line,) = [x for x in done.stderr.splitlines() if ": error: " in x]
        else:
            assert main(argv) == 1, argv
            line = _error_line(capsys)
        assert "full" in line and "no space left on the device" in line, line
    assert {p.name: p.read_bytes() for p in d.path.iterdir() if p.is_file() and "filler" not in p.name} == old
    assert (d.path / "db" / "data.mdb").read_bytes() == old_db
    assert _temps(d.path) == []


SNAP_SOLVER = """net: "{net}"
base_lr: 0.01
momentum: 0.9
lr_policy: "fixed"
display: 1
max_iter: 4
snapshot: 1
snapshot_prefix: "{prefix}"
random_seed: 1
"""


def _wide_net(work: Path, outputs: int) -> str:
    """net.prototxt with `outputs` hidden units (params ~ 108 x outputs floats), TRAIN data only."""
    text = (work / "net.prototxt").read_text().replace("num_output: 8", f"num_output: {outputs}")
    (work / "wide.prototxt").write_text(text)
    return "wide.prototxt"


def test_snapshot_on_full_disk_keeps_the_last_good_one_and_stops(work, disk, capsys):
    # Each snapshot (caffemodel + solverstate with momentum) takes ~880 KB: the first fits, the second does not.
    d = disk("snapdisk", size=1300 << 10)
    net = _wide_net(work, 1000)
    (work / "full_solver.prototxt").write_text(SNAP_SOLVER.format(net=net, prefix="snapdisk/s"))
    assert main(["train", "-solver", "full_solver.prototxt"]) == 1
    line = _error_line(capsys)
    assert "snapdisk/s_iter_2" in line and "no space left on the device" in line
    assert "the last complete snapshot is snapdisk/s_iter_1.solverstate: resume with -snapshot " \
           "snapdisk/s_iter_1.solverstate" in line
    assert sorted(p.name for p in d.path.iterdir()) == ["s_iter_1.caffemodel", "s_iter_1.solverstate"]
    # The kept snapshot resumes (snapshots now go to a disk with room).
    (work / "resume_solver.prototxt").write_text(SNAP_SOLVER.format(net=net, prefix="snap/r"))
    assert main(["train", "-solver", "resume_solver.prototxt", "-snapshot", "snapdisk/s_iter_1.solverstate",
                 "-iterations", "2"]) == 0
    assert (work / "snap" / "r_iter_2.solverstate").exists()


# --- kill -9 and stale temporary files ------------------------------------------


def test_kill_during_snapshot_then_resume(work):
    net = _wide_net(work, 40000)  # 4.3 M parameters: each snapshot file is ~17 MB
    (work / "kill_solver.prototxt").write_text(SNAP_SOLVER.format(net=net, prefix="snap/k").replace(
        "max_iter: 4", "max_iter: 100000"))
    snap = work / "snap"
    left: list[str] = []
    for _attempt in range(5):
        proc = subprocess.Popen([sys.executable, "-m", "caffecompat.cli", "train", "-solver", "kill_solver.prototxt"],
                                cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                if _temps(snap) and any(snap.glob("k_iter_*.solverstate")):
                    proc.kill()  # SIGKILL, in the middle of writing a snapshot
                    break
                time.sleep(0.001)
        finally:
            proc.kill()
            proc.wait()
        left = _temps(snap)
        if left:
            break
    assert left, "no kill landed inside a snapshot write in 5 attempts"
    assert all(f".caffecompat-tmp-{proc.pid}-" in name for name in left)
    states = sorted(snap.glob("k_iter_*.solverstate"), key=lambda p: int(re.search(r"_(\d+)\.", p.name)[1]))
    newest = states[-1]
    n = int(re.search(r"_(\d+)\.", newest.name)[1])
    assert (snap / f"k_iter_{n}.caffemodel").exists()
    done = _cli("train", "-solver", "kill_solver.prototxt", "-snapshot", str(newest.relative_to(work)),
                "-iterations", str(n + 1), cwd=work)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in left:
        assert f"Removed snap/{name}, a temporary file left by caffecompat process {proc.pid}" in done.stderr
    assert _temps(snap) == []
    assert (snap / f"k_iter_{n + 1}.solverstate").exists()


def test_stale_temporaries_of_dead_processes_only_are_removed(tmp_path, capsys):
    from caffecompat import glog

    dead = _dead_pid()
    host = outfiles.temp_path(tmp_path / "x").name.split("-")[-2]
    stale = tmp_path / f".m.binaryproto.caffecompat-tmp-{dead}-{host}-0a1b"
    stale_db = tmp_path / f".db.caffecompat-tmp-{dead}-{host}-0a1c"
    # A live writer whose pid means nothing here (another PID namespace): its lock keeps its file.
    live = tmp_path / f".m.binaryproto.caffecompat-tmp-{dead}-{host}-0a1d"
    other_host = tmp_path / f".m.binaryproto.caffecompat-tmp-{dead}-00000000-0a1e"
    unrelated = tmp_path / ".m.binaryproto.abc.tmp"
    for p in (stale, live, other_host, unrelated):
        p.write_bytes(b"partial")
    import fcntl

    holder = os.open(live, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    stale_db.mkdir()
    (stale_db / "data.mdb").write_bytes(b"partial")
    glog.set_stream(None)
    outfiles.write_atomic(tmp_path / "m.binaryproto", b"new")
    err = capsys.readouterr().err
    assert f"Removed {stale}, a temporary file left by caffecompat process {dead}" in err
    assert f"Removed {stale_db}, a temporary folder left by caffecompat process {dead}" in err
    assert not stale.exists() and not stale_db.exists()
    assert live.exists() and other_host.exists() and unrelated.exists()
    assert (tmp_path / "m.binaryproto").read_bytes() == b"new"
    os.close(holder)


def test_convert_lmdb_removes_the_partial_database_of_a_killed_run(work, capsys):
    images = _images()
    dead = _dead_pid()
    host = outfiles.temp_path(work / "x").name.split("-")[-2]
    partial = work / f".newdb.caffecompat-tmp-{dead}-{host}-beef"
    partial.mkdir()
    (partial / "data.mdb").write_bytes(b"\0" * 8192)
    assert main(["convert-lmdb", f"{images}/", f"{images}/list.txt", "newdb"]) == 0
    assert f"Removed {partial.name}, a temporary folder left by caffecompat process {dead}" in capsys.readouterr().err
    assert not partial.exists() and (work / "newdb" / "data.mdb").exists()


# --- modes ---------------------------------------------------------------------


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_get_the_modes_the_umask_gives(work, umask, file_mode, dir_mode):
    images = _images()
    old = os.umask(umask)
    try:
        assert main(["compute-mean", "db", "m.binaryproto"]) == 0
        assert main(["convert", "deploy.prototxt", "weights.caffemodel", "m.onnx"]) == 0
        assert main(["upgrade", "net.prototxt", "up.prototxt"]) == 0
        assert main(["convert-lmdb", f"{images}/", f"{images}/list.txt", "db2"]) == 0
        assert main(["train", "-solver", "solver.prototxt", "-iterations", "2"]) == 0
    finally:
        os.umask(old)
    for name in ("m.binaryproto", "m.onnx", "up.prototxt", "db2/data.mdb", "snap/s_iter_2.caffemodel",
                 "snap/s_iter_2.solverstate"):
        assert stat.S_IMODE((work / name).stat().st_mode) == file_mode, name
    assert stat.S_IMODE((work / "db2").stat().st_mode) == dir_mode


# --- signals -------------------------------------------------------------------


def test_signal_handler_effects():
    before = signal.getsignal(signal.SIGINT)
    s = signals.Signals("stop", "none")
    s.install()
    try:
        os.kill(os.getpid(), signal.SIGHUP)  # none: ignored, and not the default (death)
        assert s.take() is None
        os.kill(os.getpid(), signal.SIGINT)  # stop: no KeyboardInterrupt, a pending stop
        with pytest.raises(signals.StartupStopped, match="Stop requested by SIGINT during start-up"):
            s.check_startup()
        s.set_effects("snapshot", "snapshot")
        os.kill(os.getpid(), signal.SIGHUP)
        s.check_startup()  # a snapshot request waits for the first iteration
        assert s.take() == "snapshot" and s.take() is None
    finally:
        s.restore()
    assert signal.getsignal(signal.SIGINT) is before


def test_stop_during_start_up_ends_cleanly_before_any_data_opens(work, capsys):
    # A SIGINT that arrived before the flags were even parsed (recorded by the CLI, acted on by `train`).
    signals._early.append(signal.SIGINT)
    try:
        assert main(["train", "-solver", "solver.prototxt"]) == 0
    finally:
        signals._early.clear()
    err = capsys.readouterr().err
    assert "Stop requested by SIGINT during start-up: stopping before the first iteration" in err
    assert "Opened lmdb" not in err and "Iteration 0" not in err
    assert list((work / "snap").glob("s_iter_*.solverstate")) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("effect, expected", [("none", 0), ("snapshot", 0)])
def test_sighup_while_nets_are_built_follows_its_effect(work, effect, expected):
    net = _wide_net(work, 100000)  # ~43 MB of fillers: start-up takes a moment
    (work / "hup_solver.prototxt").write_text(fuzz.SOLVER.replace("net.prototxt", net).replace("snapshot: 2",
                                                                                              "snapshot: 0"))
    proc = subprocess.Popen([sys.executable, "-m", "caffecompat.cli", "train", "-solver", "hup_solver.prototxt",
                             "-sighup_effect", effect, "-iterations", "2"], cwd=work, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "Creating training net" in line:
            proc.send_signal(signal.SIGHUP)
            break
    lines += proc.stderr.readlines()
    assert proc.wait(timeout=120) == expected, "".join(lines)[-3000:]
    log = "".join(lines)
    assert "Optimization Done." in log
    # snapshot: taken at the first chance (the test at iteration 0), besides the final one.
    snapshots = log.count("Snapshotting to binary proto file snap/s_iter_")
    assert snapshots == (2 if effect == "snapshot" else 1), log[-3000:]


# --- messages ------------------------------------------------------------------


def test_snapshot_flag_given_a_caffemodel(work, capsys):
    assert main(["train", "-solver", "solver.prototxt", "-snapshot", "weights.caffemodel"]) == 1
    line = _error_line(capsys)
    assert "weights.caffemodel: is a caffemodel (trained weights), not a .solverstate" in line
    assert "use -weights weights.caffemodel" in line


def test_weights_flag_given_a_solverstate(work, capsys):
    assert main(["test", "-model", "net.prototxt", "-weights", "state.solverstate", "-iterations", "1"]) == 1
    line = _error_line(capsys)
    assert "state.solverstate: is a solver snapshot (.solverstate), not a caffemodel" in line and "-snapshot" in line


def test_unknown_layer_type_in_a_solver_net_is_reported_before_data_opens(work, capsys):
    text = (work / "net.prototxt").read_text().replace('type: "ReLU"', 'type: "RelU"')
    (work / "net.prototxt").write_text(text)
    assert main(["train", "-solver", "solver.prototxt"]) == 1
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if ": error: " in x]
    assert line == ("caffecompat train: error: net.prototxt: layer 'relu1' has unknown type 'RelU': "
                    "did you mean ReLU?")
    assert "Opened lmdb" not in err


def test_solver_naming_a_missing_net_file(work, tmp_path, capsys):
    (work / "sub").mkdir()
    shutil.copy(work / "net.prototxt", work / "sub" / "net.prototxt")
    (work / "sub" / "solver.prototxt").write_text(fuzz.SOLVER)
    (work / "net.prototxt").unlink()
    assert main(["train", "-solver", "sub/solver.prototxt"]) == 1
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if ": error: " in x]
    assert line.startswith('caffecompat train: error: sub/solver.prototxt: net: "net.prototxt": no such net prototxt '
                           f"in the working directory {work}")
    assert "it exists beside the solver as sub/net.prototxt" in line
    assert "Initializing solver" not in err  # the solver is not printed before the error


# --- fillers and memory ----------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ('type: "gaussian" std: -1', "gaussian filler std is -1; it must be greater than 0"),
    ('type: "gaussian" std: 0', "gaussian filler std is 0"),
    ('type: "gaussian" std: nan', "std is nan; give a finite number"),
    ('type: "uniform" min: 1 max: -1', "uniform filler min 1 is greater than max -1"),
    ('type: "gaussian" sparse: 50', "`sparse` 50 is more than the blob's 4 outputs"),
])
def test_filler_parameters_caffe_rejects(text, message):
    from google.protobuf import text_format

    filler = text_format.Parse(text, caffe_pb2.FillerParameter())
    with pytest.raises(CaffeCompatError, match=re.escape(message)):
        fillers.fill(filler, (4, 5), np.random.default_rng(0), "layer 'ip' weight_filler")


@pytest.mark.parametrize("text", ['type: "gaussian" std: 0.1', 'type: "uniform" min: -1 max: 1',
                                  'type: "xavier"', 'type: "msra"', 'type: "gaussian" std: 1 sparse: 10'])
def test_fillers_draw_in_float32(text):
    from google.protobuf import text_format

    filler = text_format.Parse(text, caffe_pb2.FillerParameter())
    shape = (1000, 2000)
    blob = 4 * math.prod(shape)
    tracemalloc.start()
    try:
        data = fillers.fill(filler, shape, np.random.default_rng(0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert data.dtype == np.float32 and data.shape == shape
    # No float64 copy: at most the blob plus a float32 mask (sparse) and a bool one.
    assert peak <= blob * 2.3, peak / blob
    assert float(data.std()) > 0


def test_huge_net_fails_before_allocating(work, capsys):
    text = (work / "net.prototxt").read_text().replace("num_output: 8", "num_output: 2000000000")
    (work / "huge.prototxt").write_text(text)
    started = time.monotonic()
    assert main(["time", "-model", "huge.prototxt", "-iterations", "1"]) == 1
    err = capsys.readouterr().err
    assert time.monotonic() - started < 30
    assert re.search(r"net\.cpp:139\] Memory required for data: \d+", err)  # Caffe's log line
    (line,) = [x for x in err.splitlines() if ": error: " in x]
    assert "huge.prototxt: the net needs at least" in line and "GiB" in line
    assert "parameter blob #0 [2000000000, 108] of layer 'ip1'" in line and "reduce its num_output" in line


def test_memory_required_for_data_counts_every_top_as_caffe(work):
    from caffecompat.formats.net import read_net_prototxt
    from caffecompat.net import spec as netspec
    from caffecompat.net.memory import data_bytes

    net = read_net_prototxt(work / "deploy.prototxt")
    spec = netspec.build(net, caffe_pb2.TEST)
    # Input 1x3x6x6, ip1 1x8, relu1 (in place) 1x8 again, ip2 1x4, prob 1x4: Net::Init's sum of top counts.
    assert data_bytes(spec) == 4 * (108 + 8 + 8 + 4 + 4)


def test_read_weights_of_huge_blob_is_one_line(work, capsys):
    # A caffemodel whose blob claims a shape far larger than its data: refused, no allocation of the claim.
    model = caffe_pb2.NetParameter()
    model.ParseFromString((work / "weights.caffemodel").read_bytes())
    blob = next(lp for lp in model.layer if lp.name == "ip1").blobs[0]
    blob.shape.dim[0] = 1 << 40
    (work / "weights.caffemodel").write_bytes(model.SerializeToString())
    assert main(["test", "-model", "net.prototxt", "-weights", "weights.caffemodel", "-iterations", "1"]) == 1
    assert "weights.caffemodel" in _error_line(capsys)
