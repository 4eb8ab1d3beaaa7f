"""Caffemodel reading and writing (caffecompat.formats.caffemodel): both the protobuf path and
the wire-format fast path, legacy files, and every way a file can be broken."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from google.protobuf import text_format

from caffecompat.errors import CaffeCompatError
from caffecompat.formats import caffemodel
from caffecompat.formats.blob import array_to_blob, blob_to_array, encode_varint
from caffecompat.proto import caffe_pb2


def _arrays(net: caffe_pb2.NetParameter) -> dict[str, list[np.ndarray]]:
    return {lay.name: [blob_to_array(b) for b in lay.blobs] for lay in net.layer}


def _assert_same_blobs(a: dict[str, list[np.ndarray]], b: dict[str, list[np.ndarray]]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert len(a[name]) == len(b[name]), name
        for x, y in zip(a[name], b[name]):
            assert x.dtype == np.float32 and y.dtype == np.float32
            assert x.shape == y.shape, name
            np.testing.assert_array_equal(x, y)


def _small_net() -> tuple[caffe_pb2.NetParameter, dict[str, list[np.ndarray]]]:
    rng = np.random.default_rng(1)
    net = text_format.Parse("""
      name: "small"
      layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } } }
      layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
              convolution_param { num_output: 4 kernel_size: 3 } }
      layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
      layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip" inner_product_param { num_output: 3 } }
    """, caffe_pb2.NetParameter())
    blobs = {
        "data": [],
        "conv": [rng.standard_normal((4, 3, 3, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32)],
        "relu": [],
        "ip": [rng.standard_normal((3, 36)).astype(np.float32), np.array([0.0, -0.0, np.inf], np.float32)],
    }
    for lay in net.layer:
        for a in blobs[lay.name]:
            array_to_blob(a, lay.blobs.add())
    return net, blobs


def test_v1_caffemodel_loads_with_legacy_dims(golden):
    path = golden / "forward" / "v1_legacy" / "weights_v1.caffemodel"
    w = caffemodel.read_weights(path)
    shapes = {name: [a.shape for a in arrays] for name, arrays in w.blobs.items()}
    assert shapes == {
        "conv1_1": [(8, 3, 3, 3), (1, 1, 1, 8)],
        "conv2_1": [(12, 8, 3, 3), (1, 1, 1, 12)],
        "fc6": [(1, 1, 32, 432), (1, 1, 1, 32)],
        "fc8": [(1, 1, 10, 32), (1, 1, 1, 10)],
    }
    assert [lay.type for lay in w.net.layer] == ["Convolution", "Convolution", "InnerProduct", "InnerProduct"]
    assert len(w.net.layers) == 0
    assert all(len(b.data) == 0 and b.num >= 1 for lay in w.net.layer for b in lay.blobs)
    full = caffemodel.read_caffemodel(path)
    assert len(full.layers) == 0 and len(full.layer) == 4
    _assert_same_blobs(w.blobs, _arrays(full))


def test_fast_path_matches_protobuf_on_golden_models(golden):
    for path in [golden / "train" / "init.caffemodel", golden / "train" / "init_bn.caffemodel",
                 *sorted((golden / "forward").glob("*/weights.caffemodel"))]:
        w = caffemodel.read_weights(path)
        full = caffemodel.read_caffemodel(path)
        _assert_same_blobs(w.blobs, _arrays(full))
        for lay in full.layer:
            lay.ClearField("blobs")
        for lay in w.net.layer:
            lay.ClearField("blobs")
        assert w.net == full, path


def test_write_read_caffemodel_identity(tmp_path):
    net, _ = _small_net()
    path = tmp_path / "m.caffemodel"
    caffemodel.write_caffemodel(path, net)
    assert caffemodel.read_caffemodel(path) == net


def test_write_read_weights_identity(tmp_path):
    net, blobs = _small_net()
    path = tmp_path / "w.caffemodel"
    caffemodel.write_weights(path, net, blobs)
    w = caffemodel.read_weights(path)
    _assert_same_blobs(w.blobs, blobs)
    assert caffemodel.read_caffemodel(path) == net
    # and the file from write_caffemodel reads the same through the fast path
    caffemodel.write_caffemodel(tmp_path / "m.caffemodel", net)
    _assert_same_blobs(caffemodel.read_weights(tmp_path / "m.caffemodel").blobs, blobs)


def test_write_weights_with_diffs_and_structure_only_net(tmp_path):
    net, blobs = _small_net()
    for lay in net.layer:
        lay.ClearField("blobs")
    diffs = {"ip": [b * 2 for b in blobs["ip"]]}
    path = tmp_path / "d.caffemodel"
    caffemodel.write_weights(path, net, blobs, diffs)
    full = caffemodel.read_caffemodel(path)
    ip = full.layer[3]
    np.testing.assert_array_equal(blob_to_array(ip.blobs[0], diff=True), diffs["ip"][0])
    assert len(full.layer[1].blobs[0].diff) == 0
    _assert_same_blobs(caffemodel.read_weights(path).blobs, blobs)


def test_write_weights_v1_structure(golden, tmp_path):
    src = golden / "forward" / "v1_legacy" / "weights_v1.caffemodel"
    raw = caffe_pb2.NetParameter.FromString(src.read_bytes())
    assert len(raw.layers) == 4
    blobs = {lay.name: [blob_to_array(b) for b in lay.blobs] for lay in raw.layers}
    path = tmp_path / "v1.caffemodel"
    caffemodel.write_weights(path, raw, blobs)
    _assert_same_blobs(caffemodel.read_weights(path).blobs, blobs)


def test_write_weights_rejects_unknown_layers_and_bad_diffs(tmp_path):
    net, blobs = _small_net()
    with pytest.raises(CaffeCompatError, match="'nope'"):
        caffemodel.write_weights(tmp_path / "x.caffemodel", net, {"nope": []})
    with pytest.raises(CaffeCompatError, match="diffs must match"):
        caffemodel.write_weights(tmp_path / "x.caffemodel", net, blobs, {"ip": [blobs["ip"][0]]})
    assert not (tmp_path / "x.caffemodel").exists()


def _field(number: int, payload: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload


def test_unpacked_floats_and_split_packed_runs(tmp_path):
    shape = caffe_pb2.BlobShape(dim=[2, 2]).SerializeToString()
    unpacked = b"".join(encode_varint(5 << 3 | 5) + struct.pack("<f", v) for v in (1, 2, 3, 4))
    split = _field(5, struct.pack("<2f", 5, 6)) + _field(5, struct.pack("<2f", 7, 8))
    layer_a = _field(1, b"a") + _field(7, _field(7, shape) + unpacked)
    layer_b = _field(1, b"b") + _field(7, _field(7, shape) + split)
    path = tmp_path / "u.caffemodel"
    path.write_bytes(_field(100, layer_a) + _field(100, layer_b))
    w = caffemodel.read_weights(path)
    np.testing.assert_array_equal(w.blobs["a"][0], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(w.blobs["b"][0], [[5, 6], [7, 8]])
    _assert_same_blobs(w.blobs, _arrays(caffemodel.read_caffemodel(path)))


def test_double_data_wins_as_in_caffe(tmp_path):
    net = caffe_pb2.NetParameter()
    blob = net.layer.add(name="d", type="Scale").blobs.add()
    blob.shape.dim.append(3)
    blob.data.extend([9, 9, 9])
    blob.double_data.extend([0.5, 1.5, 1e-3])
    path = tmp_path / "d.caffemodel"
    caffemodel.write_caffemodel(path, net)
    got = caffemodel.read_weights(path).blobs["d"][0]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array([0.5, 1.5, 1e-3], np.float32))


def test_v0_caffemodel(tmp_path):
    net = text_format.Parse("""
      input: "data"
      layers { layer { name: "c" type: "conv" num_output: 2 kernelsize: 1
                       blobs { num: 2 channels: 1 height: 1 width: 1 data: 1 data: 2 } }
               bottom: "data" top: "c" }
    """, caffe_pb2.NetParameter())
    path = tmp_path / "v0.caffemodel"
    caffemodel.write_caffemodel(path, net)
    w = caffemodel.read_weights(path)
    assert w.net.layer[0].type == "Convolution"
    np.testing.assert_array_equal(w.blobs["c"][0], np.array([1, 2], np.float32).reshape(2, 1, 1, 1))


def test_count_mismatch_is_an_error(tmp_path):
    net = caffe_pb2.NetParameter()
    blob = net.layer.add(name="bad").blobs.add(num=1, channels=1, height=2, width=2)
    blob.data.extend([1, 2, 3])
    path = tmp_path / "c.caffemodel"
    caffemodel.write_caffemodel(path, net)
    with pytest.raises(CaffeCompatError, match=r"c.caffemodel: layer #0 blob #0: holds 3 values.*\[1, 1, 2, 2\]"):
        caffemodel.read_weights(path)


@pytest.fixture
def model_bytes(golden) -> bytes:
    return (golden / "forward" / "v1_legacy" / "weights_v1.caffemodel").read_bytes()


@pytest.mark.parametrize("cut", [-1, -10, -1000, 0.5, 0.1])
def test_truncated_caffemodel(tmp_path, model_bytes, cut):
    n = int(len(model_bytes) * cut) if isinstance(cut, float) else len(model_bytes) + cut
    path = tmp_path / "t.caffemodel"
    path.write_bytes(model_bytes[:n])
    for read in (caffemodel.read_weights, caffemodel.read_caffemodel):
        with pytest.raises(CaffeCompatError, match=r"t.caffemodel: not a valid caffemodel.*truncated"):
            read(path)


@pytest.mark.parametrize("content", [
    b'name: "net"\nlayer { name: "a" type: "ReLU" }\n',
    bytes(range(256)) * 4,
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
    b"\x08\x96\x01",  # a valid protobuf varint field, but no layers: not a caffemodel
])
def test_not_a_caffemodel(tmp_path, content):
    path = tmp_path / "x.caffemodel"
    path.write_bytes(content)
    for read in (caffemodel.read_weights, caffemodel.read_caffemodel):
        with pytest.raises(CaffeCompatError, match=r"x.caffemodel: not a .*caffemodel"):
            read(path)


def test_missing_empty_and_directory(tmp_path):
    (tmp_path / "empty.caffemodel").write_bytes(b"")
    for read in (caffemodel.read_weights, caffemodel.read_caffemodel):
        with pytest.raises(CaffeCompatError, match="no such caffemodel"):
            read(tmp_path / "missing.caffemodel")
        with pytest.raises(CaffeCompatError, match="empty.caffemodel: caffemodel file is empty"):
            read(tmp_path / "empty.caffemodel")
        with pytest.raises(CaffeCompatError, match="is a directory"):
            read(tmp_path)
