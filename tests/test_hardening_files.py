"""Hardening of files and folders: -proto never runs a command, groups of files are installed whole,
temporaries of live writers survive sweeps, snapshot pairs never mix, HDF5 links are refused."""

from __future__ import annotations

import os
import subprocess
import sys

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
