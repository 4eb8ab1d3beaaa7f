"""Writing output files so that a failure or a kill never costs a good file or leaves litter.

Every output (snapshot, mean, ONNX model, upgraded file, LMDB database) is
written under a temporary name beside its target and renamed over it only when
complete. Temporary names are recognizable and say who wrote them:

    .<target name>.caffecompat-tmp-<pid>-<host tag>-<random>

The writer holds an exclusive flock on each of its temporaries (the file, or
the folder of a database) from its creation (it is born under a
`.caffecompat-new-` name, locked, then given its temporary name) until it is
renamed or removed; the kernel drops the lock when the writer dies (kill -9,
OOM killer).
`sweep_stale` removes a temporary of this host only when it can take that lock
itself, so a live writer keeps its file even when its pid means nothing here
(another PID namespace: containers sharing a folder and a host name), and logs
each removal. The pid in the name is only for the log. Where flock is not
available (Windows, file systems without locks) nothing is ever swept.

`write_atomic_group` installs several files with hard-link backups of the old
ones, so a failure between its renames puts the old group back; a group that
must also survive a kill between renames needs a last file that names the
others (an ONNX model its data file, a solverstate its caffemodel): see
caffecompat.convert and caffecompat.solver.snapshot.

New files and folders get the modes the umask gives any newly created file
(0644 and 0755 under umask 022), as Caffe's do. A write that fails (no space,
read-only disk, no permission) removes its temporary file and raises a
CaffeCompatError naming the file and the reason.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat
import sys
import threading
import time
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
_held: dict[str, int] = {}  # absolute temporary path -> the descriptor holding its flock
_held_lock = threading.Lock()

try:
    import fcntl
except ImportError:  # Windows: no flock; temporaries are never swept there
    fcntl = None  # type: ignore[assignment]

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


def _try_lock(fd: int) -> bool:
    """Take an exclusive flock on `fd` without waiting; False when someone holds it or locks are missing."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _hold(fd: int, path: Path) -> None:
    """Lock the temporary just created at `path` (open as `fd`) for as long as this process writes it.

    A sweep beside us may lock the new name between our creating and locking it,
    and remove it: we wait for its lock, see that the name no longer leads to our
    file, and raise FileExistsError so that the caller makes another name.
    """
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits out a sweep that got there first
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF):
            return  # no locks on this file system: nothing is swept here either (see sweep_stale)
        raise
    ours = os.fstat(fd)
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        now = None
    if now is None or (ours.st_dev, ours.st_ino) != (now.st_dev, now.st_ino):
        raise FileExistsError(errno.EEXIST, "a sweep removed the new temporary", str(path))
    with _held_lock:
        _held[os.path.abspath(path)] = os.dup(fd)


def _move_hold(old: Path, new: Path) -> None:
    with _held_lock:
        fd = _held.pop(os.path.abspath(old), None)
        if fd is not None:
            _held[os.path.abspath(new)] = fd


