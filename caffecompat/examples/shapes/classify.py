#!/usr/bin/env python3
"""Classify images with the exported shapes.onnx, outside caffecompat: plain onnxruntime.

The deploy net expects what the training net's Data layer gave it: a BGR image
as 1 x 3 x 32 x 32, minus the mean image (mean.binaryproto), times 0.0078125
(transform_param scale). Run from the example's work folder:

    python -m caffecompat.examples.shapes.classify images/val.txt --root images/   # accuracy over a list
    python -m caffecompat.examples.shapes.classify some.png other.png              # top class of each
"""

from __future__ import annotations

import argparse
import sys

import cv2
import numpy as np
import onnxruntime as ort

from caffecompat.formats.blob import read_binaryproto

SCALE = 0.0078125  # transform_param scale in train_val.prototxt (this folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="image files, or one Caffe list file (.txt) of 'path label' lines")
    parser.add_argument("--root", default="", help="prefix of the paths in a list file")
    parser.add_argument("--model", default="shapes.onnx")
    parser.add_argument("--mean", default="mean.binaryproto")
    parser.add_argument("--labels", default="labels.txt")
    args = parser.parse_args(argv)

    mean = read_binaryproto(args.mean)  # 1 x C x H x W
    names = open(args.labels).read().split()
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    h, w = mean.shape[2:]

    if len(args.inputs) == 1 and args.inputs[0].endswith(".txt"):
        lines = [line.split() for line in open(args.inputs[0]) if line.strip()]
        items = [(args.root + p, int(label)) for p, label in lines]
    else:
        items = [(p, None) for p in args.inputs]

    correct = 0
    for path, label in items:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            print(f"cannot read {path}", file=sys.stderr)
            return 1
        if img.shape[:2] != (h, w):
            img = cv2.resize(img, (w, h))  # as convert-lmdb -resize_height/-resize_width
        x = ((img.transpose(2, 0, 1)[None].astype(np.float32) - mean) * SCALE).astype(np.float32)
        prob = session.run(["prob"], {"data": x})[0][0]
        top = int(prob.argmax())
        if label is None:
            print(f"{path}: {names[top]} ({prob[top]:.3f})")
        else:
            correct += top == label
    if items and items[0][1] is not None:
        print(f"shapes.onnx accuracy on {args.inputs[0]}: {correct}/{len(items)} = {correct / len(items):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
