"""The `caffecompat` command: Caffe's tools as subcommands, with Caffe's single-dash flags.

Each subcommand lives in caffecompat/commands/<name>.py and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int`.
Errors of our own (CaffeCompatError), running out of memory and unexpected
system errors print as one line and exit with status 1.

Flags take gflags' syntax as in Caffe's tools (caffecompat.gflags), every
subcommand takes glog's -log_dir, -minloglevel and -logtostderr (and reads
GLOG_* from the environment), and Caffe's tool names (`convert_imageset`,
`compute_image_mean`, `upgrade_net_proto_text`, ...) work as subcommands and
as console scripts of their own.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from caffecompat import __version__, gflags, glog
from caffecompat.errors import CaffeCompatError, printable
from caffecompat.formats import userproto

# Subcommand modules, in the order `caffecompat --help` lists them.
COMMANDS = [
    "train",
    "test",
    "time",
    "convert",
    "convert_lmdb",
    "compute_mean",
    "make_list",
    "extract_features",
    "classify",
    "finetune",
    "upgrade",
    "device_query",
    "parse_log",
    "plot",
    "example",
]

# Caffe's tool names (and other spellings) -> the subcommand and flags they stand for.
ALIASES: dict[str, list[str]] = {
    "convert_imageset": ["convert-lmdb"],
    "compute_image_mean": ["compute-mean"],
    "upgrade_net_proto_text": ["upgrade", "-text"],
    "upgrade_net_proto_binary": ["upgrade", "-binary"],
    "upgrade_solver_proto_text": ["upgrade", "-solver"],
    "extract_features": ["extract-features"],
    "device-query": ["device_query"],
    "parse_log": ["parse-log"],
}

# The program name glog gives the log files of a subcommand: the Caffe tool it imitates.
_PROGRAMS = {"train": "caffe", "finetune": "caffe", "test": "caffe", "time": "caffe", "device_query": "caffe",
             "convert-lmdb": "convert_imageset", "compute-mean": "compute_image_mean",
             "extract-features": "extract_features"}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="caffecompat",
        description="Caffe's command-line tools, with Caffe's semantics, on ONNX Runtime.",
        epilog="Caffe's tool names work as commands too: " + ", ".join(
            f"{name} (= {' '.join(target)})" for name, target in ALIASES.items() if "_" in name) + ".",
    )
    parser.add_argument("--version", action="version", version=f"caffecompat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"caffecompat.commands.{name}").register(sub)
    for command in set(sub.choices.values()):
        _add_glog_flags(command)
        gflags.add_negations(command)
    return parser


def _add_glog_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("glog flags (also read from GLOG_<flag> in the environment)")
    group.add_argument("-log_dir", "--log_dir", dest="log_dir", default=None, metavar="DIR",
                       help="also write glog's log files into DIR (<program>.<host>.<user>.log.INFO.<date>-<time>."
                            "<pid> and the <program>.INFO symlink)")
    group.add_argument("-minloglevel", "--minloglevel", dest="minloglevel", type=int, default=None, metavar="N",
                       help="log only severities >= N: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL (default 0)")
    group.add_argument("-logtostderr", "--logtostderr", dest="logtostderr", action="store_true", default=None,
                       help="log to stderr only, write no log files")
    parser.add_argument("-max_image_pixels", "--max_image_pixels", dest="max_image_pixels", type=int, default=None,
                        metavar="N", help="refuse image files and encoded records above N pixels before decoding "
                                          "them (default $CAFFECOMPAT_MAX_IMAGE_PIXELS, else 89478485 as PIL)")


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


def resolve_alias(argv: list[str]) -> tuple[list[str], str | None]:
    """(argv with a Caffe tool name replaced by its subcommand and flags, that tool name or None)."""
    if argv and argv[0] in ALIASES:
        return ALIASES[argv[0]] + argv[1:], argv[0]
    return argv, None


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The parsed command line (aliases resolved, gflags' boolean forms rewritten); sets `args.program`.

    Raises CaffeCompatError for a malformed boolean value; argparse exits on other errors.
    """
    argv, program = resolve_alias(list(argv))
    parser = build_parser()
    command = _subparser(parser, argv[0]) if argv else None
    if command is not None:
        argv = argv[:1] + gflags.rewrite_booleans(command, argv[1:])
    args = parser.parse_args(argv)
    args.program = program or _PROGRAMS.get(args.command, "caffecompat")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if resolve_alias(argv)[0][:1] == ["train"]:
        # caffe train's signal effects hold from the very start (see solver.signals).
        from caffecompat.solver.signals import record_early

        record_early()
    try:
        args = parse_args(argv)
    except CaffeCompatError as e:
        print(f"caffecompat {printable(resolve_alias(argv)[0][0])}: error: {printable(e)}", file=sys.stderr)
        return 1
    try:
        glog.configure(args.program, log_dir=args.log_dir, minloglevel=args.minloglevel,
                       logtostderr=args.logtostderr)
        if args.max_image_pixels is not None or "caffecompat.data.image_io" in sys.modules:
            from caffecompat.data import image_io  # imports OpenCV: only when images may be read

            image_io.set_max_pixels(args.max_image_pixels)
        # -proto FILE: every file this command reads is read with that schema.
        with userproto.using(getattr(args, "proto", None)):
            return int(args.func(args) or 0)
    except CaffeCompatError as e:
        # One line whatever the message holds: names from files are escaped (errors.printable).
        print(f"caffecompat {args.command}: error: {printable(e)}", file=sys.stderr)
        glog.to_files("E", "caffecompat", f"caffecompat {args.command}: error: {printable(e)}")
        return 1
    except MemoryError:
        print(f"caffecompat {args.command}: error: out of memory: the net, its batches or a file being read need "
              "more memory than this process may use; reduce the batch size or the net's size", file=sys.stderr)
        return 1
    except OSError as e:
        # A system error no check anticipated (a failing disk, a file vanishing): one line naming it.
        where = f"{e.filename}: " if e.filename else ""
        print(f"caffecompat {args.command}: error: {printable(where)}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"caffecompat {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        glog.set_terminal_bar(None)
        glog.shutdown()


def _alias_script(name: str):
    def run() -> None:
        sys.exit(main([name, *sys.argv[1:]]))

    run.__doc__ = f"The `{name}` console script: `caffecompat {' '.join(ALIASES[name])}`."
    return run


# Console scripts named as Caffe's tools (pyproject.toml [project.scripts]).
convert_imageset = _alias_script("convert_imageset")
compute_image_mean = _alias_script("compute_image_mean")
upgrade_net_proto_text = _alias_script("upgrade_net_proto_text")
upgrade_net_proto_binary = _alias_script("upgrade_net_proto_binary")
upgrade_solver_proto_text = _alias_script("upgrade_solver_proto_text")
extract_features = _alias_script("extract_features")


if __name__ == "__main__":
    sys.exit(main())
