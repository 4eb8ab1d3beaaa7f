"""Net definitions (.prototxt): read with Caffe's in-memory upgrade, write as protobuf text."""

from __future__ import annotations

import os

from caffecompat.formats import protofile, upgrade
from caffecompat.proto import caffe_pb2


def read_net_prototxt(path: str | os.PathLike) -> caffe_pb2.NetParameter:
    """Parse a net prototxt and upgrade it to the current format (ReadNetParamsFromTextFileOrDie).

    A malformed file raises CaffeCompatError with file:line:column.
    """
    net = protofile.read_text(path, caffe_pb2.NetParameter, "net prototxt")
    upgrade.upgrade_net(net, str(path))
    return net


def write_net_prototxt(path: str | os.PathLike, net: caffe_pb2.NetParameter) -> None:
    """Write `net` as protobuf text to `path`, atomically."""
    protofile.write_text(path, net)
