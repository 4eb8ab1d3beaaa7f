#!/usr/bin/env python3
"""Classify image files with the deploy net and caffe.Classifier; run in WORK.

    cd WORK && python path/to/classify.py shapes_py_iter_300.caffemodel [--images 40]

It draws --images new shapes to WORK/images/*.png, reads them back with
caffe.io.load_image (RGB in [0, 1]) and lets the Classifier do what the data
layer did: channel swap to BGR, x 255, minus 128, / 128. Prints each image's
top class and the accuracy.
"""

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

import caffecompat as caffe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "shapes"))
from make_images import CLASSES, draw_shape  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights")
    parser.add_argument("--images", type=int, default=40)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(7)
    Path("images").mkdir(exist_ok=True)
    files, labels = [], []
    for i in range(args.images):
        label = int(rng.integers(len(CLASSES)))
        path = f"images/{i:03d}_{CLASSES[label]}.png"
        cv2.imwrite(path, draw_shape(label, 32, rng))
        files.append(path)
        labels.append(label)
    net = caffe.Classifier("deploy.prototxt", args.weights, mean=np.full(3, 128.0), raw_scale=255,
                           input_scale=1 / 128, channel_swap=(2, 1, 0))
    probs = net.predict([caffe.io.load_image(f) for f in files], oversample=False)
    top = probs.argmax(1)
    for f, t, p in list(zip(files, top, probs.max(1)))[:5]:
        print(f"{f}: {CLASSES[t]} ({p:.2f})")
    print(f"accuracy on {len(files)} new images: {np.mean(top == np.array(labels)):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
