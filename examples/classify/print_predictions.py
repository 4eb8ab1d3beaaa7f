"""Per-sample predictions and accuracy from `caffecompat classify -output results.h5`, read one dataset at a time
(as rmldnn's print_predictions.py reads its predictions file).

    python examples/classify/print_predictions.py results.h5 [--labels labels.txt] [--quiet]

Every dataset under the file's `predictions` group is one image's scores: its
argmax is the predicted class, its `file` attribute the image, and its
`label` attribute, when present, the true class. Prints one line per image
(file, predicted class and name, score) and, when images carry labels, the
top-1 accuracy over them, counted as Caffe's Accuracy layer counts it: a hit
when no other class scores at least as high as the true one.
"""

from __future__ import annotations

import argparse
import sys

import h5py
import numpy as np


def per_sample(path: str) -> list[tuple[int, str, np.ndarray, int | None]]:
    """(row, file, scores, true label or None) of every per-image dataset, in the file's row order."""
    samples = []

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            label = int(obj.attrs["label"]) if "label" in obj.attrs else None
            samples.append((int(obj.attrs["index"]), str(obj.attrs["file"]), obj[()], label))

    with h5py.File(path, "r") as f:
        f["predictions"].visititems(visit)
    return sorted(samples, key=lambda s: s[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="an HDF5 file written by caffecompat classify")
    parser.add_argument("--labels", help="class names, one per line (default: the file's own `labels`)")
    parser.add_argument("--quiet", action="store_true", help="print only the accuracy")
    args = parser.parse_args(argv)
    names = None
    if args.labels:
        with open(args.labels, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    else:
        with h5py.File(args.results, "r") as f:
            if "labels" in f:
                names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in f["labels"][()]]
    hits = labelled = 0
    for _, file, scores, label in per_sample(args.results):
        predicted = int(np.argmax(scores))
        if not args.quiet:
            name = f" {names[predicted]}" if names and predicted < len(names) else ""
            print(f"{file}: class {predicted}{name} ({scores[predicted]:.6g})")
        if label is not None:
            labelled += 1
            # Caffe's AccuracyLayer (top 1): no other class scores at least as high as the true one.
            hits += int(np.count_nonzero(scores >= scores[label])) == 1
    if labelled:
        print(f"accuracy = {hits / labelled:.6g} ({hits}/{labelled} labelled images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
