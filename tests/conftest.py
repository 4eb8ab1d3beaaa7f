"""Shared fixtures: where the reference data beside the checkout lives.

`../shared/` (next to the repository) holds data produced by the original
Caffe and Caffe's own model definitions. A user's clone may not have it:
tests that need it skip with a reason saying so.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CAFFECOMPAT_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "caffe-golden"
BVLC = SHARED / "bvlc-models"
ZOO = SHARED / "zoo"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"reference data not found at {path} (../shared beside the checkout, "
                    "or set CAFFECOMPAT_SHARED)")
    return path


@pytest.fixture
def golden() -> Path:
    """../shared/caffe-golden: outputs of the original Caffe (see its README)."""
    return _need(GOLDEN)


@pytest.fixture
def bvlc() -> Path:
    """../shared/bvlc-models: Caffe's own model and solver definitions."""
    return _need(BVLC)


@pytest.fixture
def zoo() -> Path:
    """../shared/zoo: real net definitions from public repositories (see its README)."""
    return _need(ZOO)


# The hardening tests' assets (test_hardening*.py); a test file that defines its own `work` or `assets` uses that.
@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """tests/fuzz.py's small valid assets: db/, mean.binaryproto, net/deploy/solver prototxts, weights, state."""
    from tests import fuzz

    folder = tmp_path_factory.mktemp("assets")
    fuzz.make_assets(folder)
    return folder


@pytest.fixture
def work(assets, tmp_path, monkeypatch) -> Path:
    """A private copy of the assets, as the working directory."""
    import shutil

    folder = tmp_path / "work"
    shutil.copytree(assets, folder)
    monkeypatch.chdir(folder)
    return folder
