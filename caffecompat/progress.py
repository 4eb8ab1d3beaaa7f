"""A small progress bar for the command-line tools (convert-lmdb, compute-mean, test)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Prints `label [#####.....] n/total  rate unit/s` on one refreshed stderr line.

    On a non-terminal stream it prints a plain line every 10% instead, so logs
    stay readable. Call `update(n)` as work finishes and `close()` at the end.
    """

    def __init__(self, label: str, total: int | None, unit: str = "items", stream: TextIO | None = None):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.count = 0
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = -1

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

    def update(self, n: int = 1) -> None:
        """Record `n` more finished items and redraw when due."""
        self.count += n
        now = time.monotonic()
        if self.tty:
            if now - self._last_draw >= 0.1 or (self.total and self.count >= self.total):
                self._last_draw = now
                self.stream.write("\r" + self._text())
                self.stream.flush()
        elif self.total:
            decile = int(10 * self.count / self.total)
            if decile > self._last_decile:
                self._last_decile = decile
                self.stream.write(self._text() + "\n")
                self.stream.flush()

    def close(self) -> None:
        """Finish the line."""
        if self.tty:
            self.stream.write("\r" + self._text() + "\n")
            self.stream.flush()
