"""The committed bindings (caffecompat/proto/caffe_pb2.py) match the schema (proto/caffe.proto).

Regenerate with `python proto/generate.py` when this fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import descriptor_pb2

from caffecompat.proto import caffe_pb2

ROOT = Path(__file__).resolve().parent.parent


def _compiled_schema(tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    protoc = pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools is not installed (dev extra)")
    out = tmp_path / "caffe.desc"
    status = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"--descriptor_set_out={out}", "caffe.proto"])
    assert status == 0, "protoc could not compile proto/caffe.proto"
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    assert len(files) == 1
    return files[0]


def _normalized(messages) -> None:
    """Erase what differs only in spelling between protoc's two ways of writing a descriptor.

    --descriptor_set_out fills in json_name (derived from the field name) and writes
    float defaults as written ("0.999"); the descriptor embedded in generated Python
    leaves json_name out and writes float defaults at float32 precision ("0.999000013").
    """
    for m in messages:
        for f in m.field:
            f.ClearField("json_name")
            if f.type == f.TYPE_FLOAT and f.HasField("default_value"):
                f.default_value = repr(float(np.float32(f.default_value)))
        _normalized(m.nested_type)


def test_bindings_match_schema(tmp_path):
    expected = _compiled_schema(tmp_path)
    embedded = descriptor_pb2.FileDescriptorProto.FromString(caffe_pb2.DESCRIPTOR.serialized_pb)
    _normalized(expected.message_type)
    _normalized(embedded.message_type)
    assert embedded.name == expected.name == "caffe.proto"
    assert embedded.package == "caffe"
    if embedded != expected:
        names = {m.name for m in expected.message_type} ^ {m.name for m in embedded.message_type}
        changed = [m.name for m, e in zip(expected.message_type, embedded.message_type) if m != e]
        pytest.fail(
            "caffecompat/proto/caffe_pb2.py is out of date with proto/caffe.proto "
            f"(messages added/removed: {sorted(names)}, changed: {changed[:10]}); "
            "run `python proto/generate.py`"
        )


def test_schema_has_caffe_messages():
    for name in ("NetParameter", "LayerParameter", "V1LayerParameter", "V0LayerParameter",
                 "SolverParameter", "SolverState", "BlobProto", "Datum"):
        assert name in caffe_pb2.DESCRIPTOR.message_types_by_name, name
