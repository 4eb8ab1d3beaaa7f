"""`caffecompat parse-log LOG OUTDIR`: Caffe's tools/extra/parse_log.py.

Writes OUTDIR/<log name>.train and OUTDIR/<log name>.test, the CSV tables
parse_log.py writes (NumIters, Seconds, LearningRate, then one column per net
output), from a log of caffecompat's or of the original Caffe's, either glog
date form.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from caffecompat.commands.common import flag
from caffecompat.errors import CaffeCompatError
from caffecompat.traininglog import parse_log, write_csv


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `parse-log` subcommand."""
    p = sub.add_parser("parse-log", help="parse a training log into .train and .test CSV files (parse_log.py)",
                       description="Parse a Caffe training log into two CSV files containing training and testing "
                                   "information, as Caffe's tools/extra/parse_log.py does: OUTDIR/<LOG name>.train "
                                   "and OUTDIR/<LOG name>.test (a file with no rows is not written).")
    p.add_argument("log", metavar="LOG", help="the training log (caffecompat's or Caffe's)")
    p.add_argument("output_dir", metavar="OUTDIR", help="the folder to write the CSV files into")
    flag(p, "delimiter", default=",", help="column delimiter in the output files (default ',')")
    flag(p, "verbose", action="store_true", help="say which files were written")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Parse and write."""
    if not Path(args.output_dir).is_dir():
        raise CaffeCompatError(f"{args.output_dir}: no such folder; create it first")
    if len(args.delimiter) != 1:
        raise CaffeCompatError(f"-delimiter {args.delimiter!r}: must be one character")
    train, test = parse_log(args.log)
    base = os.path.basename(args.log)
    for suffix, rows in (("train", train), ("test", test)):
        path = os.path.join(args.output_dir, f"{base}.{suffix}")
        written = write_csv(path, rows, args.delimiter)
        if args.verbose:
            print(f"Wrote {path}" if written else f"Not writing {path}; no lines to write")
    return 0
