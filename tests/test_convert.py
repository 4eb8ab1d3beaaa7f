"""`caffecompat convert DEPLOY WEIGHTS OUT`: standalone ONNX models that compute what Caffe computes."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from caffecompat import cli, glog
from caffecompat import convert as conv
from caffecompat.formats.blob import array_to_blob, read_binaryproto
from caffecompat.formats.caffemodel import write_caffemodel
from caffecompat.proto import caffe_pb2
from tests.golden_forward import TOLERANCE, relative_error

NETS = ["caffenet_mini", "inception", "resnet_block", "fcn_head", "zoo_misc", "v1_legacy"]


@pytest.fixture(autouse=True)
def quiet_log():
    stream = io.StringIO()
    glog.set_stream(stream)
    yield stream
    glog.set_stream(None)


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = _session(path)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed)))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("caffecompat convert: error: ")
    assert "Traceback" not in err
    return err


# --- the golden nets -------------------------------------------------------------


@pytest.mark.parametrize("net", NETS)
def test_golden_net_converts_and_matches_caffe(golden, tmp_path, capsys, net):
    d = golden / "forward" / net
    weights = next(p for p in (d / "weights.caffemodel", d / "weights_v1.caffemodel") if p.exists())
    out = tmp_path / f"{net}.onnx"
    assert cli.main(["convert", str(d / "net.prototxt"), str(weights), str(out), "--keep-blobs"]) == 0, \
        capsys.readouterr().err
    summary = capsys.readouterr().out
    assert summary.startswith(f"Wrote {out}: inputs data[") and "opset 17" in summary

    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["data"]
    assert "data" not in [o.name for o in model.graph.output]

    names = (d / "blob_names.txt").read_text().split()
    golden_blobs = np.load(d / "blobs.npz")
    x = read_binaryproto(d / "input.binaryproto")
    shape = [dim.dim_value for dim in model.graph.input[0].type.tensor_type.shape.dim]
    got = _run(out, {"data": x.reshape(shape).astype(np.float32)})
    bad = {}
    for blob in names:
        if blob == "data":
            continue
        assert blob in got, f"{net}: blob {blob} is not an output of the --keep-blobs model"
        assert got[blob].shape == golden_blobs[blob].shape, blob
        err = relative_error(got[blob], golden_blobs[blob])
        if err > TOLERANCE:
            bad[blob] = err
    assert not bad, f"{net}: blobs off Caffe's by more than {TOLERANCE}: {bad}"


def test_default_outputs_are_caffes_net_outputs(golden, tmp_path):
    d = golden / "forward" / "caffenet_mini"
    out = tmp_path / "m.onnx"
    assert cli.main(["convert", str(d / "net.prototxt"), str(d / "weights.caffemodel"), str(out),
                     "-outputs", "conv1,pool5"]) == 0
    model = onnx.load(str(out))
    assert [o.name for o in model.graph.output] == ["prob", "conv1", "pool5"]
    # no graph inputs beyond the data blob: the weights are initializers
    assert [i.name for i in model.graph.input] == ["data"]
    assert {t.name for t in model.graph.initializer} >= {"conv1#0", "conv1#1", "fc8_flickr#0"}
    x = read_binaryproto(d / "input.binaryproto")
    got = _run(out, {"data": x})
    golden_blobs = np.load(d / "blobs.npz")
    for b in ("prob", "conv1", "pool5"):  # conv1 is rewritten by relu1 in place: its last value
        assert relative_error(got[b], golden_blobs[b]) <= TOLERANCE


# --- a small net of our own -------------------------------------------------------

SMALL_NET = """
name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.5 }
                      bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip_a" type: "InnerProduct" bottom: "pool1" top: "ip_a"
  inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "ip_b" type: "InnerProduct" bottom: "pool1" top: "ip_b"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "extra" type: "ReLU" bottom: "ip_b" top: "ip_b_relu" include { stage: "extra" } }
