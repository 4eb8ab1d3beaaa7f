"""Log lines in glog's format, the one Caffe writes and its log parsers read.

    I1121 10:00:00.123456  4242 solver.cpp:243] Iteration 20, loss = 1.23

Severity letter, month and day, wall time with microseconds, thread id padded
to 5 columns, then `file:line] message`. caffecompat names the Caffe source file
and line that prints the same message, so tools that grep for `solver.cpp` or
`Test net output` keep working.

glog's settings work as in Caffe's tools (which set alsologtostderr): every line
goes to stderr, `GLOG_minloglevel` / `-minloglevel` (0 INFO .. 3 FATAL) drops
lower severities, and `GLOG_log_dir` / `-log_dir` also writes glog's log files
there, named and headed as glog names them
(`<program>.<host>.<user>.log.<SEVERITY>.<yyyymmdd-hhmmss>.<pid>`, each with a
`<program>.<SEVERITY>` symlink to the newest); `GLOG_logtostderr` /
`-logtostderr` writes no files. Unlike glog, no files are written when no
log_dir is set (glog would write them to /tmp).
"""

from __future__ import annotations

import getpass
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from caffecompat.errors import CaffeCompatError, printable

SEVERITIES = "IWEF"
_NAMES = ("INFO", "WARNING", "ERROR", "FATAL")

_stream: TextIO | None = None
_lock = threading.RLock()
write_lock = _lock  # held while a line (or a progress bar) is written to the terminal
_minloglevel = 0
_logtostderr = False
_log_dir: str | None = None
_program = "caffecompat"
_files: dict[int, TextIO] = {}
_listeners: list[Callable[[str, str], None]] = []
_terminal_bar = None  # the progress bar drawn on the terminal, cleared and redrawn around each line


def set_stream(stream: TextIO | None) -> None:
    """Send log lines to `stream` (default: stderr, as glog does)."""
    global _stream
    _stream = stream


def _env_bool(name: str, text: str) -> bool:
    # gflags' spellings of a boolean value.
    low = text.strip().lower()
    if low in ("1", "true", "t", "yes", "y"):
        return True
    if low in ("0", "false", "f", "no", "n", ""):
        return False
    raise CaffeCompatError(f"{name}={text}: expected true or false (1 or 0)")


def _env_level(name: str, text: str) -> int:
    try:
        level = int(text.strip())
    except ValueError:
        raise CaffeCompatError(f"{name}={text}: expected a severity level 0 (INFO) to 3 (FATAL)") from None
    return level


def configure(program: str = "caffecompat", *, log_dir: str | None = None, minloglevel: int | None = None,
              logtostderr: bool | None = None, environ: dict[str, str] | None = None) -> None:
    """Set glog's flags for this run: each from its argument, else from GLOG_<flag>, else glog's default.

    `program` names the log files (`caffe` for train/test/time, as the Caffe tool they imitate).
    """
    global _minloglevel, _logtostderr, _log_dir, _program
    env = os.environ if environ is None else environ
    shutdown()
    if minloglevel is None:
        minloglevel = _env_level("GLOG_minloglevel", env["GLOG_minloglevel"]) if "GLOG_minloglevel" in env else 0
    if logtostderr is None:
        logtostderr = _env_bool("GLOG_logtostderr", env.get("GLOG_logtostderr", ""))
    if log_dir is None:
        log_dir = env.get("GLOG_log_dir") or None
    if log_dir is not None and not logtostderr and not os.path.isdir(log_dir):
        # glog quietly writes nowhere then; a user who asked for log files is told.
        raise CaffeCompatError(f"log_dir {log_dir}: no such folder; create it first")
    _minloglevel, _logtostderr, _log_dir, _program = minloglevel, logtostderr, log_dir, program
    _configured.append(program)


_configured: list[str] = []  # the programs configure() set up, in order


def configure_once(program: str) -> None:
    """configure(program) from the environment, unless this process configured glog already (the CLI did)."""
    if not _configured:
        configure(program)


def raise_minloglevel(level: int) -> None:
    """Drop lines below `level` from now on (the ranks other than 0 of a multi-process run log warnings up)."""
    global _minloglevel
    _minloglevel = max(_minloglevel, level)


def shutdown() -> None:
    """Close the log files and go back to glog's defaults (stderr only, every severity)."""
    global _minloglevel, _logtostderr, _log_dir
    with _lock:
        for f in _files.values():
            try:
                f.close()
            except OSError:
                pass
        _files.clear()
        _minloglevel, _logtostderr, _log_dir = 0, False, None


