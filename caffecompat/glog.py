"""Log lines in glog's format, the one Caffe writes and its log parsers read.

    I1121 10:00:00.123456  4242 solver.cpp:243] Iteration 20, loss = 1.23

Severity letter, month and day, wall time with microseconds, thread id padded
to 5 columns, then `file:line] message`. caffecompat names the Caffe source file
and line that prints the same message, so tools that grep for `solver.cpp` or
`Test net output` keep working.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO

_stream: TextIO | None = None


def set_stream(stream: TextIO | None) -> None:
    """Send log lines to `stream` (default: stderr, as glog does)."""
    global _stream
    _stream = stream


def format_line(severity: str, where: str, message: str, now: float | None = None) -> str:
    """One glog line (without the trailing newline)."""
    now = time.time() if now is None else now
    t = time.localtime(now)
    micros = int((now - int(now)) * 1_000_000)
    tid = threading.get_native_id() if hasattr(threading, "get_native_id") else os.getpid()
    stamp = time.strftime("%m%d %H:%M:%S", t)
    return f"{severity}{stamp}.{micros:06d} {tid:5d} {where}] {message}"


def _emit(severity: str, where: str, message: str) -> None:
    stream = _stream if _stream is not None else sys.stderr
    # glog writes a multi-line message once: continuation lines carry no prefix.
    stream.write(format_line(severity, where, str(message).rstrip("\n")) + "\n")
    stream.flush()


def info(where: str, message: str) -> None:
    """An `I` line; `where` is the Caffe source location, e.g. `solver.cpp:243`."""
    _emit("I", where, message)


def warning(where: str, message: str) -> None:
    """A `W` line."""
    _emit("W", where, message)


def error(where: str, message: str) -> None:
    """An `E` line."""
    _emit("E", where, message)
