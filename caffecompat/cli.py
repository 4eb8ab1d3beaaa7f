"""The `caffecompat` command: Caffe's tools as subcommands, with Caffe's single-dash flags.

Each subcommand lives in caffecompat/commands/<name>.py and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int`.
Errors of our own (CaffeCompatError) print as one line and exit with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from caffecompat import __version__
from caffecompat.errors import CaffeCompatError

# Subcommand modules, in the order `caffecompat --help` lists them.
COMMANDS = [
    "train",
    "test",
    "time",
    "convert",
    "convert_lmdb",
    "compute_mean",
    "upgrade",
]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="caffecompat",
        description="Caffe's command-line tools, with Caffe's semantics, on ONNX Runtime.",
    )
    parser.add_argument("--version", action="version", version=f"caffecompat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"caffecompat.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CaffeCompatError as e:
        print(f"caffecompat {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"caffecompat {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
