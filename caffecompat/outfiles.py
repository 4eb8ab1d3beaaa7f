"""Writing output files so that a failure or a kill never costs a good file or leaves litter.

Every output (snapshot, mean, ONNX model, upgraded file, LMDB database) is
written under a temporary name beside its target and renamed over it only when
complete. Temporary names are recognizable and say who wrote them:

    .<target name>.caffecompat-tmp-<pid>-<host tag>-<random>

so the next run writing into the same folder can tell the leftovers of a
killed process (kill -9, OOM killer, power loss) from a file another run is
writing now: `sweep_stale` removes those whose process on this host no longer
runs, and logs each removal. New files and folders get the modes the umask
gives any newly created file (0644 and 0755 under umask 022), as Caffe's do.
A write that fails (no space, read-only disk, no permission) removes its
temporary file and raises a CaffeCompatError naming the file and the reason.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from caffecompat import glog
from caffecompat.errors import CaffeCompatError

MARK = ".caffecompat-tmp-"
_HOST = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
_PATTERN = re.compile(r"^\.(?P<target>.*)\.caffecompat-tmp-(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-[0-9a-f]+$")
_MAX_NAME = 255  # the usual file-name limit, in bytes
_swept: set[str] = set()
_swept_lock = threading.Lock()

Data = bytes | bytearray | memoryview | Iterable[bytes | bytearray | memoryview]


def _folder(target: Path) -> Path:
    return target.parent if str(target.parent) else Path(".")


def temp_path(target: str | os.PathLike) -> Path:
    """A fresh temporary name beside `target`, recognizable as ours and as this process's."""
    target = Path(target)
    tail = f"{MARK}{os.getpid()}-{_HOST}-{secrets.token_hex(4)}"
    name = target.name
    while len(f".{name}{tail}".encode("utf-8", "surrogateescape")) > _MAX_NAME:
        name = name[: len(name) // 2]
    return _folder(target) / f".{name}{tail}"


def is_temp_name(name: str) -> bool:
    """Whether `name` is one of our temporary names."""
    return _PATTERN.match(name) is not None


def _process_gone(pid: int) -> bool:
    # On Windows os.kill would terminate the process: there, nothing is ever taken for stale.
    if pid == os.getpid() or os.name == "nt":
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):
        return False  # it exists (another user's), or cannot be asked about: leave its files alone
    return False


