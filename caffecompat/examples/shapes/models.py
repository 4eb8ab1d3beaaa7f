"""The shapes example's model definitions, copied into a work folder, on the files' schedule or a shorter one.

    python -m caffecompat.examples.shapes.models WORK_DIR [--iterations 600] [--val 400]

The five prototxts beside this module are package data and the one copy of the
definitions. With the default sizes they are copied byte for byte. `--iterations N`
scales both solvers' schedules to N training iterations the way the files relate
to their 600 (tests at 1/3, 2/3 and the end, the learning-rate step at 2/3, a
fine-tuning run of N/6); `--val N` sets test_iter so the tests cover N images.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from google.protobuf import text_format

from caffecompat.errors import CaffeCompatError
from caffecompat.formats import protofile
from caffecompat.proto import caffe_pb2

MODEL_FILES = ("train_val.prototxt", "deploy.prototxt", "solver.prototxt",
               "finetune_train_val.prototxt", "finetune_solver.prototxt")
SOLVERS = ("solver.prototxt", "finetune_solver.prototxt")
# What the files themselves are written for (solver.prototxt's max_iter, its test_iter x TEST batch_size).
ITERATIONS = 600
VALIDATION_IMAGES = 400
TEST_BATCH = 50  # the TEST Data layers' batch_size in train_val.prototxt and finetune_train_val.prototxt


def model_dir() -> Path:
    """The folder holding the five prototxts (inside the installed package)."""
    return Path(__file__).resolve().parent


def schedule(iterations: int, val: int) -> dict[str, dict[str, int]]:
    """Solver file name -> the iteration fields of a run of `iterations` iterations tested on `val` images."""
    if iterations <= 0 or iterations % 12:
        raise CaffeCompatError(f"shapes example: --iterations {iterations}: give a positive multiple of 12 (the "
                               "schedule tests at 1/3, 2/3 and the end, and fine-tunes for 1/6 with tests at halves)")
    if val <= 0 or val % TEST_BATCH:
        raise CaffeCompatError(f"shapes example: --val {val}: give a positive multiple of {TEST_BATCH}, the TEST "
                               "batch_size, so that the tests score every validation image once")
    test_iter = val // TEST_BATCH
    return {
        "solver.prototxt": {"max_iter": iterations, "test_interval": iterations // 3,
                            "stepsize": 2 * iterations // 3, "display": max(1, iterations // 30),
                            "test_iter": test_iter},
        "finetune_solver.prototxt": {"max_iter": iterations // 6, "test_interval": iterations // 12,
                                     "stepsize": iterations // 6, "display": max(1, iterations // 30),
                                     "test_iter": test_iter},
    }


def write_models(work: str | Path, iterations: int = ITERATIONS, val: int = VALIDATION_IMAGES) -> list[Path]:
    """Copy the five prototxts into `work`; the solvers rewritten when the sizes are not the files' own."""
    fields = schedule(iterations, val)
    work = Path(work)
    written = []
    for name in MODEL_FILES:
        source, target = model_dir() / name, work / name
        if name in SOLVERS and (iterations, val) != (ITERATIONS, VALIDATION_IMAGES):
            solver = protofile.read_text(source, caffe_pb2.SolverParameter, "solver prototxt")
            for field, value in fields[name].items():
                if field == "test_iter":
                    solver.test_iter[:] = [value]
                else:
                    setattr(solver, field, value)
            header = (f"# {name} of the shapes example, shortened to {iterations} training iterations tested on "
                      f"{val} images\n# (caffecompat.examples.shapes.models --iterations {iterations} --val {val}).\n")
            protofile.write_atomic(target, (header + text_format.MessageToString(solver)).encode(), "solver prototxt")
        else:
            shutil.copyfile(source, target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command line: write the definitions into a work folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work_dir", type=Path, help="the example's work folder (must exist)")
    parser.add_argument("--iterations", type=int, default=ITERATIONS,
                        help=f"training iterations, a multiple of 12 (default {ITERATIONS})")
    parser.add_argument("--val", type=int, default=VALIDATION_IMAGES,
                        help=f"validation images the tests score, a multiple of {TEST_BATCH} "
                             f"(default {VALIDATION_IMAGES})")
    args = parser.parse_args(argv)
    try:
        if not args.work_dir.is_dir():
            raise CaffeCompatError(f"{args.work_dir}: not a folder: create the work folder first")
        write_models(args.work_dir, args.iterations, args.val)
    except CaffeCompatError as e:
        print(f"caffecompat.examples.shapes.models: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
