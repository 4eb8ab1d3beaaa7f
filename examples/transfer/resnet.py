#!/usr/bin/env python3
"""A ResNet-style net with BatchNorm, fine-tuned with Adam and the `exp` learning-rate policy; snapshots every
N iterations, the training curves plotted with `caffecompat plot`, and the final model's predictions on the
validation images written by `caffecompat classify`.

    python examples/transfer/resnet.py [--full] [--work DIR]

1. Pretrain the net (conv-BatchNorm-Scale-ReLU stages, each followed by max pooling and a residual block
   with an identity shortcut; an InnerProduct head on the last 6 x 6 map) on the source task, or reuse
   those weights.
2. Fine-tune it on the target task with the head renamed (lr_mult 10/20): Adam, lr_policy "exp",
   a snapshot every N iterations; and train the same net from scratch with the same solver.
3. Plot both runs' curves (caffecompat plot; needs matplotlib).
4. Classify the validation image folder with the deploy net and the last snapshot (caffecompat classify),
   and check its accuracy against the training run's last test.
"""

from __future__ import annotations

import csv
import importlib.util
import sys

from common import TARGET_CLASSES, Data, Example, finetune_and_scratch, head, prepare_data, pretrained

PRETRAIN_LR = 0.01  # SGD; 0.05 makes this BatchNorm net diverge in its first iterations
FINETUNE_LR = 0.001  # Adam's base_lr
CHANNELS = (16, 32)


def _conv_bn(name: str, bottom: str, channels: int, stride: int = 1, relu: bool = True) -> str:
    text = (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" param {{ lr_mult: 1 }}\n'
            f'  convolution_param {{ num_output: {channels} kernel_size: 3 pad: 1 stride: {stride} bias_term: false '
            'weight_filler { type: "msra" } } }\n'
            f'layer {{ name: "{name}_bn" type: "BatchNorm" bottom: "{name}" top: "{name}" }}\n'
            f'layer {{ name: "{name}_scale" type: "Scale" bottom: "{name}" top: "{name}" '
            'scale_param { bias_term: true } }\n')
    if relu:
        text += f'layer {{ name: "{name}_relu" type: "ReLU" bottom: "{name}" top: "{name}" }}\n'
    return text


def _residual(name: str, bottom: str, channels: int) -> str:
    return (_conv_bn(f"{name}_a", bottom, channels) + _conv_bn(f"{name}_b", f"{name}_a", channels, relu=False)
            + f'layer {{ name: "{name}" type: "Eltwise" bottom: "{bottom}" bottom: "{name}_b" top: "{name}" '
              'eltwise_param { operation: SUM } }\n'
              f'layer {{ name: "{name}_relu" type: "ReLU" bottom: "{name}" top: "{name}" }}\n')


def _max_pool(name: str, bottom: str) -> str:
    return (f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}" '
            'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n')


def body() -> str:
    """Two stages of conv-BN-Scale-ReLU, max pooling and a residual block -> `res2`.

    (Global average pooling, the usual ResNet ending, learns this task too slowly for a CI-sized run.)
    """
    a, b = CHANNELS
    return (_conv_bn("conv1", "data", a) + _max_pool("pool1", "conv1") + _residual("res1", "pool1", a)
            + _conv_bn("conv2", "res1", b) + _max_pool("pool2", "conv2") + _residual("res2", "pool2", b))


def resnet_net(train: str, val: str, classes: int, head_name: str, head_mult: float = 1, train_batch: int = 50,
               test_batch: int = 50) -> str:
    """The train_val net: Data layers on the LMDBs (source mean, scale 1/128, mirror at TRAIN), body, head."""
    def data(phase: str, source: str, batch: int, mirror: bool) -> str:
        return (f'layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: {phase} }}\n'
                f'  transform_param {{ mirror: {str(mirror).lower()} mean_file: "{Data.mean}" scale: 0.0078125 }}\n'
                f'  data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }} }}\n')
    return (f'name: "ResNetMini"\n{data("TRAIN", train, train_batch, True)}{data("TEST", val, test_batch, False)}'
            + body() + head("res2", head_name, classes, head_mult))


def deploy_net(size: int, classes: int) -> str:
    """The same net fed by an Input layer, ending in Softmax `prob`: what classify runs."""
    return (f'name: "ResNetMini"\nlayer {{ name: "data" type: "Input" top: "data" '
            f'input_param {{ shape {{ dim: 1 dim: 3 dim: {size} dim: {size} }} }} }}\n'
            + body() + head("res2", "fc_target", classes, 1, deploy=True))


def main(argv: list[str] | None = None) -> dict:
    ex = Example("resnet", __doc__.split("\n\n")[0], argv)
    s = ex.setting
    data = prepare_data(ex)
    weights = pretrained(ex, data, "resnet", resnet_net, PRETRAIN_LR)
    iters = s.finetune_iters
    every = max(1, iters // 3)  # a snapshot (and a test) every `every` iterations
    # exp policy: lr = base_lr * gamma^iter, here falling to a tenth over the run.
    gamma = round(0.1 ** (1 / iters), 6)
    curves = finetune_and_scratch(ex, data, weights, resnet_net, base_lr=FINETUNE_LR, solver_type="Adam",
                                  lr_policy="exp", gamma=gamma, snapshots=every)
    snapshots = sorted((ex.work / ex.name / "finetuned").glob("target_iter_*.caffemodel"),
                       key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    ex.note(f"snapshots of the fine-tuning run: {', '.join(p.name for p in snapshots)}")

    from caffecompat.cli import COMMANDS

    plotted = ""
    if "plot" not in COMMANDS:
        ex.note("skipping the plot: this caffecompat has no plot command")
    elif importlib.util.find_spec("matplotlib") is None:
        ex.note("skipping the plot: it needs matplotlib (pip install 'caffecompat[plot]')")
    else:
        plotted = ex.path("curves.png")
        ex.run("plot", ex.path("finetuned.log"), ex.path("scratch.log"), "-o", plotted,
               "-title", "ResNet-mini on the target task: fine-tuned vs from scratch", log="plot.log")

    deploy = ex.write("deploy.prototxt", deploy_net(s.size, len(TARGET_CLASSES)))
    predictions = ex.path("predictions.csv")
    ex.run("classify", "-model", deploy, "-weights", str(snapshots[-1].relative_to(ex.work)), "-mean_file", data.mean,
           "-scale", "0.0078125", "-labels", data.labels, "-top_k", "2", "-output", predictions,
           data.target_val_folder, log="classify.log")
    with open(ex.work / predictions, newline="") as f:
        rows = list(csv.DictReader(f))
    classified = sum(r["class_1"] == r["label"] for r in rows) / len(rows)
    return ex.report(
        f"Validation accuracy on the target task ({len(TARGET_CLASSES)} classes, {s.target_train_per_class} training "
        f"images each) after {iters} iterations of Adam with the exp policy:",
        [("fine-tuned ResNet-mini", curves["finetuned"][-1]),
         ("trained from scratch", curves["scratch"][-1]),
         (f"caffecompat classify, last snapshot ({len(rows)} images)", classified)],
        {"curves": curves, "snapshots": [p.name for p in snapshots], "plot": plotted, "predictions": predictions})


if __name__ == "__main__":
    main()
    sys.exit(0)
