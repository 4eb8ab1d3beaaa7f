"""The transfer-learning examples (examples/transfer) on their small setting, end to end.

Each runs as a user runs it (`python examples/transfer/NAME.py`), in one
work folder shared by the three, as their default one is: the shapes net is
pretrained once for finetune.py and features.py. In each, the fine-tuned net
must beat the same net trained from scratch by a clear margin.
"""

from __future__ import annotations

import importlib
import re
import sys
import time
from pathlib import Path

import lmdb
import pytest

from caffecompat.proto import caffe_pb2

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "transfer"
MARGIN = 0.1  # measured on the small setting: fine-tuned 0.41-0.45 vs scratch 0.23 (chance is 0.2)
TIME_BOX = 300  # seconds per example on the small setting (about 5 to 35 s on 2 cores)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("transfer")


def run_example(name: str, work: Path, capsys) -> tuple[dict, str]:
    sys.path.insert(0, str(EXAMPLES))
    try:
        module = importlib.import_module(name)
        start = time.monotonic()
        results = module.main(["--work", str(work)])
        elapsed = time.monotonic() - start
    finally:
        sys.path.remove(str(EXAMPLES))
        for m in ("common", name):
            sys.modules.pop(m, None)
    out = capsys.readouterr().out
    assert elapsed < TIME_BOX, f"{name} took {elapsed:.0f} s"
    assert results["setting"] == "small"
    return results, out


def lmdb_records(path: Path) -> list[tuple[bytes, bytes]]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        items = list(txn.cursor())
    env.close()
    return items


def test_finetune_beats_scratch(work, capsys):
    results, out = run_example("finetune", work, capsys)
    tuned, scratch = results["fine-tuned from the pretrained net"], results["trained from scratch"]
    assert tuned - scratch >= MARGIN, out
    assert "$ caffecompat train -solver finetune/finetuned_solver.prototxt -weights pretrained_shapes/" in out
    log = (work / "finetune" / "finetuned.log").read_text()
    # The renamed head starts from its filler; every other layer comes from the pretrained net.
    assert "Ignoring source layer fc_source" in log and "Ignoring source layer conv1" not in log
    assert "Ignoring source layer" not in (work / "finetune" / "scratch.log").read_text()
    assert (work / "target_labels.txt").read_text().split() == ["arrow", "chevron", "half_disc", "ring", "star"]


def test_linear_classifier_on_extracted_features(work, capsys):
    results, out = run_example("features", work, capsys)
    assert "pretrained shapes net: reusing" in out  # the first example's pretraining
    linear = results["linear classifier on the frozen net's ip1 features"]
    tuned, scratch = results["full fine-tuning"], results["trained from scratch"]
    assert linear - scratch >= MARGIN and tuned - scratch >= MARGIN, out
    # extract-features wrote one 64-value Datum per validation image, and its label beside it.
    features = lmdb_records(work / "features" / "val_ip1_lmdb")
    labels = lmdb_records(work / "features" / "val_label_lmdb")
    assert len(features) == len(labels) == 200
    first = caffe_pb2.Datum.FromString(features[0][1])
    assert (first.channels, first.height, first.width, len(first.float_data)) == (64, 1, 1, 64)
    assert min(first.float_data) >= 0  # ip1 after its in-place ReLU
    assert sorted({caffe_pb2.Datum.FromString(v).float_data[0] for _, v in labels}) == [0, 1, 2, 3, 4]


def test_resnet_with_adam_exp_snapshots_plot_and_classify(work, capsys):
    results, out = run_example("resnet", work, capsys)
    tuned, scratch = results["fine-tuned ResNet-mini"], results["trained from scratch"]
    assert tuned - scratch >= MARGIN, out
    log = (work / "resnet" / "finetuned.log").read_text()
    solver = (work / "resnet" / "finetuned_solver.prototxt").read_text()
    assert 'type: "Adam"' in solver and 'lr_policy: "exp"' in solver and "snapshot: 20" in solver
    lrs = [float(v) for v in re.findall(r"lr = (\S+)", log)]
    assert lrs[0] == pytest.approx(0.001) and lrs[-1] < lrs[0]  # the exp policy decays it
    assert results["snapshots"] == ["target_iter_20.caffemodel", "target_iter_40.caffemodel",
                                    "target_iter_60.caffemodel"]
    # classify, on the validation image folder with the deploy net, agrees with the training run's last test.
    classified = next(v for k, v in results.items() if k.startswith("caffecompat classify"))
    assert classified == pytest.approx(tuned, abs=1e-9)
    rows = (work / "resnet" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 201 and rows[0].startswith("image,label,class_1,name_1,score_1")
    if results["plot"]:
        png = (work / results["plot"]).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "skipping the plot" in out
