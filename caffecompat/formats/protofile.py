"""Reading and writing protobuf messages as Caffe stores them, with errors that name the file.

Binary files (.caffemodel, .binaryproto, .solverstate) are serialized messages;
text files (.prototxt) are protobuf text format. Writes are atomic: the bytes
go to a temporary file beside the target, which is renamed over it at the end,
so an interrupted write never leaves a half-written file under the real name
(caffecompat.outfiles, which also clears temporary files of killed runs).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from typing import TypeVar

from google.protobuf import message as pb_message
from google.protobuf import text_format

from caffecompat import gcpause, outfiles
from caffecompat.errors import CaffeCompatError, NotSupportedError, printable
from caffecompat.formats import textproto

M = TypeVar("M", bound=pb_message.Message)

_UNKNOWN_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "(\w+)"')
# The forks whose fields our schema has (proto/forks.proto), for the unknown-field error.
FORKS_KNOWN = ("SSD, OpenCV, DeepLab/PSPNet, SegNet, ShuffleNet, ReLU6, Fast R-CNN, R-FCN, the YOLOv2/v3 ports, "
               "pooling ceil_mode")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_regular(path: str | os.PathLike, what: str) -> int:
    """The size of `path`, which must be a regular file (symlinks followed); anything else is a
    CaffeCompatError naming it. A device (/dev/zero) would be read without end and a FIFO would block
    forever: nets, weights, lists and images are read only from regular files."""
    name = printable(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CaffeCompatError(f"{name}: no such {what} file") from None
    except OSError as e:
        raise CaffeCompatError(f"{name}: cannot read {what} file: {e.strerror}") from None
    except ValueError:  # a NUL character, which no file name can hold
        raise CaffeCompatError(f"{printable(repr(str(path)))}: no such {what} file (the name holds a NUL character)") \
            from None
    if not stat.S_ISREG(st.st_mode):
        article = "an" if what[:1] in "aeiou" else "a"
        raise CaffeCompatError(f"{name}: is {_kind(st.st_mode)}, expected {article} {what} file")
    return st.st_size


def read_bytes(path: str | os.PathLike, what: str) -> bytes:
    """The file's bytes; a missing, unreadable, empty or non-regular file is a CaffeCompatError."""
    check_regular(path, what)
    name = printable(path)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):  # replaced since check_regular looked
                raise CaffeCompatError(f"{name}: is {_kind(st.st_mode)}, expected a {what} file")
            data = f.read(st.st_size + 1)
    except FileNotFoundError:
        raise CaffeCompatError(f"{name}: no such {what} file") from None
    except IsADirectoryError:
        raise CaffeCompatError(f"{name}: is a directory, expected a {what} file") from None
    except OSError as e:
        raise CaffeCompatError(f"{name}: cannot read {what} file: {e.strerror}") from None
    if not data:
        raise CaffeCompatError(f"{name}: {what} file is empty")
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


def parse_text(text: str, cls: type[M], path: str | os.PathLike, what: str, *, schema: str | None = None) -> M:
    """Parse protobuf text format; errors carry file:line:column as protobuf reports them.

    `schema` names the user's caffe.proto the class comes from (-proto), for the
    error about a field it lacks.
    """
    msg = cls()
    with gcpause.paused():
        if textproto.parse_fast(text, msg):
            return msg
    msg = cls()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as e:
        loc = f"{path}:{e.GetLine()}:{e.GetColumn()}" if e.GetLine() is not None else str(path)
        detail = str(e).split(" : ", 1)[-1] if e.GetLine() is not None else str(e)
        unknown = _UNKNOWN_FIELD.match(detail)
        if unknown:
            message, field = unknown.group(1).rsplit(".", 1)[-1], unknown.group(2)
            if schema is None:
                detail = (f"unknown field '{field}' in {message}: neither BVLC Caffe nor the Caffe forks caffecompat "
                          f"reads ({FORKS_KNOWN}) have it; if the file comes from another Caffe fork, give that "
                          "fork's caffe.proto with -proto FILE")
            else:
                detail = (f"unknown field '{field}' in {message}: {schema} has no such field; is it the "
                          "caffe.proto of the fork this file comes from?")
        raise CaffeCompatError(f"{loc}: malformed {what}: {detail}") from None
    except RecursionError:  # a recursive -proto schema lets a text nest without end
        raise CaffeCompatError(f"{path}: malformed {what}: its messages nest too deeply to parse (deeper than "
                               "Python's recursion limit lets protobuf follow); no Caffe file nests so deep") from None
    return msg


def read_text_file(path: str | os.PathLike, what: str) -> str:
    """A text file's contents (a prototxt), or a CaffeCompatError naming it."""
    data = read_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if b"\0" in data[:8192]:
            raise CaffeCompatError(f"{printable(path)}: {what} is not text (is it a binary file?)") from None
        # Text holding a path with non-UTF-8 bytes: protobuf's string fields (net:, source:, ...) hold UTF-8 only.
        line = data.count(b"\n", 0, e.start) + 1
        raise NotSupportedError(f"bytes that are not UTF-8 in a {what} ({printable(path)}:{line}: "
                                f"{printable(data.splitlines()[line - 1][:200])}): protobuf's string fields hold "
                                "UTF-8 text only; rename the file or folder it names to a UTF-8 name") from None


def read_text(path: str | os.PathLike, cls: type[M], what: str) -> M:
    """Read a protobuf text file (prototxt)."""
    return parse_text(read_text_file(path, what), cls, path, what)


def write_atomic(path: str | os.PathLike, data: bytes | Iterable[bytes | memoryview], what: str = "file") -> None:
    """Write `data` (bytes, or buffers written one after another) to `path` through a
    temporary file and a rename; a failure leaves the old file and no temporary file
    (see caffecompat.outfiles)."""
    outfiles.write_atomic(path, data, what)


def write_binary(path: str | os.PathLike, msg: pb_message.Message, what: str = "file") -> None:
    """Serialize `msg` to `path` atomically."""
    write_atomic(path, msg.SerializeToString(), what)


def write_text(path: str | os.PathLike, msg: pb_message.Message, what: str = "file") -> None:
    """Write `msg` as protobuf text to `path` atomically."""
    write_atomic(path, text_format.MessageToString(msg).encode("utf-8"), what)
