"""Reading and writing protobuf messages as Caffe stores them, with errors that name the file.

Binary files (.caffemodel, .binaryproto, .solverstate) are serialized messages;
text files (.prototxt) are protobuf text format. Writes are atomic: the bytes
go to a temporary file beside the target, which is renamed over it at the end,
so an interrupted write never leaves a half-written file under the real name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from google.protobuf import message as pb_message
from google.protobuf import text_format

from caffecompat.errors import CaffeCompatError

M = TypeVar("M", bound=pb_message.Message)


def read_bytes(path: str | os.PathLike, what: str) -> bytes:
    """The file's bytes; a missing, unreadable or empty file is a CaffeCompatError."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise CaffeCompatError(f"{p}: no such {what} file") from None
    except IsADirectoryError:
        raise CaffeCompatError(f"{p}: is a directory, expected a {what} file") from None
    except OSError as e:
        raise CaffeCompatError(f"{p}: cannot read {what} file: {e.strerror}") from None
    if not data:
        raise CaffeCompatError(f"{p}: {what} file is empty")
    return data


def parse_binary(data: bytes | memoryview, cls: type[M], path: str | os.PathLike, what: str) -> M:
    """Parse serialized bytes into `cls`, naming `path` when they are not such a message."""
    msg = cls()
    try:
        msg.ParseFromString(data)
    except pb_message.DecodeError as e:
        raise CaffeCompatError(
            f"{path}: not a valid {what} ({cls.DESCRIPTOR.name} protobuf): {e}; "
            "the file may be truncated or of another kind"
        ) from None
    return msg


def read_binary(path: str | os.PathLike, cls: type[M], what: str) -> M:
    """Read a binary protobuf file (caffemodel, binaryproto, solverstate)."""
    return parse_binary(read_bytes(path, what), cls, path, what)


def parse_text(text: str, cls: type[M], path: str | os.PathLike, what: str) -> M:
    """Parse protobuf text format; errors carry file:line:column as protobuf reports them."""
    msg = cls()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as e:
        loc = f"{path}:{e.GetLine()}:{e.GetColumn()}" if e.GetLine() is not None else str(path)
        detail = str(e).split(" : ", 1)[-1] if e.GetLine() is not None else str(e)
        raise CaffeCompatError(f"{loc}: malformed {what}: {detail}") from None
    return msg


def read_text(path: str | os.PathLike, cls: type[M], what: str) -> M:
    """Read a protobuf text file (prototxt)."""
    data = read_bytes(path, what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CaffeCompatError(f"{path}: {what} is not text (is it a binary file?)") from None
    return parse_text(text, cls, path, what)


def write_atomic(path: str | os.PathLike, data: bytes | Iterable[bytes | memoryview]) -> None:
    """Write `data` (bytes, or buffers written one after another) to `path` through a
    temporary file and a rename."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise CaffeCompatError(f"{p}: cannot write, folder {parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                for chunk in data:
                    f.write(chunk)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_binary(path: str | os.PathLike, msg: pb_message.Message) -> None:
    """Serialize `msg` to `path` atomically."""
    write_atomic(path, msg.SerializeToString())


def write_text(path: str | os.PathLike, msg: pb_message.Message) -> None:
    """Write `msg` as protobuf text to `path` atomically."""
    write_atomic(path, text_format.MessageToString(msg).encode("utf-8"))
