"""Running a `caffecompat` command under mpiexec for the tests (skipped without the MPI extra)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from caffecompat.errors import CaffeCompatError


def mpiexec_or_skip() -> str:
    """The mpiexec installed with caffecompat[mpi]; the test skips when mpi4py or mpiexec is missing."""
    try:
        import mpi4py  # noqa: F401

        from caffecompat.parallel import launch

        return launch.find_mpiexec()
    except (ImportError, CaffeCompatError):
        pytest.skip("needs the MPI extra: pip install 'caffecompat[mpi]' (mpi4py and mpich, with mpiexec)")


def run_ranks(ranks: int, args: list[str], cwd: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`mpiexec -n RANKS caffecompat ARGS` (its exit status, stdout and stderr)."""
    return subprocess.run([mpiexec_or_skip(), "-n", str(ranks), sys.executable, "-m", "caffecompat.cli", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout)


def run_one(args: list[str], cwd: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`caffecompat ARGS` in a process of its own (as -processes N needs: it starts mpiexec itself)."""
    return subprocess.run([sys.executable, "-m", "caffecompat.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)
