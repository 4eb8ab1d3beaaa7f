"""`caffecompat example NAME DIR`: run a bundled example in a folder, as the repository's examples/ scripts do.

    caffecompat example shapes DIR [-train N] [-val N] [-iterations N] [-seed S]
"""

from __future__ import annotations

import argparse
import os

from caffecompat.examples.shapes import run as shapes


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the example subcommand."""
    p = subparsers.add_parser(
        "example", help="run a bundled example in a folder (shapes: images -> LMDB -> mean -> train -> test -> "
                        "fine-tune -> ONNX)",
        description="Run a bundled example, installed with the package, in the folder you name. shapes draws a "
                    "4-class image set, converts it to LMDB, computes its mean, trains, tests and fine-tunes a small "
                    "net and exports it to ONNX, as examples/shapes/run.sh does in a clone.",
    )
    examples = p.add_subparsers(dest="example", metavar="NAME")
    examples.required = True
    shapes.add_arguments(examples.add_parser("shapes", help="the shapes example (about a minute on a laptop CPU)",
                                             description=shapes.__doc__.split("\n\n")[0]))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the chosen example; exit status 0 (a failing step raises CaffeCompatError)."""
    # glog's flags given to `example` hold for every step (each a caffecompat command of its own).
    glog_env = {}
    if args.log_dir is not None:
        glog_env["GLOG_log_dir"] = os.path.abspath(args.log_dir)
    if args.minloglevel is not None:
        glog_env["GLOG_minloglevel"] = str(args.minloglevel)
    if args.logtostderr:
        glog_env["GLOG_logtostderr"] = "1"
    shapes.run(args.work_dir, args.train, args.val, args.iterations, args.seed, glog_env=glog_env)
    return 0
