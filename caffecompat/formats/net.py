"""Net definitions (.prototxt): read with Caffe's in-memory upgrade, write as protobuf text.

Files of the common Caffe forks parse with our schema (see caffecompat.formats.forks);
a rarer fork's file parses with that fork's own caffe.proto, given as `proto=`
(the CLI's -proto flag; see caffecompat.formats.userproto).
"""

from __future__ import annotations

import os

from caffecompat.formats import forks, protofile, upgrade, userproto
from caffecompat.proto import caffe_pb2


def parse_net_text(text: str, path: str | os.PathLike, proto: str | os.PathLike | None = None,
                   what: str = "net prototxt") -> tuple[caffe_pb2.NetParameter, list[str]]:
    """A net prototxt's text as our NetParameter, and what a user schema held that ours cannot.

    With a user schema (`proto`, or the one userproto.using set), the text is
    parsed with it and copied into ours by field names.
    """
    user = userproto.active(proto)
    if user is None:
        return protofile.parse_text(text, caffe_pb2.NetParameter, path, what), []
    schema = userproto.schema(user)
    theirs = protofile.parse_text(text, schema.message_class("NetParameter"), path, what, schema=schema.label)
    return userproto.to_ours(theirs, caffe_pb2.NetParameter, schema.label, "net")


def read_net_prototxt(path: str | os.PathLike, proto: str | os.PathLike | None = None, *,
                      check: bool = True) -> caffe_pb2.NetParameter:
    """Parse a net prototxt and upgrade it to the current format (ReadNetParamsFromTextFileOrDie).

    A malformed file raises CaffeCompatError with file:line:column. `proto` is a
    fork's caffe.proto to parse the file with. With `check` (the default), fork
    spellings of BVLC settings are translated and every fork layer or field
    caffecompat does not implement is reported in one NotSupportedError.
    """
    net, problems = parse_net_text(protofile.read_text_file(path, "net prototxt"), path, proto)
    upgrade.upgrade_net(net, str(path))
    if check:
        forks.prepare_net(net, str(path), problems)
    elif problems:
        forks.raise_problems(problems, str(path))
    return net


def write_net_prototxt(path: str | os.PathLike, net: caffe_pb2.NetParameter) -> None:
    """Write `net` as protobuf text to `path`, atomically."""
    protofile.write_text(path, net)
