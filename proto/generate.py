"""Regenerate caffecompat/proto/caffe_pb2.py from proto/caffe.proto and proto/forks.proto.

Run `python proto/generate.py` after editing either schema (needs grpcio-tools,
installed by the `dev` extra). caffe.proto is BVLC's schema as BVLC wrote it;
forks.proto holds the Caffe forks' additions. `merged_schema` puts the two
together into one file `caffe.proto` of package `caffe` (see forks.proto's
header for the rules), which protoc then turns into Python.
tests/test_proto_schema.py fails when the committed bindings no longer match.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tempfile

from google.protobuf import descriptor_pb2

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
FORKS_PACKAGE = "caffe.forks"
# Fields forks.proto adds to BVLC messages are numbered from here on.
FORK_FIELD_BASE = 70000
# The copyright notice of caffe.proto, kept in the bindings made from it (Caffe's BSD 2-Clause license, condition 1).
BINDINGS_NOTICE = """\
# Generated from proto/caffe.proto, BVLC Caffe's schema (github.com/BVLC/caffe), by proto/generate.py:
#   All contributions by the University of California:
#   Copyright (c) 2014-2017 The Regents of the University of California (Regents)
#   All rights reserved.
#   All other contributions:
#   Copyright (c) 2014-2017, the respective contributors
#   All rights reserved.
# Redistributed under Caffe's BSD 2-Clause license: see LICENSE-BVLC beside this file.
"""


def compile_files(*names: str, proto_dir: pathlib.Path = PROTO) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """The FileDescriptorProtos of `names` (files in proto_dir) and their imports, by file name."""
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "schema.desc"
        run = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}", "--include_imports",
                              f"--descriptor_set_out={out}", *names], capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"protoc failed on {', '.join(names)}:\n{run.stderr}")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return {f.name: f for f in files}


def _retarget(message: descriptor_pb2.DescriptorProto) -> None:
    """Point references into caffe.forks at the same names in caffe (where the merge puts them)."""
    for f in message.field:
        if f.type_name.startswith(f".{FORKS_PACKAGE}."):
            f.type_name = ".caffe." + f.type_name[len(FORKS_PACKAGE) + 2:]
    for nested in message.nested_type:
        _retarget(nested)


def merged_schema(proto_dir: pathlib.Path = PROTO) -> descriptor_pb2.FileDescriptorProto:
    """BVLC's caffe.proto with forks.proto's fields and messages merged in."""
    files = compile_files("caffe.proto", "forks.proto", proto_dir=proto_dir)
    merged = descriptor_pb2.FileDescriptorProto()
    merged.CopyFrom(files["caffe.proto"])
    bvlc = {m.name: m for m in merged.message_type}
    for fork_message in files["forks.proto"].message_type:
        fork_message = descriptor_pb2.DescriptorProto.FromString(fork_message.SerializeToString())
        _retarget(fork_message)
        target = bvlc.get(fork_message.name)
        if target is None:
            merged.message_type.add().CopyFrom(fork_message)
            continue
        names = {f.name for f in target.field} | {e.name for e in target.enum_type}
        for f in fork_message.field:
            if f.name in names or f.number < FORK_FIELD_BASE:
                raise ValueError(f"forks.proto: {fork_message.name}.{f.name} = {f.number} clashes with BVLC's "
                                 f"{fork_message.name} (fields added to BVLC messages take new names and "
                                 f"numbers >= {FORK_FIELD_BASE})")
            target.field.add().CopyFrom(f)
        for e in fork_message.enum_type:
            if e.name in names:
                raise ValueError(f"forks.proto: enum {fork_message.name}.{e.name} is already BVLC's")
            target.enum_type.add().CopyFrom(e)
        if fork_message.nested_type:
            raise ValueError(f"forks.proto: {fork_message.name}: nested messages in BVLC messages are not merged")
    return merged


def _drop_json_names(messages) -> None:
    # --descriptor_set_out spells out json_name; protoc leaves it out of generated code when it
    # compiles a .proto itself, and so do we.
    for m in messages:
        for f in m.field:
            f.ClearField("json_name")
        _drop_json_names(m.nested_type)


def main() -> int:
    out = ROOT / "caffecompat" / "proto"
    merged = merged_schema()
    _drop_json_names(merged.message_type)
    with tempfile.TemporaryDirectory() as tmp:
        desc = pathlib.Path(tmp) / "merged.desc"
        desc.write_bytes(descriptor_pb2.FileDescriptorSet(file=[merged]).SerializeToString())
        run = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"--descriptor_set_in={desc}",
                              f"--python_out={out}", "caffe.proto"], capture_output=True, text=True)
    if run.returncode != 0:
        print(f"protoc failed:\n{run.stderr}", file=sys.stderr)
        return run.returncode
    add_notice(out / "caffe_pb2.py")
    return 0


def add_notice(path: pathlib.Path) -> None:
    """Put BINDINGS_NOTICE after the generated file's coding line (which must stay first)."""
    first, rest = path.read_text(encoding="utf-8").split("\n", 1)
    if not rest.startswith(BINDINGS_NOTICE):
        path.write_text(f"{first}\n{BINDINGS_NOTICE}{rest}", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
