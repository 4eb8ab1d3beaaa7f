"""A small progress bar for the command-line tools (convert-lmdb, compute-mean, extract-features, ...).

The bar is drawn only on a terminal: when stderr is a TTY it is one line
redrawn in place, cleared and redrawn around every glog line so the two never
interleave. Anywhere else (a pipe, a file, a CI log) it logs a glog INFO
line at every tenth of the work instead (at most one per 5 seconds, and the
last), so logs stay glog lines that parsers read.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from caffecompat import glog

LINE_SECONDS = 5.0  # off a terminal: at most one progress line this often


class Progress:
    """`label [#####.....] n/total  rate unit/s` on the terminal; periodic glog lines elsewhere.

    Call `update(n)` as work finishes and `close()` at the end.
    """

    def __init__(self, label: str, total: int | None, unit: str = "items", stream: TextIO | None = None,
                 where: str = "progress.py:1"):
        self.label, self.total, self.unit, self.where = label, total, unit, where
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.count = 0
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = 0
        self._last_line = self.start
        self._drawn = False
        if self.tty:
            glog.set_terminal_bar(self)

    def rate(self) -> float:
        """Items per second so far."""
        elapsed = time.monotonic() - self.start
        return self.count / elapsed if elapsed > 0 else 0.0

    def _text(self) -> str:
        rate = f"{self.rate():.1f} {self.unit}/s"
        if self.total:
            frac = min(1.0, self.count / self.total)
            bar = "#" * int(frac * 30)
            return f"{self.label} [{bar:<30}] {self.count}/{self.total} {rate}"
        return f"{self.label} {self.count} {self.unit} {rate}"

    def clear(self) -> None:
        """Erase the bar's line (before a log line is written)."""
        if self._drawn:
            self.stream.write("\r\033[K")
            self._drawn = False

    def draw(self) -> None:
        """Draw the bar on its line (never in the middle of a log line another thread writes)."""
        with glog.write_lock:
            self.stream.write("\r" + self._text())
            self.stream.flush()
            self._drawn = True

    def update(self, n: int = 1) -> None:
        """Record `n` more finished items and redraw (terminal) or log (elsewhere) when due."""
        self.count += n
        now = time.monotonic()
        if self.tty:
            if now - self._last_draw >= 0.1 or (self.total and self.count >= self.total):
                self._last_draw = now
                self.draw()
            return
        if self.total:
            # A line at each tenth done, at most one per LINE_SECONDS (the last tenth always).
            decile = min(10, int(10 * self.count / self.total))
            if decile > self._last_decile and (decile == 10 or now - self._last_line >= LINE_SECONDS):
                self._last_decile, self._last_line = decile, now
                glog.info(self.where, self._text())
        elif now - self._last_line >= 6 * LINE_SECONDS:
            self._last_line = now
            glog.info(self.where, self._text())

    def close(self) -> None:
        """Finish: the bar's last state stays on the terminal; elsewhere the final count is logged once."""
        if self.tty:
            with glog.write_lock:
                glog.set_terminal_bar(None)
                self.draw()
                self.stream.write("\n")
                self.stream.flush()
                self._drawn = False
        elif not self.total or self._last_decile < 10:
            glog.info(self.where, self._text())
