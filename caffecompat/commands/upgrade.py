"""`caffecompat upgrade IN OUT`: Caffe's upgrade_net_proto_text, upgrade_net_proto_binary and
upgrade_solver_proto_text in one command."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from google.protobuf import message as pb_message

from caffecompat import glog, outfiles
from caffecompat.commands.common import add_proto_flag
from caffecompat.errors import CaffeCompatError
from caffecompat.formats import caffemodel, forks, protofile, upgrade, userproto
from caffecompat.proto import caffe_pb2

_DESCRIPTION = """\
Rewrite an old Caffe file in the current format: a net prototxt (V0/V1 layers,
input fields, old data-layer transform fields, old BatchNorm params), a binary
net such as a .caffemodel, or a solver prototxt (solver_type enum -> type).

The kind of IN is detected: text that parses as a NetParameter is a net
prototxt, text that parses as a SolverParameter is a solver prototxt, anything
else is read as a binary NetParameter (caffemodel). -text, -binary or -solver say it
outright. OUT has the same kind as IN (text stays text, binary stays binary)
and is written atomically. OUT may be IN itself, to upgrade in place, when
given as the same path. A file already in the current format is copied as it
is, with a note. Exit status 1 when Caffe would report problems (a V0
setting that has no place in the current format is dropped).

With -proto FILE (a Caffe fork's caffe.proto), IN is read with that schema and
copied into Caffe's by field names; fields caffecompat's schema lacks are
listed in one error. Fork fields caffecompat's schema has (SSD, DeepLab/PSPNet,
SegNet, ...) are kept as they are, -proto or not.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `upgrade` subcommand."""
    p = subparsers.add_parser(
        "upgrade",
        help="upgrade an old net prototxt, caffemodel or solver prototxt to the current format",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="IN", help="the file to upgrade")
    p.add_argument("output", metavar="OUT", help="where to write the upgraded file (may be IN)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("-binary", "--binary", action="store_true",
                      help="IN is a binary NetParameter (.caffemodel), as upgrade_net_proto_binary")
    kind.add_argument("-solver", "--solver", action="store_true",
                      help="IN is a solver prototxt, as upgrade_solver_proto_text")
    kind.add_argument("-text", "--text", action="store_true",
                      help="IN is a net prototxt, as upgrade_net_proto_text")
    add_proto_flag(p)
    p.set_defaults(func=run)


def _check_paths(src: Path, dst: Path) -> None:
    same_spelling = os.path.abspath(src) == os.path.abspath(dst)
    if not same_spelling and dst.exists() and src.exists() and os.path.samefile(src, dst):
        raise CaffeCompatError(
            f"{dst}: is the input file {src} under another name; to upgrade in place, give the "
            "same path as IN and OUT"
        )


def _schema() -> tuple[type[pb_message.Message], type[pb_message.Message], userproto.UserSchema | None]:
    """(NetParameter, SolverParameter, the user schema) to read IN with: -proto's, or ours."""
    user = userproto.active()
    if user is None:
        return caffe_pb2.NetParameter, caffe_pb2.SolverParameter, None
    schema = userproto.schema(user)
    return schema.message_class("NetParameter"), schema.message_class("SolverParameter"), schema


def _parse_text_as(
    text: str, cls: type[pb_message.Message], src: Path, what: str
) -> tuple[pb_message.Message | None, CaffeCompatError | None]:
    schema = _schema()[2]
    try:
        return protofile.parse_text(text, cls, src, what, schema=schema and schema.label), None
    except CaffeCompatError as e:
        return None, e


def _error_line(e: CaffeCompatError) -> int:
    # "path:LINE:COL: ..." -> LINE; how far the parser got before failing.
    parts = str(e).split(":")
    for a, b in zip(parts, parts[1:]):
        if a.isdigit() and b.isdigit():
            return int(a)
    return 0


def _detect(src: Path, data: bytes) -> tuple[str, pb_message.Message]:
    """("net" | "solver" | "binary", parsed message) for an IN of unknown kind."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    text_error: CaffeCompatError | None = None
    net_cls, solver_cls, _ = _schema()
    if text is not None:
        net, net_err = _parse_text_as(text, net_cls, src, "net prototxt")
        if net is not None:
            return "net", net
        solver, solver_err = _parse_text_as(text, solver_cls, src, "solver prototxt")
        if solver is not None:
            return "solver", solver
        # Neither: the kind the parser got further into is most likely what was meant.
        text_error = net_err if _error_line(net_err) >= _error_line(solver_err) else solver_err
    try:
        net = protofile.parse_binary(data, net_cls, src, "caffemodel")
    except CaffeCompatError:
        if text_error is not None:
            raise text_error from None
        raise
    if text_error is not None and not (len(net.layer) or len(net.layers)):
        raise text_error
    return "binary", net


def run(args: argparse.Namespace) -> int:
    """Upgrade args.input into args.output; 0 on success, 1 when Caffe would report problems."""
    src, dst = Path(args.input), Path(args.output)
    _check_paths(src, dst)
    outfiles.check_writable(dst, "upgraded file")
    net_cls, solver_cls, schema = _schema()
    label = schema and schema.label
    if args.binary:
        kind, msg = "binary", None
    else:
        data = protofile.read_bytes(src, "input")
        if args.solver or args.text:
            text = _decode(src, data)
            if args.solver:
                kind, msg = "solver", protofile.parse_text(text, solver_cls, src, "solver prototxt", schema=label)
            else:
                kind, msg = "net", protofile.parse_text(text, net_cls, src, "net prototxt", schema=label)
        else:
            kind, msg = _detect(src, data)
        del data
    if kind == "binary" and msg is None:
        msg = protofile.read_binary(src, net_cls, "caffemodel")
    if schema is not None:
        # -proto: the fork's message, copied into Caffe's schema by field names.
        ours = caffe_pb2.SolverParameter if kind == "solver" else caffe_pb2.NetParameter
        msg, lacking = userproto.to_ours(msg, ours, schema.label, kind if kind == "solver" else "net")
        forks.raise_problems(lacking, str(src))

    problems: list[str] = []
    if kind == "solver":
        changed = upgrade.upgrade_solver(msg, str(src))
        tool, what, line = "upgrade_solver_proto_text.cpp", "SolverParameter text proto", 49
    else:
        if kind == "binary" and not (len(msg.layer) or len(msg.layers)):
            raise CaffeCompatError(f"{src}: not a caffemodel: it parses as a NetParameter with no layers")
        changed = upgrade.upgrade_net(msg, str(src), problems)
        if kind == "binary":
            tool, what, line = "upgrade_net_proto_binary.cpp", "NetParameter binary proto", 48
        else:
            tool, what, line = "upgrade_net_proto_text.cpp", "NetParameter text proto", 49
    if not changed:
        glog.error(f"{tool}:43", f"File already in latest proto format: {src}")
    if problems:
        glog.error(f"{tool}:39", "Encountered error(s) while upgrading prototxt; see details above.")
    if kind == "binary":
        caffemodel.write_caffemodel(dst, msg)
    else:
        protofile.write_text(dst, msg)
    glog.info(f"{tool}:{line}", f"Wrote upgraded {what} to {dst}")
    return 1 if problems else 0


def _decode(src: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CaffeCompatError(f"{src}: is not text (is it a binary caffemodel? then use -binary)") from None