"""


def _small(tmp_path, text: str = SMALL_NET):
    p = tmp_path / "small.prototxt"
    p.write_text(text)
    return p


def _small_weights(tmp_path, text: str = SMALL_NET, seed: int = 1, shapes: dict | None = None):
    """A caffemodel for the small net with random weights; `shapes` overrides blob shapes."""
    from caffecompat.formats.net import read_net_prototxt
    from caffecompat.net import spec as netspec

    spec = netspec.build(read_net_prototxt(_small(tmp_path, text)), caffe_pb2.TEST)
    rng = np.random.default_rng(seed)
    net = caffe_pb2.NetParameter(name="small")
    values = {}
    for node in spec.layers:
        if not node.param_shapes:
            continue
        lp = net.layer.add(name=node.name, type=node.type)
        for i, shape in enumerate(node.param_shapes):
            shape = (shapes or {}).get((node.name, i), shape)
            values[(node.name, i)] = a = rng.normal(0, 0.5, shape).astype(np.float32)
            array_to_blob(a, lp.blobs.add())
    net.layer.add(name="not_in_net", type="ReLU")
    path = tmp_path / "small.caffemodel"
    write_caffemodel(path, net)
    return path, values


def _reference(x: np.ndarray, w: dict) -> dict[str, np.ndarray]:
    """The small net in numpy."""
    k, b = w[("conv1", 0)], w[("conv1", 1)]
    n, _, h, wd = x.shape
    conv = np.zeros((n, 4, h - 2, wd - 2), np.float64)
    for i in range(h - 2):
        for j in range(wd - 2):
            conv[:, :, i, j] = np.einsum("nchw,ochw->no", x[:, :, i:i + 3, j:j + 3], k) + b
    relu = np.maximum(conv, 0)
    pool = relu.reshape(n, 4, 3, 2, 3, 2).max(axis=(3, 5))
    flat = pool.reshape(n, -1)
    return {"conv1": relu, "pool1": pool,
            "ip_a": flat @ w[("ip_a", 0)].T + w[("ip_a", 1)],
            "ip_b": flat @ w[("ip_b", 0)].T + w[("ip_b", 1)]}


def test_keep_blobs_outputs_every_blob(tmp_path, capsys):
    weights, w = _small_weights(tmp_path)
    out = tmp_path / "small.onnx"
    assert cli.main(["convert", str(_small(tmp_path)), str(weights), str(out), "-keep_blobs"]) == 0
    cap = capsys.readouterr()
    assert "ignored 1 layer(s)" in cap.err and "not_in_net" in cap.err
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    outputs = [o.name for o in model.graph.output]
    # Caffe's outputs first (sorted by name), then every blob; Split copies of pool1 included
    assert outputs[:2] == ["ip_a", "ip_b"]
    assert set(outputs) == {"conv1", "pool1", "ip_a", "ip_b", "pool1_pool1_0_split_0", "pool1_pool1_0_split_1"}
    x = np.random.default_rng(5).normal(size=(2, 3, 8, 8)).astype(np.float32)
    got = _run(out, {"data": x})
    ref = _reference(x.astype(np.float64), w)
    for blob, value in ref.items():
        assert np.abs(got[blob] - value).max() < 1e-4, blob
    assert np.array_equal(got["pool1_pool1_0_split_0"], got["pool1"])
    # the default: only Caffe's net outputs
    out2 = tmp_path / "plain.onnx"
    assert cli.main(["convert", str(_small(tmp_path)), str(weights), str(out2)]) == 0
    assert [o.name for o in onnx.load(str(out2)).graph.output] == ["ip_a", "ip_b"]


def test_stage_selects_layers_and_fillers_dash(tmp_path, capsys):
    out = tmp_path / "s.onnx"
    assert cli.main(["convert", str(_small(tmp_path)), "-", str(out), "-stage", "extra", "-seed", "3"]) == 0
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["ip_a", "ip_b_relu"]
    x = np.ones((2, 3, 8, 8), np.float32)
    first = _run(out, {"data": x})
    assert cli.main(["convert", str(_small(tmp_path)), "-", str(out), "--stage", "extra", "--seed", "3"]) == 0
    assert np.array_equal(_run(out, {"data": x})["ip_a"], first["ip_a"])  # same seed, same fillers


def test_missing_layer_weights_warns(tmp_path, capsys):
    weights, _ = _small_weights(tmp_path)
    text = SMALL_NET.replace('name: "ip_b"', 'name: "ip_new"')
    out = tmp_path / "m.onnx"
    assert cli.main(["convert", str(_small(tmp_path, text)), str(weights), str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "ip_new" in err and "filler" in err


def test_opsets(tmp_path, capsys):
    for opset in (7, 9, 13, 21):
        out = tmp_path / f"o{opset}.onnx"
        assert cli.main(["convert", str(_small(tmp_path)), "-", str(out), "-opset", str(opset)]) == 0, \
            capsys.readouterr().err
        model = onnx.load(str(out))
        assert model.opset_import[0].version == opset
        _session(out)
    assert cli.main(["convert", str(_small(tmp_path)), "-", str(tmp_path / "x.onnx"), "-opset", "22"]) == 1
    assert "opset 22 is not supported" in _one_error_line(capsys)
    assert not (tmp_path / "x.onnx").exists()


def test_layer_needing_a_newer_opset_is_reported(tmp_path, capsys):
    text = SMALL_NET + (
        'layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 } } }\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip_a" bottom: "label" top: "loss" }\n')
    err = _convert_error(capsys, tmp_path, _small(tmp_path, text), "-", "-opset", "9")
    assert "opset >= 13" in err and "loss" in err
    out = tmp_path / "ok.onnx"
    assert cli.main(["convert", str(_small(tmp_path, text)), "-", str(out), "-opset", "13"]) == 0
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["data", "label"]
    assert [o.name for o in model.graph.output] == ["ip_b", "loss"]


def test_external_data(tmp_path, capsys):
    text = SMALL_NET.replace("num_output: 5", "num_output: 20")  # ip_a#0 is 2880 bytes: goes outside
    weights, w = _small_weights(tmp_path, text)
    out = tmp_path / "ext.onnx"
    assert cli.main(["convert", str(_small(tmp_path, text)), str(weights), str(out), "--external-data"]) == 0
    assert "(+ ext.onnx.data)" in capsys.readouterr().out
    assert (tmp_path / "ext.onnx.data").stat().st_size > 0
    onnx.checker.check_model(str(out), full_check=True)
    x = np.random.default_rng(2).normal(size=(2, 3, 8, 8)).astype(np.float32)
    got = _run(out, {"data": x})
    assert np.abs(got["ip_a"] - _reference(x.astype(np.float64), w)["ip_a"]).max() < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_large_model_switches_to_external_data(monkeypatch, tmp_path):
    model = conv.convert_net(_small(tmp_path, SMALL_NET.replace("num_output: 5", "num_output: 20")), None).model
    assert not conv.needs_external_data(model)
    monkeypatch.setattr(conv, "PROTOBUF_LIMIT", 1000 + conv._LIMIT_MARGIN)
    assert conv.needs_external_data(model)
    files = conv.save_model(model, tmp_path / "big.onnx", 17)
    assert [f.name for f in files] == ["big.onnx", "big.onnx.data"]


def test_output_is_written_atomically(tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", boom)
    assert cli.main(["convert", str(_small(tmp_path)), "-", str(out)]) == 130
    assert out.read_bytes() == b"old"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_help_documents_the_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["convert", "--help"])
    text = capsys.readouterr().out
    for word in ("-opset", "-keep_blobs", "-outputs", "-level", "-stage", "-seed", "-external_data",
                 "2 GB", "Input layers", "`-`"):
        assert word in text, word


# --- errors: one line, exit status 1 -----------------------------------------------


def _convert_error(capsys, tmp_path, prototxt, weights="-", *extra) -> str:
    out = tmp_path / "out.onnx"
    assert cli.main(["convert", str(prototxt), str(weights), str(out), *extra]) == 1
    assert not out.exists()
    return _one_error_line(capsys)


def test_unknown_layer_type(tmp_path, capsys):
    text = SMALL_NET + 'layer { name: "odd" type: "NoSuchLayer" bottom: "ip_a" top: "odd" }\n'
    err = _convert_error(capsys, tmp_path, _small(tmp_path, text))
    assert "layer 'odd' has unknown type 'NoSuchLayer'" in err and "small.prototxt" in err


def test_missing_bottom(tmp_path, capsys):
    text = SMALL_NET + 'layer { name: "r" type: "ReLU" bottom: "nowhere" top: "r" }\n'
    err = _convert_error(capsys, tmp_path, _small(tmp_path, text))
    assert "layer 'r'" in err and "bottom 'nowhere'" in err


def test_weights_shape_mismatch(tmp_path, capsys):
    weights, _ = _small_weights(tmp_path, shapes={("ip_a", 0): (6, 36)})
    err = _convert_error(capsys, tmp_path, _small(tmp_path), weights)
    assert "'ip_a'" in err and "[6, 36]" in err and "[5, 36]" in err and "rename the layer" in err


def test_truncated_caffemodel(tmp_path, capsys):
    weights, _ = _small_weights(tmp_path)
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    err = _convert_error(capsys, tmp_path, _small(tmp_path), weights)
    assert str(weights) in err


def test_not_a_caffemodel(tmp_path, capsys):
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"\xff\xfe this is not protobuf \x00\x01" * 10)
    err = _convert_error(capsys, tmp_path, _small(tmp_path), bad)
    assert str(bad) in err


def test_empty_files(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert "empty" in _convert_error(capsys, tmp_path, _small(tmp_path), empty)
    assert "empty" in _convert_error(capsys, tmp_path, empty)


def test_missing_files(tmp_path, capsys):
    assert "no such" in _convert_error(capsys, tmp_path, tmp_path / "nope.prototxt")
    assert "no such" in _convert_error(capsys, tmp_path, _small(tmp_path), tmp_path / "nope.caffemodel")


def test_malformed_prototxt(tmp_path, capsys):
    p = tmp_path / "bad.prototxt"
    p.write_text('name: "x"\nlayer {\n  name: "a" type: "ReLU"\n  bottom: "data" tpo: "b"\n}\n')
    err = _convert_error(capsys, tmp_path, p)
    assert f"{p}:4:" in err and "malformed" in err


def test_data_layer_net_is_refused(tmp_path, capsys):
    text = ('layer { name: "d" type: "Data" top: "data" top: "label" data_param { source: "x" batch_size: 2 } }\n'
            'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"\n'
            '  inner_product_param { num_output: 2 } }\n')
    err = _convert_error(capsys, tmp_path, _small(tmp_path, text))
    assert "'d' is a Data layer" in err and "Input" in err


def test_unknown_output_blob(tmp_path, capsys):
    err = _convert_error(capsys, tmp_path, _small(tmp_path), "-", "-outputs", "conv1,nope")
    assert "no blob 'nope'" in err


def test_missing_output_folder(tmp_path, capsys):
    assert cli.main(["convert", str(_small(tmp_path)), "-", str(tmp_path / "no" / "m.onnx")]) == 1
    assert "does not exist" in _one_error_line(capsys)


def test_output_is_a_folder(tmp_path, capsys):
    (tmp_path / "dir.onnx").mkdir()
    assert cli.main(["convert", str(_small(tmp_path)), "-", str(tmp_path / "dir.onnx")]) == 1
    assert "cannot write" in _one_error_line(capsys)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_input_rewritten_in_place_keeps_its_blob_name(tmp_path, capsys):
    text = ('layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }\n'
            'layer { name: "twice" type: "Power" bottom: "data" top: "data" power_param { scale: 2 } }\n'
            'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"\n'
            '  inner_product_param { num_output: 2 bias_term: false weight_filler { type: "constant" value: 1 } } }\n')
    out = tmp_path / "ip.onnx"
    assert cli.main(["convert", str(_small(tmp_path, text)), "-", str(out), "-keep_blobs"]) == 0
    assert "inputs data[1x2]" in capsys.readouterr().out
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["data"]
    got = _run(out, {"data": np.array([[1.0, 2.0]], np.float32)})
    assert got["ip"].tolist() == [[6.0, 6.0]]
    assert got["data@twice"].tolist() == [[2.0, 4.0]]  # Caffe's data blob after the forward pass
