"""Caffe's SignalHandler for `train`: SIGINT and SIGHUP ask the solver to stop, snapshot, or nothing.

`caffe train` installs its handlers before it builds any net and the solver
polls them after each iteration, so a signal never kills a run by default.
Here too: `record_early()` (called by the CLI before anything heavy) notes any
signal from the very start, and `Signals.install()` (first thing `train` does)
maps each to its -sigint_effect / -sighup_effect:

- none: ignored at every stage;
- snapshot: the snapshot is taken at the next iteration boundary (for a
  signal during start-up, after the first iteration, as Caffe does);
- stop: during training, after the current iteration (then Solve snapshots as
  snapshot_after_train says); during start-up, before the first iteration,
  with no snapshot since nothing was learned yet (`StartupStopped`).
"""

from __future__ import annotations

import signal
from types import FrameType

from caffecompat.errors import CaffeCompatError

EFFECTS = ("stop", "snapshot", "none")
_NAMES = {signal.SIGINT: "SIGINT"}
if hasattr(signal, "SIGHUP"):
    _NAMES[signal.SIGHUP] = "SIGHUP"

_early: list[int] = []  # signals received before install()


class StartupStopped(Exception):
    """A stop was requested before training began; the run ends cleanly with status 0, as Caffe's early stop."""


def _record(signum: int, frame: FrameType | None) -> None:
    _early.append(signum)


def record_early() -> None:
    """Catch SIGINT and SIGHUP from now on and keep them for `Signals.install()` to act on."""
    for signum in _NAMES:
        signal.signal(signum, _record)


class Signals:
    """What SIGINT and SIGHUP do to a training run; the solver polls `take()` at safe points."""

    def __init__(self, sigint_effect: str = "stop", sighup_effect: str = "snapshot") -> None:
        self.effects: dict[int, str] = {}
        self.set_effects(sigint_effect, sighup_effect)
        self.pending: str | None = None
        self.pending_by = ""
        self._previous: dict[int, object] = {}

    def set_effects(self, sigint_effect: str, sighup_effect: str) -> None:
        """-sigint_effect / -sighup_effect; an unknown effect is an error naming the flag."""
        for flag, effect in (("sigint_effect", sigint_effect), ("sighup_effect", sighup_effect)):
            if effect not in EFFECTS:
                raise CaffeCompatError(f'-{flag} "{effect}" is not valid; use one of {", ".join(EFFECTS)}')
        self.effects = {signal.SIGINT: sigint_effect}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = sighup_effect

    def install(self) -> None:
        """Handle SIGINT and SIGHUP from now on, acting on any that arrived since `record_early()`."""
        for signum in self.effects:
            previous = signal.signal(signum, self._handle)
            if previous is _record:
                previous = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
            self._previous.setdefault(signum, previous)
        while _early:
            self._handle(_early.pop(0), None)

    def restore(self) -> None:
        """Put back the handlers `install()` replaced."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        effect = self.effects.get(signum, "none")
        if effect == "none":
            return
        # A stop outranks a snapshot asked for earlier and not yet taken.
        if self.pending != "stop":
            self.pending, self.pending_by = effect, _NAMES.get(signum, str(signum))

    def take(self) -> str | None:
        """The action requested since the last call ("stop", "snapshot" or None), once."""
        action, self.pending = self.pending, None
        return action

    # In a multi-process run the ranks act on a start-up stop together, at one point (parallel.group).
    together = False

    def check_startup(self) -> None:
        """During start-up: raise StartupStopped if a stop was requested; a snapshot request stays pending."""
        if self.pending == "stop" and not self.together:
            self.pending = None
            raise StartupStopped(f"Stop requested by {self.pending_by} during start-up: stopping before the first "
                                 "iteration (no snapshot: nothing was learned yet).")
