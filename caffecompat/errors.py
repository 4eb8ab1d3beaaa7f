"""The one error type users see: the CLI prints its message on one line and exits 1."""

from __future__ import annotations

import os


class CaffeCompatError(Exception):
    """A problem with the user's files, flags or nets, stated so the user can fix it.

    The message names the file, layer or field at fault and, where there is
    one, the fix. Anything else that escapes is a bug in caffecompat.
    """


class NotSupportedError(CaffeCompatError):
    """A Caffe feature caffecompat does not implement yet ("not supported: X")."""

    def __init__(self, what: str) -> None:
        super().__init__(f"not supported: {what}")


class DamagedDataError(CaffeCompatError):
    """A dataset's own structure is damaged (an LMDB page, say); training snapshots before it stops."""


def printable(name: object, keep_newlines: bool = False) -> str:
    """`name` (text, bytes or a path taken from a file) with its non-printable characters escaped.

    A record key or a layer name holding terminal escapes (ESC, CR, BEL) must not
    retitle or clear the user's terminal when printed: each becomes `\\x1b`-style
    text; bytes that are not UTF-8 (or a path's undecodable bytes) become `\\xNN`.
    """
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if isinstance(name, bytes):
        name = name.decode("utf-8", errors="surrogateescape")
    text = str(name)
    if text.isprintable() or (keep_newlines and text.replace("\n", "").replace("\t", "").isprintable()):
        return text  # the common case, at C speed (a big net's log is megabytes)
    out = []
    for ch in text:
        if ch.isprintable() or (keep_newlines and ch in "\n\t"):
            out.append(ch)
        elif "\udc80" <= ch <= "\udcff":  # an undecodable byte kept by surrogateescape
            out.append(f"\\x{ord(ch) - 0xdc00:02x}")
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)