def sweep_stale(folder: str | os.PathLike, once: bool = True) -> list[Path]:
    """Remove temporary files and folders left in `folder` by dead caffecompat processes on this host.

    Each removal is logged. With `once`, a folder is swept only the first time
    this process asks. Files that cannot be removed are left (and not reported
    as removed); nothing here raises.
    """
    folder = Path(folder) if str(folder) else Path(".")
    key = os.path.abspath(folder)
    with _swept_lock:
        if once and key in _swept:
            return []
        _swept.add(key)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _PATTERN.match(entry.name)
        if m is None or m["host"] != _HOST or not _process_gone(int(m["pid"])):
            continue
        path = folder / entry.name
        kind = "folder" if entry.is_dir(follow_symlinks=False) else "file"
        try:
            if kind == "folder":
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        glog.warning("outfiles.py", f"Removed {path}, a temporary {kind} "
                                    f"left by caffecompat process {m['pid']}, which was killed before it "
                                    "finished writing")
        removed.append(path)
    return removed


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Bytes free for this user on the disk holding `folder`, or None when unknown."""
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return None
    return usage.free


def _free_space(folder: Path) -> str:
    free = free_bytes(folder)
    return "unknown" if free is None else human_bytes(free)


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def os_reason(e: OSError, folder: str | os.PathLike) -> str:
    """Why an OSError happened, in words that say what to do."""
    folder = Path(folder)
    if e.errno == errno.ENOSPC:
        return f"no space left on the device holding {folder} ({_free_space(folder)} free); free some space " \
               "or write elsewhere"
    if e.errno == errno.EDQUOT:
        return f"disk quota exceeded on the device holding {folder}; free some space or write elsewhere"
    if e.errno == errno.EROFS:
        return f"{folder} is on a read-only file system; write elsewhere"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: {folder} is not writable by this user; fix its permissions or write elsewhere"
    if e.errno == errno.ENOENT:
        return f"folder {folder} does not exist; create it first"
    if e.errno == errno.ENOTDIR:
        return f"{folder} is not a folder"
    return e.strerror or str(e)


def _check_folder(target: Path, what: str) -> Path:
    reason = _folder_problem(target)
    if reason:
        raise CaffeCompatError(f"{target}: cannot write the {what}: {reason}")
    return _folder(target)


def _folder_problem(target: Path) -> str | None:
    if "\0" in str(target):
        return "the name holds a NUL character, which no file name can"
    folder = _folder(target)
    if not folder.exists():
        return f"folder {folder} does not exist; create it first"
    if not folder.is_dir():
        return f"{folder} is not a folder"
    if target.is_dir():
        return "a folder has that name"
    return None


def unwritable_reason(target: str | os.PathLike) -> str | None:
    """Why `target` could not be written, found by creating and removing a probe file beside it
    (as Caffe's CheckSnapshotWritePermissions does); None when it can be."""
    target = Path(target)
    reason = _folder_problem(target)
    if reason:
        return reason
    folder = _folder(target)
    sweep_stale(folder)
    probe = temp_path(target)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        return os_reason(e, folder)
    os.close(fd)
    probe.unlink(missing_ok=True)
    return None


def check_writable(target: str | os.PathLike, what: str) -> None:
    """Fail now, before any work, when the `what` file `target` could not be written later."""
    reason = unwritable_reason(target)
    if reason:
        raise CaffeCompatError(f"{target}: cannot write the {what}: {reason}")


def write_temp(target: str | os.PathLike, data: Data, what: str = "file") -> Path:
    """Write `data` (bytes, or buffers one after another) to a new temporary file beside `target`.

    Returns the temporary path; pass it to `commit` (or `discard`). On failure
    nothing is left and a CaffeCompatError says why.
    """
    target = Path(target)
    folder = _check_folder(target, what)
    sweep_stale(folder)
    tmp = temp_path(target)
    try:
        # Mode 0666 less the umask, as for any newly created file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise CaffeCompatError(f"{target}: cannot write the {what}: {os_reason(e, folder)}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                for chunk in data:
                    f.write(chunk)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CaffeCompatError(f"{target}: cannot write the {what}: {os_reason(e, folder)}; "
                               f"{'the existing file is unchanged' if target.exists() else 'nothing was written'}"
                               ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def commit(tmp: str | os.PathLike, target: str | os.PathLike, what: str = "file") -> None:
    """Rename a finished temporary file or folder to its target name (replacing a file there)."""
    try:
        os.replace(tmp, target)
    except OSError as e:
        discard(tmp)
        raise CaffeCompatError(f"{target}: cannot write the {what}: {os_reason(e, _folder(Path(target)))}") from None


def discard(tmp: str | os.PathLike) -> None:
    """Remove a temporary file or folder; never raises."""
    p = Path(tmp)
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    except OSError:
        pass


def write_atomic(target: str | os.PathLike, data: Data, what: str = "file") -> None:
    """Write `data` to `target` through a temporary file and a rename."""
    commit(write_temp(target, data, what), target, what)


def write_atomic_group(items: Sequence[tuple[str | os.PathLike, Data]], what: str = "file") -> None:
    """Write several files all-or-nothing: every temporary file first, then the renames, in order.

    When any write fails, none of the targets has been touched.
    """
    temps: list[Path] = []
    try:
        for target, data in items:
            temps.append(write_temp(target, data, what))
    except BaseException:
        for t in temps:
            discard(t)
        raise
    for i, (tmp, (target, _)) in enumerate(zip(temps, items)):
        try:
            commit(tmp, target, what)
        except BaseException:
            for t in temps[i + 1:]:
                discard(t)
            raise


def install_folder(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the finished folder `tmp` to `target`, replacing an old one only once the new one is in place.

    On failure the old folder is put back and the OSError propagates for the caller to word.
    """
    old = None
    try:
        if os.path.lexists(target):
            old = str(temp_path(target))
            os.rename(target, old)
        os.rename(tmp, target)
    except OSError:
        if old is not None and not os.path.lexists(target):
            os.rename(old, target)
        raise
    if old is not None:
        discard(old)


def make_temp_dir(target: str | os.PathLike, what: str) -> Path:
    """A new empty temporary folder beside `target` (mode 0777 less the umask)."""
    target = Path(target)
    folder = _check_folder(target, what) if not target.is_dir() else _folder(target)
    sweep_stale(folder)
    tmp = temp_path(target)
    try:
        os.mkdir(tmp, 0o777)
    except OSError as e:
        raise CaffeCompatError(f"{target}: cannot write the {what}: {os_reason(e, folder)}") from None
    return tmp
