#!/usr/bin/env python3
"""Generate the `shapes` image classification data set: 4 classes of drawn shapes.

Each image is a small colour picture (default 32x32 PNG) of one shape -- circle,
square, triangle or cross -- in a random colour, position, size and rotation,
on a noisy background of another random colour. The output folder gets

    train/<class>_<index>.png, val/<class>_<index>.png   the images
    train.txt, val.txt                                     Caffe list files: `relative/path label`
    labels.txt                                             class names, line i is label i

The list paths are relative to the output folder, so it is the ROOTFOLDER/ of
`caffecompat convert-lmdb`. Everything is drawn from one seeded numpy generator:
the same arguments give byte-identical files. Only numpy and OpenCV are used.

    python -m caffecompat.examples.shapes.make_images OUT_DIR [--train 800] [--val 200] [--seed 1] [--size 32]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

CLASSES = ("circle", "square", "triangle", "cross")


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A background and a shape colour (BGR) at least a clear distance apart."""
    while True:
        bg = rng.integers(0, 256, 3)
        fg = rng.integers(0, 256, 3)
        if np.abs(bg - fg).sum() >= 180:
            return bg, fg


def _rotated(points: np.ndarray, angle: float, centre: tuple[float, float]) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return points @ rot.T + np.array(centre)


def draw_shape(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One size x size BGR uint8 image of shape class `label`."""
    bg, fg = _contrasting_colours(rng)
    img = np.empty((size, size, 3), np.float64)
    img[:] = bg
    # Background texture: a smooth gradient plus pixel noise.
    yy, xx = np.mgrid[0:size, 0:size] / size
    img += (rng.uniform(-30, 30) * xx + rng.uniform(-30, 30) * yy)[..., None]
    img += rng.normal(0, 12, img.shape)
    canvas = np.clip(img, 0, 255).astype(np.uint8)

    r = rng.uniform(0.22, 0.36) * size  # "radius" of the shape
    margin = r + 1
    cx, cy = rng.uniform(margin, size - margin, 2)
    angle = rng.uniform(0, 2 * np.pi)
    colour = tuple(int(v) for v in fg)
    shift = 4  # sub-pixel precision bits for OpenCV's drawing functions
    scale = 1 << shift

    def fill(pts: np.ndarray) -> None:
        cv2.fillPoly(canvas, [np.round(pts * scale).astype(np.int32)], colour, cv2.LINE_AA, shift)

    name = CLASSES[label]
    if name == "circle":
        cv2.circle(canvas, (round(cx * scale), round(cy * scale)), round(r * scale), colour, -1, cv2.LINE_AA, shift)
    elif name == "square":
        h = r / np.sqrt(2) * 1.15
        fill(_rotated(np.array([[-h, -h], [h, -h], [h, h], [-h, h]]), angle, (cx, cy)))
    elif name == "triangle":
        a = angle + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
        fill(np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], axis=1))
    else:  # cross: two bars
        w = r * rng.uniform(0.25, 0.4)
        bar = np.array([[-r, -w], [r, -w], [r, w], [-r, w]])
        fill(_rotated(bar, angle, (cx, cy)))
        fill(_rotated(bar, angle + np.pi / 2, (cx, cy)))

    # Light noise over the shape as well, so no class is a flat colour.
    noisy = canvas.astype(np.int16) + rng.normal(0, 6, canvas.shape).astype(np.int16)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def make_split(out: Path, split: str, count: int, size: int, ext: str, rng: np.random.Generator) -> list[str]:
    """Write `count` images of `split` (classes balanced, in shuffled order); return the list lines."""
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    labels = rng.permutation(np.arange(count) % len(CLASSES))
    lines = []
    for i, label in enumerate(labels):
        rel = f"{split}/{CLASSES[label]}_{i:05d}.{ext}"
        img = draw_shape(int(label), size, rng)
        if not cv2.imwrite(str(out / rel), img):
            raise OSError(f"could not write {out / rel}")
        lines.append(f"{rel} {label}\n")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="output folder (created; existing images are overwritten)")
    parser.add_argument("--train", type=int, default=800, help="number of training images (default 800)")
    parser.add_argument("--val", type=int, default=200, help="number of validation images (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--size", type=int, default=32, help="image width and height in pixels (default 32)")
    parser.add_argument("--format", choices=("png", "jpg"), default="png", help="image file format (default png)")
    args = parser.parse_args(argv)
    if args.train < 0 or args.val < 0:
        parser.error("--train and --val must not be negative")
    if args.size < 16:
        parser.error("--size must be at least 16")

    rng = np.random.default_rng(args.seed)
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", args.train), ("val", args.val)):
        lines = make_split(out, split, count, args.size, args.format, rng)
        (out / f"{split}.txt").write_text("".join(lines))
    (out / "labels.txt").write_text("".join(f"{name}\n" for name in CLASSES))
    print(f"wrote {args.train} training and {args.val} validation images ({args.size}x{args.size} "
          f"{args.format}, {len(CLASSES)} classes) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
