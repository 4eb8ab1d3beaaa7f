"""Fine-tuning works as in Caffe's recipe: a renamed head starts fresh, the rest copies by name.

On the golden images, a net fine-tuned from a pretrained snapshot (head ip2
renamed ip2_ft, zero-filled, lr_mult 10/20, conv1 frozen) beats the same net
trained from scratch for the same iterations, by a clear margin, for several seeds.
"""

from __future__ import annotations

import io
import re

import pytest
from google.protobuf import text_format

from caffecompat import glog
from caffecompat.cli import main
from caffecompat.proto import caffe_pb2

PRETRAIN_ITERS = 150
FINETUNE_ITERS = 30
MARGIN = 0.3  # measured: fine-tuned 0.90-0.95 vs scratch 0.13-0.40 over seeds 1-3


def _solver(path, net: str, prefix: str, lr: float, iters: int, seed: int):
    s = caffe_pb2.SolverParameter(net=net, base_lr=lr, momentum=0.9, weight_decay=0.0005, lr_policy="fixed",
                                  max_iter=iters, display=0, random_seed=seed, snapshot_prefix=prefix,
                                  test_interval=iters, test_initialization=False,
                                  solver_mode=caffe_pb2.SolverParameter.CPU)
    s.test_iter.append(2)
    path.write_text(text_format.MessageToString(s))
    return str(path)


def _final_accuracy(args: list[str]) -> float:
    stream = io.StringIO()
    glog.set_stream(stream)
    try:
        assert main(args) == 0
    finally:
        glog.set_stream(None)
    log = stream.getvalue()
    return float(re.findall(r"Test net output #0: accuracy = (\S+)", log)[-1]), log


def test_finetuning_beats_training_from_scratch(golden, tmp_path, monkeypatch):
    monkeypatch.chdir(golden)
    pre = _solver(tmp_path / "pre.prototxt", "train/net.prototxt", str(tmp_path / "pre"), 0.01, PRETRAIN_ITERS, 1)
    pretrained, _ = _final_accuracy(["train", "-solver", pre])
    assert pretrained > 0.8
    weights = str(tmp_path / f"pre_iter_{PRETRAIN_ITERS}.caffemodel")
    for seed in (1, 2, 3):
        ft = _solver(tmp_path / "ft.prototxt", "train/net_finetune.prototxt", str(tmp_path / f"ft{seed}"), 0.001,
                     FINETUNE_ITERS, seed)
        tuned, log = _final_accuracy(["train", "-solver", ft, "-weights", weights])
        assert "Ignoring source layer ip2" in log
        sc = _solver(tmp_path / "sc.prototxt", "train/net_finetune.prototxt", str(tmp_path / f"sc{seed}"), 0.001,
                     FINETUNE_ITERS, seed)
        scratch, _ = _final_accuracy(["train", "-solver", sc])
        assert tuned - scratch >= MARGIN, f"seed {seed}: fine-tuned {tuned} vs scratch {scratch}"


@pytest.mark.parametrize("layer", ["conv1"])
def test_frozen_layer_keeps_its_weights(golden, tmp_path, monkeypatch, layer):
    from caffecompat.formats.caffemodel import read_weights

    monkeypatch.chdir(golden)
    ft = _solver(tmp_path / "ft.prototxt", "train/net_finetune.prototxt", str(tmp_path / "ft"), 0.01, 5, 1)
    _final_accuracy(["train", "-solver", ft, "-weights", "train/out/sgd_step_iter_24.caffemodel"])
    before = read_weights(golden / "train" / "out" / "sgd_step_iter_24.caffemodel").blobs[layer]
    after = read_weights(tmp_path / "ft_iter_5.caffemodel").blobs[layer]
    for a, b in zip(before, after):
        assert (a == b).all()
