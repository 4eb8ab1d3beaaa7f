"""gflags' command-line syntax on top of argparse, as Caffe's tools accept it.

Caffe's tools parse flags with gflags: `-flag=value`, `--flag=value`,
`-flag value` and `--flag value` for every flag; for booleans also `-flag`,
`-noflag` and `-flag=true|false` (1/0, yes/no, t/f, y/n), never `-flag true`.
argparse takes the value forms already; `add_negations` gives every boolean
flag its `-noflag` spelling and `rewrite_booleans` turns `-flag=false` into
`-noflag` (argparse refuses an explicit value on a flag without arguments).
"""

from __future__ import annotations

import argparse

from caffecompat.errors import CaffeCompatError

_TRUE = ("true", "t", "yes", "y", "1")
_FALSE = ("false", "f", "no", "n", "0")


def _is_boolean(action: argparse.Action) -> bool:
    return isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))


def _names(action: argparse.Action) -> list[str]:
    """The flag names of an action, without dashes ("-gray", "--gray" -> ["gray"])."""
    return sorted({s.lstrip("-") for s in action.option_strings})


def add_negations(parser: argparse.ArgumentParser) -> None:
    """Give each boolean flag of `parser` gflags' `-noNAME` / `--noNAME` spelling (hidden from --help)."""
    taken = set(parser._option_string_actions)
    for action in list(parser._actions):
        if not _is_boolean(action):
            continue
        negated = not isinstance(action, argparse._StoreFalseAction)
        strings = [f"{dashes}no{name}" for name in _names(action) for dashes in ("-", "--")]
        strings = [s for s in strings if s not in taken]
        if not strings:
            continue
        kind = "store_false" if negated else "store_true"
        parser.add_argument(*strings, dest=action.dest, action=kind, default=argparse.SUPPRESS,
                            help=argparse.SUPPRESS)
        taken.update(strings)


def rewrite_booleans(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """argv with each `-flag=value` of a boolean flag of `parser` written `-flag` or `-noflag`."""
    booleans = {s: a for s, a in parser._option_string_actions.items() if _is_boolean(a)}
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        if arg.startswith("-") and "=" in arg:
            option, value = arg.split("=", 1)
            action = booleans.get(option)
            if action is not None:
                low = value.strip().lower()
                if low in _TRUE:
                    out.append(option)
                elif low in _FALSE:
                    dashes = "--" if option.startswith("--") else "-"
                    opposite = f"{dashes}no{option.lstrip('-')}"
                    if opposite not in parser._option_string_actions:
                        # A -noX flag itself given =false: -noX=false means X.
                        opposite = f"{dashes}{option.lstrip('-').removeprefix('no')}"
                    out.append(opposite)
                else:
                    raise CaffeCompatError(f"{arg}: {option} is a boolean flag; give {option}=true or "
                                           f"{option}=false (or {option} alone)")
                continue
        out.append(arg)
    return out
