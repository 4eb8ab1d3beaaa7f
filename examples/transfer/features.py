#!/usr/bin/env python3
"""The pretrained net as a frozen feature extractor: extract-features, then a linear classifier trained on the
features with `caffecompat train`, against full fine-tuning and against training from scratch.

    python examples/transfer/features.py [--full] [--work DIR]

1. Pretrain the shapes net on the source task, or reuse those weights (shared with finetune.py).
2. `caffecompat extract-features` runs the pretrained net (TEST phase) over the target images and writes
   their 64 ip1 features and their labels to LMDBs, one Datum per image, as Caffe's extract_features does.
3. A linear classifier (one InnerProduct layer, softmax loss) learns from those features alone: two Data
   layers read the feature and label databases side by side.
4. For comparison: full fine-tuning (every layer learns, renamed head at lr_mult 10/20) and the same net
   trained from scratch, for the same iterations.
"""

from __future__ import annotations

import math
import sys

from common import (
    TARGET_CLASSES,
    Data,
    Example,
    finetune_and_scratch,
    prepare_data,
    pretrained,
    shapes_body,
    shapes_net,
    solver,
    test_accuracies,
)

PRETRAIN_LR = 0.05
FEATURE = "ip1"  # the pretrained net's last hidden layer: 64 values per image, after its ReLU


def extract_net(source: str, batch: int, mean: str) -> str:
    """The pretrained net's body on one LMDB, no head: what extract-features runs."""
    return (f'name: "ShapesFeatures"\n'
            f'layer {{ name: "data" type: "Data" top: "data" top: "label"\n'
            f'  transform_param {{ mean_file: "{mean}" scale: 0.0078125 }}\n'
            f'  data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }} }}\n' + shapes_body())


def linear_net(train: tuple[str, str], val: tuple[str, str], train_batch: int, classes: int) -> str:
    """A linear softmax classifier reading (features, labels) LMDB pairs."""
    def data(phase: str, sources: tuple[str, str], batch: int) -> str:
        return "".join(f'layer {{ name: "{top}" type: "Data" top: "{top}" include {{ phase: {phase} }}\n'
                       f'  data_param {{ source: "{src}" batch_size: {batch} backend: LMDB }} }}\n'
                       for top, src in zip(("feature", "label"), sources))
    return (f'name: "LinearOnFeatures"\n{data("TRAIN", train, train_batch)}{data("TEST", val, 50)}'
            f'layer {{ name: "fc_target" type: "InnerProduct" bottom: "feature" top: "fc_target"\n'
            f'  inner_product_param {{ num_output: {classes} weight_filler {{ type: "xavier" }} '
            'bias_filler { type: "constant" } } }\n'
            # The label databases hold one value per image: an N x 1 x 1 x 1 label blob, as Caffe allows.
            'layer { name: "accuracy" type: "Accuracy" bottom: "fc_target" bottom: "label" top: "accuracy" '
            'include { phase: TEST } }\n'
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc_target" bottom: "label" top: "loss" }\n')


def extract(ex: Example, data: Data, weights: str, split: str, count: int) -> tuple[str, str]:
    """extract-features of every image of one target split: (feature LMDB, label LMDB)."""
    batch = max(b for b in range(1, 51) if count % b == 0)  # batches that cover the split exactly once
    net = ex.write(f"extract_{split}.prototxt",
                   extract_net(data.target_train if split == "train" else data.target_val, batch, data.mean))
    outs = (ex.path(f"{split}_{FEATURE}_lmdb"), ex.path(f"{split}_label_lmdb"))
    ex.run("extract-features", weights, net, f"{FEATURE},label", ",".join(outs), str(count // batch), "lmdb",
           "-overwrite", log=f"extract_{split}.log")
    return outs


def main(argv: list[str] | None = None) -> dict:
    ex = Example("features", __doc__.split("\n\n")[0], argv)
    s = ex.setting
    data = prepare_data(ex)
    weights = pretrained(ex, data, "shapes", shapes_net, PRETRAIN_LR)
    classes = len(TARGET_CLASSES)
    train = extract(ex, data, weights, "train", classes * s.target_train_per_class)
    val = extract(ex, data, weights, "val", classes * s.target_val_per_class)
    net = ex.write("linear.prototxt", linear_net(train, val, min(20, classes * s.target_train_per_class), classes))
    iters = s.finetune_iters
    ex.write("linear_solver.prototxt",
             solver(net, ex.path("linear/target"), base_lr=0.05, iters=iters, stepsize=iters // 2,
                    test_iter=math.ceil(classes * s.target_val_per_class / 50), test_interval=iters // 3))
    (ex.work / ex.name / "linear").mkdir(exist_ok=True)
    linear = test_accuracies(ex.run("train", "-solver", ex.path("linear_solver.prototxt"), log="linear.log"))
    curves = finetune_and_scratch(ex, data, weights, shapes_net, base_lr=PRETRAIN_LR / 10)
    return ex.report(
        f"Validation accuracy on the target task ({classes} classes, {s.target_train_per_class} training images "
        f"each) after {iters} iterations:",
        [(f"linear classifier on the frozen net's {FEATURE} features", linear[-1]),
         ("full fine-tuning", curves["finetuned"][-1]),
         ("trained from scratch", curves["scratch"][-1])],
        {"curves": {"linear": linear, **curves}})


if __name__ == "__main__":
    main()
    sys.exit(0)
