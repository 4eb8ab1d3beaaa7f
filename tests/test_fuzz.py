"""A bounded, seeded fuzz run (tests/fuzz.py): damaged inputs through every command that reads them.

Fails on a traceback, a death by signal, a hang or a memory peak over the
bound. The cases are fixed by their seeds, so a failure here reproduces with
`python -m tests.fuzz --seed N --cases 1 -v`. The run stops adding cases after
FUZZ_SECONDS so that it stays within a minute on a slow CI machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests import fuzz

REPO = Path(__file__).resolve().parent.parent
CASES = 80
FUZZ_SECONDS = 40


def test_fuzzed_inputs_never_crash(tmp_path):
    # A child process: the fuzzer forks one child per command and wants a process without threads to fork.
    done = subprocess.run(
        [sys.executable, "-m", "tests.fuzz", "--seed", "0", "--cases", str(CASES), "--minutes",
         str(FUZZ_SECONDS / 60), "--work", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=FUZZ_SECONDS + 90,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, f"{summary}\n{done.stderr[-6000:]}"
    commands = int(summary.split()[0])
    assert commands >= 40, summary  # enough of the run happened to mean something


def test_the_fuzzer_catches_what_it_claims(tmp_path):
    # The checks themselves: a traceback, a signal death, a hang and an exit status other than 0/1 are failures.
    ok = fuzz.Outcome(["x"], 1, None, 0.1, 1 << 20, "caffecompat x: error: bad file\n")
    assert ok.problem() is None
    assert fuzz.Outcome(["x"], 1, None, 0.1, 1 << 20, "Traceback (most recent call last):\n").problem() \
        == "traceback"
    assert fuzz.Outcome(["x"], None, 7, 0.1, 1 << 20, "").problem() == "killed by signal SIGBUS"
    assert fuzz.Outcome(["x"], None, 9, fuzz.CASE_SECONDS, 1 << 20, "").problem().startswith("hang")
    assert fuzz.Outcome(["x"], 2, None, 0.1, 1 << 20, "").problem() == "exit status 2"
    assert fuzz.Outcome(["x"], 1, None, 0.1, 1 << 20, "nothing said\n").problem() \
        == "exit status 1 without an error line"
    assert "peak memory" in fuzz.Outcome(["x"], 0, None, 0.1, fuzz.RSS_BOUND + 1, "").problem()
