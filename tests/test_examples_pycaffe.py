"""examples/pycaffe runs end to end (NetSpec, SGDSolver with a Python data layer, fine-tuning, Classifier, a
Python loss layer), with few iterations so that it stays quick."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_pycaffe_examples_run(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    run = subprocess.run(["bash", str(REPO / "examples" / "pycaffe" / "run.sh"), str(tmp_path), "6"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    out = run.stdout
    assert "wrote train.prototxt, deploy.prototxt and solver.prototxt" in out
    assert "iteration 6: train loss" in out and "6 updates; wrote shapes_py_iter_6.caffemodel" in out
    assert "iteration 3: train loss" in out  # the fine-tuning run from pretrained.caffemodel
    assert "accuracy on 40 new images" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("largest difference between the two nets' weights")
    assert float(last.rsplit(" ", 1)[-1]) < 1e-5
    assert (tmp_path / "pretrained.caffemodel").is_file() and (tmp_path / "images").is_dir()
