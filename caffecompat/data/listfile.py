"""Image list files, `relative/path label` per line, as convert_imageset and ImageData read them."""

from __future__ import annotations

import re

from caffecompat.errors import CaffeCompatError
from caffecompat.formats.protofile import read_bytes

_INT = re.compile(r"[+-]?[0-9]+")


def read_list(path: str, what: str = "image list") -> list[tuple[str, int, int]]:
    """(image path, label, line number) for each line of the list file `path`.

    The label is the text after the line's last space, so image paths may hold
    spaces (Caffe's find_last_of(' ')). Blank lines are skipped. A line without a
    space, or whose label is not an integer, raises a CaffeCompatError naming
    the file and line; so does an empty list.
    """
    raw = read_bytes(path, what)
    # Paths are bytes to Caffe; surrogateescape keeps any non-UTF-8 byte round-tripping.
    text = raw.decode("utf-8", errors="surrogateescape")
    entries = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r").rstrip()
        if not line:
            continue
        image, sep, label = line.rpartition(" ")
        if not sep or not image.strip():
            raise CaffeCompatError(
                f"{path}:{lineno}: expected 'PATH LABEL' (path, a space, an integer label), got {line!r}"
            )
        if not _INT.fullmatch(label):
            raise CaffeCompatError(f"{path}:{lineno}: label {label!r} is not an integer (line {line!r})")
        value = int(label)
        if not -(2**31) <= value < 2**31:
            raise CaffeCompatError(f"{path}:{lineno}: label {value} does not fit a 32-bit int")
        entries.append((image, value, lineno))
    if not entries:
        raise CaffeCompatError(f"{path}: {what} file is empty (expected 'PATH LABEL' lines)")
    return entries
