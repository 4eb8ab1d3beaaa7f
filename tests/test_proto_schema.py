"""The committed bindings (caffecompat/proto/caffe_pb2.py) match the schema (proto/caffe.proto merged
with the forks' additions, proto/forks.proto), and the forks' additions change nothing for BVLC files.

Regenerate with `python proto/generate.py` when the first test fails.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from caffecompat.formats import forks
from caffecompat.proto import caffe_pb2

ROOT = Path(__file__).resolve().parent.parent


def _generate():
    """proto/generate.py as a module (it merges the two schemas)."""
    pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools is not installed (dev extra)")
    spec = importlib.util.spec_from_file_location("generate", ROOT / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compiled_schema(tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    return _generate().merged_schema()


def _bvlc_schema() -> descriptor_pb2.FileDescriptorProto:
    """proto/caffe.proto alone: BVLC's schema, without the forks' additions."""
    return _generate().compile_files("caffe.proto")["caffe.proto"]


def _bvlc_net_class():
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_bvlc_schema())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("caffe.NetParameter"))


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


def _fields(message: descriptor_pb2.DescriptorProto) -> dict[str, descriptor_pb2.FieldDescriptorProto]:
    return {f.name: f for f in message.field}


def _default(f: descriptor_pb2.FieldDescriptorProto) -> str:
    # Float defaults are spelled at float32 precision in generated code ("0.999000013"), as written elsewhere.
    if f.type == f.TYPE_FLOAT and f.HasField("default_value"):
        return repr(float(np.float32(f.default_value)))
    return f.default_value


def test_forks_only_add_fields_with_numbers_bvlc_never_uses():
    bvlc = {m.name: m for m in _bvlc_schema().message_type}
    embedded = {m.name: m for m in descriptor_pb2.FileDescriptorProto.FromString(
        caffe_pb2.DESCRIPTOR.serialized_pb).message_type}
    added = []
    for name, message in bvlc.items():
        assert name in embedded, name
        ours = _fields(embedded[name])
        for fname, f in _fields(message).items():
            # Every BVLC field keeps its number, type, label and default.
            g = ours[fname]
            assert (g.number, g.type, g.label, g.type_name, _default(g)) == \
                (f.number, f.type, f.label, f.type_name, _default(f)), f"{name}.{fname}"
        for fname, g in ours.items():
            if fname not in _fields(message):
                assert g.number >= 70000, f"{name}.{fname} = {g.number} could collide with a Caffe field number"
                added.append(f"{name}.{fname}")
        bvlc_enums = [e.name for e in message.enum_type]
        assert bvlc_enums == [e.name for e in embedded[name].enum_type][:len(bvlc_enums)]
    # caffecompat/formats/forks.py knows the fork of every added field, and of nothing else.
    assert sorted(added) == sorted(forks.FORK_FIELDS)


def _bvlc_caffemodels(golden: Path) -> list[Path]:
    files = sorted(golden.glob("forward/*/*.caffemodel")) + sorted(golden.glob("train/*.caffemodel"))
    nsfw = golden.parent / "zoo" / "open_nsfw" / "resnet_50_1by2_nsfw.caffemodel"
    return files + ([nsfw] if nsfw.exists() else [])


def test_bvlc_caffemodels_read_the_same_with_and_without_the_fork_fields(golden):
    bvlc_net = _bvlc_net_class()
    files = _bvlc_caffemodels(golden)
    assert len(files) >= 8, files
    for path in files:
        data = path.read_bytes()
        ours, theirs = caffe_pb2.NetParameter.FromString(data), bvlc_net.FromString(data)
        # The same bytes back out, and the same known fields (text format prints no unknown field; blob
        # values, compared by the bytes, are left out of the text for speed).
        assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True), path
        for net in (ours, theirs):
            for lp in list(net.layer) + list(net.layers):
                for blob in lp.blobs:
                    blob.ClearField("data")
        assert text_format.MessageToString(ours) == text_format.MessageToString(theirs), path