def log_file_name(severity: int, now: float | None = None, pid: int | None = None) -> str:
    """glog's file name: <program>.<host>.<user>.log.<SEVERITY>.<yyyymmdd-hhmmss>.<pid>."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return (f"{_program}.{_hostname()}.{_username()}.log.{_NAMES[severity]}.{stamp}."
            f"{os.getpid() if pid is None else pid}")


def _hostname() -> str:
    try:
        return socket.gethostname() or "(unknown)"
    except OSError:
        return "(unknown)"


def _username() -> str:
    # glog takes $USER, then the password database, else "invalid-user".
    user = os.environ.get("USER")
    if user:
        return user
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):
        return "invalid-user"


def _open_file(severity: int, now: float) -> TextIO | None:
    assert _log_dir is not None
    name = log_file_name(severity, now)
    path = os.path.join(_log_dir, name)
    try:
        f = open(path, "x", encoding="utf-8")
    except OSError as e:
        raise CaffeCompatError(f"{path}: cannot create the log file: {e.strerror or e}") from None
    t = time.localtime(now)
    f.write(time.strftime("Log file created at: %Y/%m/%d %H:%M:%S\n", t)
            + f"Running on machine: {_hostname()}\n"
            + "Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg\n")
    link = os.path.join(_log_dir, f"{_program}.{_NAMES[severity]}")
    try:
        # The symlink names the newest file, relative to the folder, as glog makes it.
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(name, link)
    except (OSError, NotImplementedError):
        pass  # glog ignores a link it cannot make (e.g. Windows without the privilege)
    return f


def format_line(severity: str, where: str, message: str, now: float | None = None) -> str:
    """One glog line (without the trailing newline)."""
    now = time.time() if now is None else now
    t = time.localtime(now)
    micros = int((now - int(now)) * 1_000_000)
    tid = threading.get_native_id() if hasattr(threading, "get_native_id") else os.getpid()
    stamp = time.strftime("%m%d %H:%M:%S", t)
    return f"{severity}{stamp}.{micros:06d} {tid:5d} {where}] {message}"


def add_listener(fn: Callable[[str, str], None]) -> None:
    """Call fn(severity letter, line) for every line logged from now on, whatever -minloglevel says."""
    _listeners.append(fn)


def remove_listener(fn: Callable[[str, str], None]) -> None:
    """Stop calling fn."""
    if fn in _listeners:
        _listeners.remove(fn)


def set_terminal_bar(bar: object | None) -> None:
    """The progress bar on the terminal (an object with clear() and draw()), or None."""
    global _terminal_bar
    _terminal_bar = bar


def _emit(severity: str, where: str, message: str) -> None:
    now = time.time()
    # glog writes a multi-line message once: continuation lines carry no prefix.
    # Names taken from files (keys, layer names, paths) may hold terminal escapes: printed escaped.
    line = format_line(severity, where, printable(str(message).rstrip("\n"), keep_newlines=True), now)
    for fn in list(_listeners):
        fn(severity, line)
    level = SEVERITIES.index(severity)
    if level < _minloglevel:
        return
    with _lock:
        stream = _stream if _stream is not None else sys.stderr
        bar = _terminal_bar if _terminal_bar is not None and getattr(_terminal_bar, "stream", None) is stream \
            else None
        if bar is not None:
            bar.clear()
        stream.write(line + "\n")
        stream.flush()
        if bar is not None:
            bar.draw()
        if _log_dir is not None and not _logtostderr:
            _write_files(level, line, now)


def _write_files(level: int, line: str, now: float) -> None:
    # A line goes to the file of its severity and of every lower one (an ERROR is in the INFO file too).
    for s in range(level, -1, -1):
        f = _files.get(s)
        if f is None:
            f = _files[s] = _open_file(s, now)
        f.write(line + "\n")
        f.flush()


def to_files(severity: str, where: str, message: str) -> None:
    """Write a line to the log files only (a command's final error, already printed on stderr)."""
    with _lock:
        if _log_dir is not None and not _logtostderr:
            now = time.time()
            _write_files(SEVERITIES.index(severity), format_line(severity, where, message, now), now)


def info(where: str, message: str) -> None:
    """An `I` line; `where` is the Caffe source location, e.g. `solver.cpp:243`."""
    _emit("I", where, message)


def warning(where: str, message: str) -> None:
    """A `W` line."""
    _emit("W", where, message)


def error(where: str, message: str) -> None:
    """An `E` line."""
    _emit("E", where, message)
