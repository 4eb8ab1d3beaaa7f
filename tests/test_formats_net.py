"""Net prototxt reading/writing (caffecompat.formats.net) on Caffe's own model definitions."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from caffecompat.errors import CaffeCompatError
from caffecompat.formats import net as netfile
from caffecompat.formats import protofile
from caffecompat.proto import caffe_pb2


def _net_prototxts(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.prototxt") if "solver" not in p.name)


def test_every_bvlc_net_parses_and_round_trips(bvlc, tmp_path):
    paths = _net_prototxts(bvlc)
    assert len(paths) >= 15
    for path in paths:
        raw = protofile.read_text(path, caffe_pb2.NetParameter, "net prototxt")
        again = text_format.Parse(text_format.MessageToString(raw), caffe_pb2.NetParameter())
        assert again == raw, path
        net = netfile.read_net_prototxt(path)
        assert len(net.layer) > 0 and len(net.layers) == 0, path
        out = tmp_path / path.name
        netfile.write_net_prototxt(out, net)
        assert netfile.read_net_prototxt(out) == net, path


def test_golden_nets_parse(golden):
    paths = sorted((golden / "forward").glob("*/net.prototxt")) + sorted((golden / "train").glob("net*.prototxt"))
    assert paths
    for path in paths:
        assert len(netfile.read_net_prototxt(path).layer) > 0, path


def test_read_upgrades_v1(golden):
    d = golden / "forward" / "v1_legacy"
    net = netfile.read_net_prototxt(d / "net.prototxt")
    assert net == protofile.read_text(d / "upgraded_by_caffe.prototxt", caffe_pb2.NetParameter, "net")


def test_malformed_prototxt_names_file_line_column(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('name: "x"\nlayer {\n  name: "a"\n  typo: "ReLU"\n}\n')
    with pytest.raises(CaffeCompatError) as e:
        netfile.read_net_prototxt(bad)
    assert f"{bad}:4:" in str(e.value)
    assert "typo" in str(e.value)


def test_unclosed_brace(tmp_path):
    bad = tmp_path / "open.prototxt"
    bad.write_text('layer {\n  name: "a"\n')
    with pytest.raises(CaffeCompatError, match=r"open.prototxt:\d+:\d+"):
        netfile.read_net_prototxt(bad)


@pytest.mark.parametrize("content,match", [(None, "no such"), (b"", "empty"), (b"\xff\xfe\x00\x81", "not text")])
def test_missing_empty_and_binary_files(tmp_path, content, match):
    path = tmp_path / "n.prototxt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CaffeCompatError, match=match):
        netfile.read_net_prototxt(path)


def test_write_is_atomic_and_readable(tmp_path):
    net = text_format.Parse('name: "n" layer { name: "r" type: "ReLU" bottom: "x" top: "x" }',
                            caffe_pb2.NetParameter())
    out = tmp_path / "w.prototxt"
    netfile.write_net_prototxt(out, net)
    assert netfile.read_net_prototxt(out) == net
    assert [p.name for p in tmp_path.iterdir()] == ["w.prototxt"]
    with pytest.raises(CaffeCompatError, match="does not exist"):
        netfile.write_net_prototxt(tmp_path / "nowhere" / "w.prototxt", net)
