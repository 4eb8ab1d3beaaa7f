"""examples/finetune_nsfw/run.sh: transfer learning end to end on open_nsfw's real weights, as a user runs it.

The example (about 2 minutes on 2 cores) fine-tunes the real ResNet-50-1by2 of
../shared/zoo/open_nsfw on 4 classes of drawn shapes with Adam and the exp
policy on 2 processes, stops after a first session, resumes from its
solverstate with `caffecompat train -snapshot`, plots the curves, classifies
unseen test images to HDF5, reads them back per sample, and trains the same
recipe from the fillers. Checked here against references that do not come from
the code under test: the iteration numbers of the two logs, the pretrained
caffemodel's frozen blobs, chance (1/4), the from-scratch run, and the test
images' true classes counted from the HDF5 file by hand.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from caffecompat.formats.caffemodel import read_weights
from tests.conftest import REPO, ZOO

EXAMPLE = REPO / "examples" / "finetune_nsfw" / "run.sh"
OPEN_NSFW = ZOO / "open_nsfw"
CLASSES = ("circle", "cross", "square", "triangle")  # labels.txt: the image folders' classes, sorted

_spec = importlib.util.spec_from_file_location("print_predictions", REPO / "examples/classify/print_predictions.py")
print_predictions = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(print_predictions)


def _accuracy(log: str, pattern: str) -> float:
    found = re.findall(pattern + r" = (\S+)", log)
    assert found, f"no '{pattern}' in the log:\n{log[-3000:]}"
    return float(found[-1])


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> tuple[Path, str]:
    """Run the example once, as a user would: its work folder and everything it printed."""
    if not (OPEN_NSFW / "deploy.prototxt").is_file() or not (OPEN_NSFW / "resnet_50_1by2_nsfw.caffemodel").is_file():
        pytest.skip(f"open_nsfw's deploy.prototxt and resnet_50_1by2_nsfw.caffemodel not found in {OPEN_NSFW} "
                    "(../shared/zoo beside the checkout, or set CAFFECOMPAT_SHARED)")
    work = tmp_path_factory.mktemp("finetune_nsfw")
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, OPEN_NSFW=str(OPEN_NSFW), CAFFECOMPAT=str(bin_dir / "caffecompat"),
               PYTHON=sys.executable, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run(["bash", str(EXAMPLE), str(work)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return work, done.stdout


def test_the_resume_goes_on_from_the_snapshot(example):
    work, _ = example
    first = (work / "finetune.log").read_text()
    resumed = (work / "resume.log").read_text()
    # The first session ends at its max_iter 20 with a snapshot, and never reaches 21.
    assert "Iteration 19, lr" in first and "Iteration 20, lr" not in first
    assert "Snapshotting solver state to binary proto file" in first and "finetune_iter_20.solverstate" in first
    # The second starts from that state: iteration 20 is its first, 39 its last; it never starts over at 0.
    assert "Restoring previous solver status from finetuned/snapshots/finetune_iter_20.solverstate" in resumed
    iterations = [int(i) for i in re.findall(r"\] Iteration (\d+), lr = ", resumed)]
    assert iterations[0] == 20 and iterations[-1] == 39, iterations
    assert "Finetuning from" not in resumed  # the weights came from the snapshot, not the pretrained file
    # Two processes where MPI is installed (the example says when it falls back to one).
    if "training on 1 process" not in example[1]:
        assert "Data-parallel training on 2 processes" in first and "Data-parallel training on 2 processes" in resumed
    assert (work / "finetuned" / "snapshots" / "finetune_iter_40.caffemodel").is_file()


def test_frozen_backbone_is_the_pretrained_one(example):
    """Below relu_stage3_block1 every blob (convolutions, BatchNorm statistics, Scale) is open_nsfw's, bit for bit."""
    work, _ = example
    before = read_weights(OPEN_NSFW / "resnet_50_1by2_nsfw.caffemodel").blobs
    after = read_weights(work / "finetuned" / "snapshots" / "finetune_iter_40.caffemodel").blobs
    for name in ("conv_1", "bn_1", "scale_1", "conv_stage3_block1_branch2c", "bn_stage3_block1_branch2c",
                 "scale_stage3_block1_branch2c"):
        for a, b in zip(before[name], after[name], strict=True):
            assert np.array_equal(a, b), name
    # Above the cut the last block learns; the head is new, 4 classes instead of open_nsfw's 2.
    assert not np.array_equal(before["conv_stage3_block2_branch2a"][0], after["conv_stage3_block2_branch2a"][0])
    assert after["fc_nsfw_ft"][0].shape == (4, before["fc_nsfw"][0].shape[1])


def test_fine_tuned_beats_chance_and_scratch(example):
    work, out = example
    fine_tuned = _accuracy((work / "classify.log").read_text(), r"\] accuracy")
    scratch = _accuracy((work / "classify_scratch.log").read_text(), r"\] accuracy")
    chance = 1 / len(CLASSES)
    # Measured on the 40 unseen test images with SEED 1, 2, 3: fine-tuned 0.95, 0.925, 0.9; from scratch (the
    # same recipe and frozen layers, from the fillers) 0.325, 0.25, 0.3: margins 0.625, 0.675, 0.6; on 1 process
    # (the fallback without MPI: half the images per iteration), SEED 1: 0.825 against 0.25. The bounds
    # (chance + 0.4, and 0.4) leave room for another machine's rounding and still fail if the pretrained
    # weights go unused.
    assert fine_tuned > chance + 0.4, out[-2000:]
    assert fine_tuned - scratch > 0.4, out[-2000:]
    assert f"margin {fine_tuned - scratch:+.4g}" in out


def test_the_hdf5_reader_agrees_with_classify(example):
    work, out = example
    classify = (work / "classify.log").read_text()
    m = re.search(r"\] accuracy = (\S+) \((\d+)/(\d+) labelled images\)", classify)
    assert m, classify[-2000:]
    # By hand from the HDF5 file: each image's true class is its folder's name (the test set is 10 per class).
    samples = print_predictions.per_sample(str(work / "test.h5"))
    assert len(samples) == int(m[3]) == 40
    hits = 0
    for _, file, scores, label in samples:
        assert CLASSES[label] == Path(file).parent.name, file
        hits += int(np.argmax(scores)) == label and np.count_nonzero(scores == scores.max()) == 1
    assert hits == int(m[2])
    # The example's own per-sample script prints the same count and accuracy as classify, to the digit.
    printed = (work / "predictions.txt").read_text()
    assert f"accuracy = {m[1]} ({m[2]}/{m[3]} labelled images)" in printed
    assert len(printed.splitlines()) == 41  # one line per image and the accuracy
    assert f"test accuracy, per sample from HDF5:  {m[1]}" in out


def test_the_curves_are_plotted(example):
    work, out = example
    pytest.importorskip("matplotlib", reason="caffecompat plot needs matplotlib (pip install 'caffecompat[dev]')")
    png = work / "curves.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000  # three runs' curves, not an empty figure