def release(tmp: str | os.PathLike) -> None:
    """Drop this process's lock on a temporary (once it is renamed or removed); never raises."""
    with _held_lock:
        fd = _held.pop(os.path.abspath(tmp), None)
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def _create(target: Path, make: str) -> tuple[Path, int]:
    """A new temporary beside `target` ("file" or "folder"), locked as ours: its path and an open descriptor."""
    for _ in range(8):
        tmp = temp_path(target)
        born = tmp.with_name(tmp.name.replace(MARK, BIRTH_MARK))
        if make == "folder":
            os.mkdir(born, 0o777)  # 0777 less the umask, as for any new folder
            fd = os.open(born, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        else:
            # Mode 0666 less the umask, as for any newly created file.
            fd = os.open(born, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            _hold(fd, born)
            os.rename(born, tmp)  # the lock goes with the file: under its MARK name it is locked from the start
            _move_hold(born, tmp)
        except FileExistsError:
            os.close(fd)
            discard(born)
            continue
        except BaseException:
            os.close(fd)
            discard(born)
            discard(tmp)
            raise
        return tmp, fd
    raise OSError(errno.EAGAIN, "temporary files beside it keep disappearing", str(target))


# A temporary is born under this other mark, locked, and only then renamed to its MARK name, so that a sweep
# never sees a temporary of ours unlocked. A kill in that instant leaves an empty file under the birth mark:
# the sweep removes those once they are old.
BIRTH_MARK = ".caffecompat-new-"
_BIRTH = re.compile(r"^\..*\.caffecompat-new-\d+-[0-9a-f]{8}-[0-9a-f]+$")
_BIRTH_SECONDS = 600.0


def sweep_stale(folder: str | os.PathLike, once: bool = True) -> list[Path]:
    """Remove temporary files and folders left in `folder` by dead caffecompat processes on this host.

    A temporary is taken for dead only when its lock can be taken (see the
    module docstring). Each removal is logged. With `once`, a folder is swept
    only the first time this process asks. Files that cannot be removed are
    left (and not reported as removed); nothing here raises.
    """
    if fcntl is None:  # Windows: no flock to tell a live writer's file from a dead one's; never sweep
        return []
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
        if _BIRTH.match(entry.name):
            _remove_old_birth(folder / entry.name)
            continue
        m = _PATTERN.match(entry.name)
        if m is None or m["host"] != _HOST:
            continue
        path = folder / entry.name
        try:
            kind = "folder" if entry.is_dir(follow_symlinks=False) else "file"
            if entry.is_symlink():
                continue  # we never make links: not ours
            # A file is opened for writing: NFS emulates flock with write locks, which need it.
            mode = os.O_RDONLY if kind == "folder" else os.O_RDWR
            fd = os.open(path, mode | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
                         | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            continue
        try:
            if not _try_lock(fd):
                continue  # its writer is alive (in this process, another, or another PID namespace)
            ours, now = os.fstat(fd), os.stat(path, follow_symlinks=False)
            if (ours.st_dev, ours.st_ino) != (now.st_dev, now.st_ino):
                continue
            if kind == "folder":
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        finally:
            os.close(fd)
        glog.warning("outfiles.py", f"Removed {path}, a temporary {kind} "
                                    f"left by caffecompat process {m['pid']}, which was killed before it "
                                    "finished writing")
        removed.append(path)
    return removed


def _remove_old_birth(path: Path) -> None:
    """Remove an empty temporary left between its birth and its naming, once it is old; never raises."""
    try:
        st = os.stat(path, follow_symlinks=False)
        if time.time() - st.st_mtime < _BIRTH_SECONDS:
            return
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(path)  # only when empty
        elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
            path.unlink()
    except OSError:
        pass


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


def _new_locked(target: Path, what: str) -> tuple[Path, Path, int]:
    """(folder, temporary, open descriptor) of a new temporary file beside `target`, locked as ours, after
    sweeping the folder's stale temporaries."""
    folder = _check_folder(target, what)
    sweep_stale(folder)
    try:
        tmp, fd = _create(target, "file")
    except OSError as e:
        raise CaffeCompatError(f"{target}: cannot write the {what}: {os_reason(e, folder)}") from None
    return folder, tmp, fd


def write_temp(target: str | os.PathLike, data: Data, what: str = "file") -> Path:
    """Write `data` (bytes, or buffers one after another) to a new temporary file beside `target`.

    Returns the temporary path; pass it to `commit` (or `discard`). On failure
    nothing is left and a CaffeCompatError says why.
    """
    target = Path(target)
    folder, tmp, fd = _new_locked(target, what)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                for chunk in data:
                    f.write(chunk)
            f.flush()
            os.fsync(f.fileno())  # on disk before any rename makes it the target
    except OSError as e:
        discard(tmp)
        raise CaffeCompatError(f"{target}: cannot write the {what}: {os_reason(e, folder)}; "
                               f"{'the existing file is unchanged' if target.exists() else 'nothing was written'}"
                               ) from None
    except BaseException:
        discard(tmp)
        raise
    return tmp


def new_temp(target: str | os.PathLike, what: str = "file") -> Path:
    """A new empty temporary file beside `target`, locked as ours, for a writer that opens it by name.

    (A writer that takes its own flock, as HDF5 does, must be told not to: h5py's locking=False.)
    """
    _, tmp, fd = _new_locked(Path(target), what)
    os.close(fd)
    return tmp


def commit(tmp: str | os.PathLike, target: str | os.PathLike, what: str = "file") -> None:
    """Rename a finished temporary file or folder to its target name (replacing a file there)."""
    try:
        os.replace(tmp, target)
    except OSError as e:
        discard(tmp)
        raise CaffeCompatError(f"{target}: cannot write the {what}: {os_reason(e, _folder(Path(target)))}") from None
    release(tmp)
    _sync_folder(_folder(Path(target)))


def _sync_folder(folder: Path) -> None:
    """fsync a folder so that renames in it survive a power loss (where the system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def discard(tmp: str | os.PathLike) -> None:
    """Remove a temporary file or folder (and drop our lock on it); never raises."""
    p = Path(tmp)
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    except OSError:
        pass
    release(tmp)


def write_atomic(target: str | os.PathLike, data: Data, what: str = "file") -> None:
    """Write `data` to `target` through a temporary file and a rename."""
    commit(write_temp(target, data, what), target, what)


def backup_link(target: str | os.PathLike) -> Path | None:
    """A hard link to the file now at `target` under a temporary name we hold, or None when there is none.

    Renaming the link back over `target` restores the old file after a new one
    replaced it. Raises OSError when the folder cannot hold links (the caller decides).
    """
    target = Path(target)
    if not os.path.isfile(target) or os.path.islink(target):
        return None
    for _ in range(8):
        link = temp_path(target)
        born = link.with_name(link.name.replace(MARK, BIRTH_MARK))
        try:
            os.link(target, born)
        except FileExistsError:
            continue
        try:
            fd = os.open(born, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))  # for writing: NFS's flock needs it
        except OSError:
            born.unlink(missing_ok=True)
            raise
        try:
            _hold(fd, born)
            os.rename(born, link)  # named as a temporary only once locked (see _create)
            _move_hold(born, link)
        except FileExistsError:
            continue
        except BaseException:
            release(born)
            born.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        return link
    raise OSError(errno.EAGAIN, "temporary files beside it keep disappearing", str(target))


def write_atomic_group(items: Sequence[tuple[str | os.PathLike, Data]], what: str = "file") -> None:
    """Write several files so that a failure at any point leaves the old group or the new one, never a mix.

    Every temporary file is written and synced first (a failure there touches no
    target), then each existing target gets a hard-link backup, then the renames
    run in order; when one of them fails, the targets already renamed get their
    old files back (or are removed where there was none; where the file system
    has no hard links, an old file cannot be put back). A kill between two
    renames cannot be undone this way: when that matters, put last a file that
    names the others, so that it is the group's commit point.
    """
    temps: list[Path] = []
    backups: list[Path | None] = []
    try:
        for target, data in items:
            temps.append(write_temp(target, data, what))
        for target, _ in items:
            try:
                backups.append(backup_link(target))
            except OSError:  # no hard links here (FAT, some shares): the group's last file stays its commit point
                backups.append(None)
    except BaseException:
        for t in temps + [b for b in backups if b is not None]:
            discard(t)
        raise
    done = 0
    try:
        for tmp, (target, _) in zip(temps, items):
            commit(tmp, target, what)
            done += 1
    except BaseException:
        for t in temps[done:]:
            discard(t)
        for (target, _), old in zip(items[:done], backups[:done]):
            try:
                if old is not None:
                    os.replace(old, target)
                    release(old)
                else:
                    os.unlink(target)
            except OSError:
                pass
        for b in backups[done:]:
            if b is not None:
                discard(b)
        raise
    for b in backups:
        if b is not None:
            discard(b)


def _exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two names in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # a file system without the exchange: fall back to two renames
    raise OSError(err, os.strerror(err), str(b))


def install_folder(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the finished folder `tmp` to `target`, replacing an old one only once the new one is in place.

    Where the system can, the two folders swap names in one step, so a kill
    leaves the old folder or the new one under the target's name; elsewhere the
    old one is renamed aside first. On failure the old folder is put back and
    the OSError propagates for the caller to word.
    """
    if os.path.isdir(target) and not os.path.islink(target) and _exchange(tmp, target):
        release(tmp)
        discard(tmp)  # the old folder, now under the temporary name
        return
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
    release(tmp)
    if old is not None:
        discard(old)


def make_temp_dir(target: str | os.PathLike, what: str) -> Path:
    """A new empty temporary folder beside `target` (mode 0777 less the umask), locked as ours."""
    target = Path(target)
    folder = _check_folder(target, what) if not target.is_dir() else _folder(target)
    sweep_stale(folder)
    try:
        tmp, fd = _create(target, "folder")
    except OSError as e:
        raise CaffeCompatError(f"{target}: cannot write the {what}: {os_reason(e, folder)}") from None
    os.close(fd)
    return tmp
