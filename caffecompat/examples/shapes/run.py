"""The shapes example's steps in order, in a work folder: what examples/shapes/run.sh does, from the package.

    python -m caffecompat.examples.shapes WORK_DIR [--train 2400] [--val 400] [--iterations 600] [--seed 1]
    caffecompat example shapes WORK_DIR [...]

1. draw the images, 2. convert them to LMDB (convert_imageset), 3. compute the
mean image, 4. train, 5. score the weights (caffe test), 6. fine-tune from them,
7. export the deploy net to ONNX, 8. classify with plain onnxruntime. Each Caffe
step runs as its own `caffecompat` command in WORK_DIR (Caffe resolves the
prototxts' paths against the working directory); its log is shown and kept
(train.log, test.log, finetune.log). A re-run replaces what a previous run made
and leaves other files in WORK_DIR alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

import caffecompat
from caffecompat.errors import CaffeCompatError
from caffecompat.examples.shapes.models import ITERATIONS, VALIDATION_IMAGES, schedule, write_models

TRAIN_IMAGES = 2400
# What a run makes in its work folder (and a re-run removes first).
MADE_FOLDERS = ("images", "train_lmdb", "val_lmdb", "snapshots", "finetune_snapshots")
MADE_FILES = ("mean.binaryproto", "shapes.onnx", "labels.txt", "train.log", "test.log", "finetune.log")
# The log lines whose last value the summary reports, as run.sh's `accuracy` reads them.
SUMMARY = (("validation accuracy after training:   ", "train.log", "Test net output #0: accuracy"),
           ("validation accuracy, caffecompat test:", "test.log", "] accuracy = "),
           ("validation accuracy after fine-tuning:", "finetune.log", "Test net output #0: accuracy"))


def _command(args: list[str], work: Path, out: TextIO, log: Path | None = None,
             glog_env: dict[str, str] | None = None) -> None:
    """Run `args` (`caffecompat ...` or `python -m ...`) in `work`, its output shown on `out` and kept in `log`."""
    program = [sys.executable, "-m", "caffecompat.cli", *args[1:]] if args[0] == "caffecompat" else \
        [sys.executable, *args[1:]]
    env = {**os.environ, **(glog_env or {})}
    # The steps import the caffecompat running this: a source tree used without installing it is put on their path.
    package_root = Path(caffecompat.__file__).resolve().parent.parent
    if package_root.name not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(package_root), env.get("PYTHONPATH")) if p)
    kept = open(log, "w", encoding="utf-8") if log else None
    try:
        with subprocess.Popen(program, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, encoding="utf-8", errors="replace") as process:
            for line in process.stdout:
                out.write(line)
                out.flush()
                if kept:
                    kept.write(line)
    finally:
        if kept:
            kept.close()
    if process.returncode:
        raise CaffeCompatError(f"shapes example: `{' '.join(args)}` in {work} exited with status "
                               f"{process.returncode}; its output is above")


def last_value(log: Path, marker: str) -> str:
    """The text after 'accuracy = ' on the last line of `log` containing `marker` (run.sh's `accuracy`)."""
    lines = [line for line in log.read_text(encoding="utf-8").splitlines() if marker in line]
    return lines[-1].split("accuracy = ")[-1].strip() if lines else "(none)"


def run(work: str | Path, train: int = TRAIN_IMAGES, val: int = VALIDATION_IMAGES, iterations: int = ITERATIONS,
        seed: int = 1, out: TextIO | None = None, glog_env: dict[str, str] | None = None) -> None:
    """Run the whole example in `work` (created); raises CaffeCompatError when a step fails.

    `glog_env` (GLOG_log_dir, ...) is added to each step's environment: glog's flags given to the example.
    """
    out = out or sys.stdout

    def command(args: list[str], log: Path | None = None) -> None:
        _command(args, work, out, log, glog_env)

    fields = schedule(iterations, val)  # checks the sizes before anything is made
    if train <= 0:
        raise CaffeCompatError(f"shapes example: --train {train}: give a positive number of training images")
    work = Path(work).absolute()
    if work.exists() and not work.is_dir():
        raise CaffeCompatError(f"{work}: exists and is not a folder: name a folder for the example's outputs")
    work.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()

    def step(title: str) -> None:
        out.write(f"\n=== {title}\n")
        out.flush()

    for name in MADE_FOLDERS:
        shutil.rmtree(work / name, ignore_errors=True)
    for name in MADE_FILES:
        (work / name).unlink(missing_ok=True)
    (work / "snapshots").mkdir()
    (work / "finetune_snapshots").mkdir()

    step("1. Generate the images (images/, images/train.txt, images/val.txt)")
    from caffecompat.examples.shapes import make_images  # OpenCV, imported only when the example runs

    make_images.main([str(work / "images"), "--train", str(train), "--val", str(val), "--seed", str(seed)])
    shutil.copyfile(work / "images" / "labels.txt", work / "labels.txt")

    step("2. Convert them to LMDB (convert_imageset)")
    resize = ["-resize_height", "32", "-resize_width", "32"]
    command(["caffecompat", "convert-lmdb", *resize, "-shuffle", "images/", "images/train.txt", "train_lmdb"])
    command(["caffecompat", "convert-lmdb", *resize, "images/", "images/val.txt", "val_lmdb"])

    step("3. Compute the mean image (compute_image_mean)")
    command(["caffecompat", "compute-mean", "train_lmdb", "mean.binaryproto"])

    step("4. Train (caffe train)")
    write_models(work, iterations, val)
    command(["caffecompat", "train", "-solver", "solver.prototxt"], work / "train.log")
    weights = f"snapshots/shapes_iter_{iterations}.caffemodel"
    if not (work / weights).is_file():
        raise CaffeCompatError(f"shapes example: training wrote no {work / weights}")

    step("5. Score the trained weights on the validation set (caffe test)")
    test_iter = str(fields["solver.prototxt"]["test_iter"])
    command(["caffecompat", "test", "-model", "train_val.prototxt", "-weights", weights, "-iterations", test_iter],
            work / "test.log")

    step("6. Fine-tune from those weights with a new last layer (caffe train -weights)")
    command(["caffecompat", "train", "-solver", "finetune_solver.prototxt", "-weights", weights],
            work / "finetune.log")

    step("7. Export the deploy net with the trained weights to ONNX")
    command(["caffecompat", "convert", "deploy.prototxt", weights, "shapes.onnx"])

    step("8. Classify the validation images with shapes.onnx and plain onnxruntime")
    classify = ["python", "-m", "caffecompat.examples.shapes.classify"]
    command([*classify, "images/val.txt", "--root", "images/"])
    first = (work / "images" / "val.txt").read_text().split()[0]
    command([*classify, f"images/{first}"])

    step(f"Done in {time.monotonic() - start:.0f} s. Outputs in {work}:")
    for path in sorted([*(work / "snapshots").iterdir(), *(work / "finetune_snapshots").iterdir(),
                        work / "shapes.onnx"]):
        out.write(f"{path}\n")
    for title, log, marker in SUMMARY:
        out.write(f"  {title} {last_value(work / log, marker)}\n")
    out.flush()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The example's options (shared by `caffecompat example shapes` and `python -m caffecompat.examples.shapes`)."""
    parser.add_argument("work_dir", metavar="WORK_DIR", help="the folder for everything the example makes (created)")
    parser.add_argument("-train", "--train", type=int, default=TRAIN_IMAGES,
                        help=f"training images to draw (default {TRAIN_IMAGES})")
    parser.add_argument("-val", "--val", type=int, default=VALIDATION_IMAGES,
                        help=f"validation images, a multiple of 50 (default {VALIDATION_IMAGES})")
    parser.add_argument("-iterations", "--iterations", type=int, default=ITERATIONS,
                        help=f"training iterations, a multiple of 12; the schedule scales with it (default "
                             f"{ITERATIONS}; fine-tuning runs 1/6 of it)")
    parser.add_argument("-seed", "--seed", type=int, default=1, help="the images' random seed (default 1)")


def main(argv: list[str] | None = None) -> int:
    """`python -m caffecompat.examples.shapes`: run the example; exit status 0, or 1 with a one-line error."""
    parser = argparse.ArgumentParser(prog="python -m caffecompat.examples.shapes",
                                     description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run(args.work_dir, args.train, args.val, args.iterations, args.seed)
    except CaffeCompatError as e:
        print(f"caffecompat example shapes: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"caffecompat example shapes: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    return 0
