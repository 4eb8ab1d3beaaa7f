#!/usr/bin/env python3
"""Fine-tuning with a renamed head (Caffe's Flickr Style recipe) against the same net from scratch.

    python examples/transfer/finetune.py [--full] [--work DIR]

1. Pretrain the shapes net on the source task (4 classes, many images), or reuse those weights.
2. Fine-tune it on the target task (5 new classes, a few images each): the last layer is renamed
   (fc_source -> fc_target, so -weights copies every layer but that one, which starts from its filler)
   and learns 10x faster (lr_mult 10/20); base_lr is 10x lower than the pretraining's and the step
   comes sooner, as in models/finetune_flickr_style.
3. Train the same net with the same solver from scratch (no -weights), for the same iterations, as
   Caffe's fine-tuning notebook compares them.

It prints both validation accuracies; the fine-tuned net wins by a clear margin.
"""

from __future__ import annotations

import sys

from common import TARGET_CLASSES, Example, finetune_and_scratch, prepare_data, pretrained, shapes_net

PRETRAIN_LR = 0.05


def main(argv: list[str] | None = None) -> dict:
    ex = Example("finetune", __doc__.split("\n\n")[0], argv)
    data = prepare_data(ex)
    weights = pretrained(ex, data, "shapes", shapes_net, PRETRAIN_LR)
    curves = finetune_and_scratch(ex, data, weights, shapes_net, base_lr=PRETRAIN_LR / 10)
    s = ex.setting
    return ex.report(
        f"Validation accuracy on the target task ({len(TARGET_CLASSES)} classes, {s.target_train_per_class} "
        f"training images each, {len(TARGET_CLASSES) * s.target_val_per_class} validation images) after "
        f"{s.finetune_iters} iterations:",
        [("fine-tuned from the pretrained net", curves["finetuned"][-1]),
         ("trained from scratch", curves["scratch"][-1])],
        {"curves": curves})


if __name__ == "__main__":
    main()
    sys.exit(0)
