"""Regenerate caffecompat/proto/caffe_pb2.py from proto/caffe.proto.

Run `python proto/generate.py` after editing the schema (needs grpcio-tools,
installed by the `dev` extra). tests/test_proto_schema.py fails when the
committed bindings no longer match the schema.
"""

from __future__ import annotations

import pathlib
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> int:
    out = ROOT / "caffecompat" / "proto"
    status = protoc.main(
        ["protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}", str(ROOT / "proto" / "caffe.proto")]
    )
    if status != 0:
        print("protoc failed", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
