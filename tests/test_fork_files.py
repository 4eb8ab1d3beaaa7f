"""Files from Caffe forks: read with our superset schema or with the fork's own caffe.proto (-proto).

References: OpenCV's Caffe importer, which reads `pooling_param { ceil_mode }`
itself, for what ceil_mode means; hand-computed pooled sizes; BVLC's
round_mode spelling of the same net; and schemas written here the way forks
write theirs (SSD's field numbers, a fork whose ceil_mode takes BVLC's number
13, as OpenCV's does).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from caffecompat import cli, glog
from caffecompat import convert as conv
from caffecompat.errors import CaffeCompatError, NotSupportedError
from caffecompat.formats import forks, userproto
from caffecompat.formats.blob import array_to_blob
from caffecompat.formats.caffemodel import read_weights
from caffecompat.formats.net import read_net_prototxt
from caffecompat.formats.solver import read_solver_prototxt
from caffecompat.proto import caffe_pb2

ROOT = Path(__file__).resolve().parent.parent
BVLC_PROTO = (ROOT / "proto" / "caffe.proto").read_text()


@pytest.fixture(autouse=True)
def quiet_log():
    glog.set_stream(io.StringIO())
    yield
    glog.set_stream(None)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _fork_proto(tmp_path: Path, name: str, edits: list[tuple[str, str]], extra: str = "") -> Path:
    """BVLC's caffe.proto changed the way a fork changes it: (old, new) replacements and added messages."""
    text = BVLC_PROTO
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    folder = tmp_path / name.removesuffix(".proto")
    folder.mkdir()
    return _write(folder, name, text + extra)


def _forks_message(name: str) -> str:
    """A message of proto/forks.proto, as written there."""
    text = (ROOT / "proto" / "forks.proto").read_text()
    m = re.search(rf"^message {name} {{.*?^}}\n", text, re.S | re.M)
    return m.group(0)


# --- fork fields we do not implement: every one, in one message ---------------------------------------

# Three fields of two forks, on three layers of BVLC types (nothing a fork layer implementation can cover).
FORK_NET = """name: "segnet_like"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 dim: 1 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" batch_norm_param { update_global_stats: true } }
layer { name: "drop" type: "Dropout" bottom: "conv" top: "conv" dropout_param { sample_weights_test: true } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" bottom: "label" top: "loss"
        loss_param { class_weighting: 0.2 class_weighting: 0.8 class_weighting: 1 class_weighting: 1 } }
"""


def test_every_unimplemented_fork_field_is_listed_in_one_message(tmp_path, capsys):
    path = _write(tmp_path, "net.prototxt", FORK_NET)
    with pytest.raises(NotSupportedError) as e:
        read_net_prototxt(path)
    message = str(e.value)
    assert message.startswith("not supported: ") and "\n" not in message
    for part in ("layer bn of type BatchNorm (field batch_norm_param.update_global_stats of DeepLab/PSPNet)",
                 "layer drop of type Dropout (field dropout_param.sample_weights_test of SegNet)",
                 "layer loss of type SoftmaxWithLoss (field loss_param.class_weighting of SegNet)",
                 f"(in {path}; 3 in all)"):
        assert part in message
    # The command line: one line, exit status 1, before anything runs.
    assert cli.main(["test", "-model", str(path), "-weights", "x.caffemodel", "-iterations", "1"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "(field loss_param.class_weighting of SegNet)" in err


def test_a_fork_field_restating_its_default_changes_nothing(tmp_path):
    text = FORK_NET.replace("update_global_stats: true", "update_global_stats: false").replace(
        "sample_weights_test: true", "sample_weights_test: false").replace(
        "loss_param { class_weighting: 0.2 class_weighting: 0.8 class_weighting: 1 class_weighting: 1 }", "")
    net = read_net_prototxt(_write(tmp_path, "net.prototxt", text))
    assert [lp.name for lp in net.layer] == ["data", "conv", "bn", "drop", "loss"]


def test_a_fork_layer_is_reported_until_its_type_is_registered(tmp_path, monkeypatch):
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 3 } } }\n'
            'layer { name: "perm" type: "Permute" bottom: "data" top: "p"\n'
            '        permute_param { order: 0 order: 2 order: 1 } }\n'
            'layer { name: "mix" type: "Axpy" bottom: "data" bottom: "data" bottom: "data" top: "m" }\n'
            # A fork parameter on a layer that does not read it is ignored, by the fork as by us.
            'layer { name: "r" type: "ReLU" bottom: "data" top: "r" permute_param { order: 1 } }\n')
    path = _write(tmp_path, "net.prototxt", text)
    registered = forks._registered() - {"Permute", "Axpy"}
    monkeypatch.setattr(forks, "_registered", lambda: registered)
    with pytest.raises(NotSupportedError) as e:
        read_net_prototxt(path)
    assert str(e.value) == (f"not supported: layer perm of type Permute (field permute_param of SSD); layer mix of "
                            f"type Axpy (a layer of SENet) (in {path}; 2 in all)")
    monkeypatch.setattr(forks, "_registered", lambda: registered | {"Permute", "Axpy"})
    assert read_net_prototxt(path).layer[1].permute_param.order == [0, 2, 1]


def test_mobilenet_ssd_parses_and_every_unimplemented_ssd_layer_is_named(zoo):
    path = zoo / "mobilenet_ssd" / "MobileNetSSD_deploy.prototxt"
    net = read_net_prototxt(path, check=False)
    types = {lp.type for lp in net.layer}
    assert {"Permute", "PriorBox", "DetectionOutput", "Flatten", "Concat"} <= types
    priors = [lp for lp in net.layer if lp.type == "PriorBox"]
    assert len(priors) == 6 and all(lp.prior_box_param.min_size for lp in priors)
    out = next(lp for lp in net.layer if lp.type == "DetectionOutput")
    assert out.detection_output_param.num_classes == 21 and out.detection_output_param.nms_param.nms_threshold > 0
    expected = forks.net_problems(net)
    if not expected:
        read_net_prototxt(path)  # every SSD layer is implemented by now
        return
    with pytest.raises(NotSupportedError) as e:
        read_net_prototxt(path)
    assert str(e.value) == f"not supported: {'; '.join(expected)} (in {path}; {len(expected)} in all)"


def test_a_field_no_schema_of_ours_has_is_a_parse_error_naming_file_line_and_field(tmp_path, capsys):
    text = ('name: "x"\nlayer { name: "data" type: "Input" top: "data" }\n'
            'layer { name: "r" type: "Yolov3DetectionOutput" bottom: "data" top: "r"\n'
            '  yolov3_detection_output_param { num_classes: 20 } }\n')  # MobileNet-YOLO's, not in our schema
    path = _write(tmp_path, "yolo.prototxt", text)
    with pytest.raises(CaffeCompatError) as e:
        read_net_prototxt(path)
    assert re.match(rf"{re.escape(str(path))}:4:\d+: malformed net prototxt: unknown field "
                    r"'yolov3_detection_output_param' in LayerParameter: .*-proto FILE$", str(e.value))
    assert cli.main(["convert", str(path), "-", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "unknown field 'yolov3_detection_output_param'" in err


# --- ceil_mode: the forks' spelling of round_mode ----------------------------------------------------

POOL_NET = """name: "pools"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 10 dim: 9 } } }
layer { name: "max" type: "Pooling" bottom: "data" top: "max"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 MODE_A } }
layer { name: "ave" type: "Pooling" bottom: "data" top: "ave"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 MODE_B } }
"""


def _pool_net(tmp_path: Path, name: str, a: str, b: str) -> Path:
    return _write(tmp_path, name, POOL_NET.replace("MODE_A", a).replace("MODE_B", b))


def _forward(path: Path, x: np.ndarray, proto: Path | None = None) -> dict[str, np.ndarray]:
    model = conv.convert_net(path, None, proto=proto).model
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"data": x})))


def test_ceil_mode_false_is_round_mode_floor(tmp_path):
    cv2 = pytest.importorskip("cv2")
    fork = _pool_net(tmp_path, "fork.prototxt", "ceil_mode: false", "ceil_mode: false")
    bvlc = _pool_net(tmp_path, "bvlc.prototxt", "round_mode: FLOOR", "round_mode: FLOOR")
    ceil = _pool_net(tmp_path, "ceil.prototxt", "ceil_mode: true", "")
    net = read_net_prototxt(fork)
    assert [lp.pooling_param.round_mode for lp in net.layer[1:]] == [caffe_pb2.PoolingParameter.FLOOR] * 2
    assert not any(lp.pooling_param.HasField("ceil_mode") for lp in net.layer)
    x = np.random.default_rng(0).normal(size=(1, 2, 10, 9)).astype(np.float32)
    ours, same = _forward(fork, x), _forward(bvlc, x)
    # By hand: FLOOR((10 + 2 - 3) / 2) + 1 = 5 and FLOOR((9 + 2 - 3) / 2) + 1 = 5 rows and columns
    # (CEIL: 6 x 5); AVE without pad: FLOOR(7 / 2) + 1 = 4 and FLOOR(6 / 2) + 1 = 4 (CEIL: 5 x 4).
    assert ours["max"].shape == (1, 2, 5, 5) and ours["ave"].shape == (1, 2, 4, 4)
    assert _forward(ceil, x)["max"].shape == (1, 2, 6, 5) and _forward(ceil, x)["ave"].shape == (1, 2, 5, 4)
    for k in ("max", "ave"):
        np.testing.assert_array_equal(ours[k], same[k])
    # OpenCV's importer reads ceil_mode itself.
    ref = cv2.dnn.readNetFromCaffe(str(fork))
    ref.setInput(x)
    got = dict(zip(["max", "ave"], ref.forward(["max", "ave"])))
    for k in ("max", "ave"):
        np.testing.assert_allclose(ours[k], got[k], rtol=1e-5, atol=1e-6)
    # By hand: the first max window covers rows -1..1 and columns -1..1 (padding excluded).
    assert ours["max"][0, 0, 0, 0] == x[0, 0, :2, :2].max()


def test_ceil_mode_and_round_mode_that_disagree_are_refused(tmp_path):
    path = _pool_net(tmp_path, "net.prototxt", "ceil_mode: false round_mode: CEIL", "")
    with pytest.raises(CaffeCompatError, match="sets both ceil_mode: false and round_mode: CEIL"):
        read_net_prototxt(path)


# --- -proto: a fork's own caffe.proto ----------------------------------------------------------------

POOL_METHODS = "message PoolingParameter {\n  enum PoolMethod {\n    MAX = 0;\n    AVE = 1;\n    STOCHASTIC = 2;\n"
RARE_EDITS = [
    # OpenCV's way: ceil_mode takes number 13, BVLC's round_mode.
    ("  optional PoolingParameter.RoundMode round_mode = 13 [default = CEIL];",
     "  optional bool ceil_mode = 13 [default = true];"),
    (POOL_METHODS, POOL_METHODS + "    DEF = 3;\n"),
    ("  optional bool force_nd_im2col = 17 [default = false];\n}",
     "  optional bool force_nd_im2col = 17 [default = false];\n  optional uint32 hole = 117 [default = 1];\n}"),
    ("  optional WindowDataParameter window_data_param = 129;",
     "  optional WindowDataParameter window_data_param = 129;\n  optional RareParameter rare_param = 150;"),
    ("  optional bool normalize = 2;", "  optional bool normalize = 2 [default = true];"),
]
RARE_MESSAGES = "\nmessage RareParameter {\n  optional float gain = 1 [default = 1];\n}\n"

RARE_BAD = """name: "rare"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 10 dim: 9 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 2 kernel_size: 3 hole: 2 } }
layer { name: "boost" type: "Rare" bottom: "conv1" top: "boost" rare_param { gain: 2 } }
layer { name: "pool2" type: "Pooling" bottom: "boost" top: "pool2" pooling_param { pool: DEF kernel_size: 2 } }
"""


def test_with_proto_a_rare_forks_file_reads_and_what_we_lack_is_listed_at_once(tmp_path):
    proto = _fork_proto(tmp_path, "rare.proto", RARE_EDITS, RARE_MESSAGES)
    path = _write(tmp_path, "net.prototxt", RARE_BAD)
    with pytest.raises(CaffeCompatError, match=rf"{re.escape(str(path))}:4:\d+: .*unknown field 'hole' in "
                                               "ConvolutionParameter.*-proto FILE"):
        read_net_prototxt(path)
    with pytest.raises(NotSupportedError) as e:
        read_net_prototxt(path, proto)
    assert str(e.value) == (
        "not supported: layer conv1 of type Convolution (field convolution_param.hole of rare.proto); "
        "layer boost of type Rare (field rare_param of rare.proto); "
        f"layer pool2 of type Pooling (field pooling_param.pool of rare.proto: value DEF) (in {path}; 3 in all)")


def test_with_proto_a_rare_forks_net_runs_as_the_fork_reads_it(tmp_path, capsys):
    cv2 = pytest.importorskip("cv2")
    proto = _fork_proto(tmp_path, "rare.proto", RARE_EDITS, RARE_MESSAGES)
    fork = _pool_net(tmp_path, "fork.prototxt", "ceil_mode: false", "ceil_mode: false")
    net = read_net_prototxt(fork, proto)
    assert [lp.pooling_param.round_mode for lp in net.layer[1:]] == [caffe_pb2.PoolingParameter.FLOOR] * 2
    x = np.random.default_rng(1).normal(size=(1, 2, 10, 9)).astype(np.float32)
    ours = _forward(fork, x, proto)
    ref = cv2.dnn.readNetFromCaffe(str(fork))
    ref.setInput(x)
    for k, v in zip(["max", "ave"], ref.forward(["max", "ave"])):
        np.testing.assert_allclose(ours[k], v, rtol=1e-5, atol=1e-6)
    # The command line takes -proto on every command.
    out = tmp_path / "m.onnx"
    assert cli.main(["convert", str(fork), "-", str(out), "-proto", str(proto)]) == 0, capsys.readouterr().err
    assert "inputs data[1x2x10x9]" in capsys.readouterr().out
    up = tmp_path / "up.prototxt"
    assert cli.main(["upgrade", "-proto", str(proto), str(fork), str(up)]) == 0
    assert "ceil_mode: false" in up.read_text()
    assert read_net_prototxt(up).layer[1].pooling_param.round_mode == caffe_pb2.PoolingParameter.FLOOR


def test_with_proto_a_default_of_the_forks_schema_holds(tmp_path):
    proto = _fork_proto(tmp_path, "rare.proto", RARE_EDITS, RARE_MESSAGES)
    text = ('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "a" bottom: "b" top: "l" loss_param { '
            'ignore_label: 3 } }\nlayer { name: "loss2" type: "SoftmaxWithLoss" bottom: "a" bottom: "b" top: "m" }\n')
    net = read_net_prototxt(_write(tmp_path, "net.prototxt", text), proto, check=False)
    # The fork reads normalize as true where the file sets loss_param but not normalize.
    assert net.layer[0].loss_param.HasField("normalize") and net.layer[0].loss_param.normalize
    assert not net.layer[1].HasField("loss_param")


def test_with_proto_of_ssds_numbering_an_ssd_file_reads_as_without_it(zoo, tmp_path):
    ssd_fields = ("  optional WindowDataParameter window_data_param = 129;\n"
                  "  optional PermuteParameter permute_param = 202;\n"
                  "  optional PriorBoxParameter prior_box_param = 203;\n"
                  "  optional DetectionOutputParameter detection_output_param = 204;\n")
    messages = "".join("\n" + _forks_message(m) for m in (
        "PermuteParameter", "PriorBoxParameter", "DetectionOutputParameter", "NonMaximumSuppressionParameter",
        "SaveOutputParameter", "ResizeParameter"))
    proto = _fork_proto(tmp_path, "ssd.proto", [("  optional WindowDataParameter window_data_param = 129;\n",
                                                 ssd_fields)], messages)
    path = zoo / "mobilenet_ssd" / "MobileNetSSD_deploy.prototxt"
    assert read_net_prototxt(path, proto, check=False) == read_net_prototxt(path, check=False)


def test_solver_fork_fields(tmp_path):
    base = 'net: "train.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 10\n'
    assert read_solver_prototxt(_write(tmp_path, "a.prototxt", base + 'eval_type: "classification"\n')).max_iter == 10
    with pytest.raises(NotSupportedError, match="solver field eval_type of SSD"):
        read_solver_prototxt(_write(tmp_path, "b.prototxt", base + 'eval_type: "detection"\nap_version: "11point"\n'))
    inline = base.replace('net: "train.prototxt"', 'net_param { layer { name: "p" type: "Pooling" bottom: "x" '
                                                   'top: "y" pooling_param { ceil_mode: false } } }')
    solver = read_solver_prototxt(_write(tmp_path, "c.prototxt", inline))
    assert solver.net_param.layer[0].pooling_param.round_mode == caffe_pb2.PoolingParameter.FLOOR


def test_solver_with_proto(tmp_path):
    proto = _fork_proto(tmp_path, "rare.proto", RARE_EDITS, RARE_MESSAGES)
    text = ('net_param { layer { name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { ceil_mode: false '
            '} } }\nbase_lr: 0.01\nlr_policy: "fixed"\n')
    solver = read_solver_prototxt(_write(tmp_path, "solver.prototxt", text), proto=proto)
    assert solver.net_param.layer[0].pooling_param.round_mode == caffe_pb2.PoolingParameter.FLOOR
    with pytest.raises(CaffeCompatError, match="unknown field 'ceil_mode' in PoolingParameter"):
        read_solver_prototxt(tmp_path / "solver.prototxt", proto=_fork_proto(tmp_path, "plain.proto", []))


@pytest.mark.parametrize("command", ["train", "test", "time", "convert", "upgrade"])
def test_every_command_takes_proto(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    assert "-proto FILE" in capsys.readouterr().out


def test_weights_of_a_forks_caffemodel_load_by_layer_name(tmp_path):
    # DeepLab/PSPNet number interp_param 143, BVLC's input_param: the file must still read with our schema.
    interp = "\nmessage InterpParameter {\n  optional int32 height = 1;\n  optional int32 width = 2;\n}\n"
    proto = _fork_proto(tmp_path, "psp.proto", [("  optional InputParameter input_param = 143;",
                                                 "  optional InterpParameter interp_param = 143;")], interp)
    net_cls = userproto.schema(proto).message_class("NetParameter")
    model = net_cls(name="psp")
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(4, 3, 3, 3)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    conv_layer = model.layer.add(name="conv", type="Convolution")
    for a in (w, b):
        blob = conv_layer.blobs.add()
        blob.shape.dim.extend(a.shape)
        blob.data.extend(a.reshape(-1).tolist())
    model.layer.add(name="zoom", type="Interp").interp_param.height = 65
    path = tmp_path / "psp.caffemodel"
    path.write_bytes(model.SerializeToString())
    weights = read_weights(path)
    assert [n for n, _ in weights.layers] == ["conv", "zoom"]
    np.testing.assert_array_equal(weights.blobs["conv"][0], w)
    np.testing.assert_array_equal(weights.blobs["conv"][1], b)
    assert weights.blobs["zoom"] == []
    # And a BVLC caffemodel written by us stays readable by the fork's schema: the same blobs.
    ours = caffe_pb2.NetParameter(name="x")
    array_to_blob(w, ours.layer.add(name="conv", type="Convolution").blobs.add())
    theirs = net_cls.FromString(ours.SerializeToString())
    assert list(theirs.layer[0].blobs[0].data) == w.reshape(-1).tolist()


def test_proto_errors_are_one_line(tmp_path, monkeypatch):
    broken = _write(tmp_path, "broken.proto", 'syntax = "proto2";\nmessage NetParameter { optional Nope x = 1; }\n')
    with pytest.raises(CaffeCompatError, match=r"-proto .*broken.proto: protoc cannot compile it: .*Nope"):
        userproto.schema(broken)
    with pytest.raises(CaffeCompatError, match="no such file"):
        userproto.schema(tmp_path / "missing.proto")
    other = _fork_proto(tmp_path, "other.proto", [], "")
    real = userproto.importlib.util.find_spec
    monkeypatch.setattr(userproto.importlib.util, "find_spec", lambda n: None if n == "grpc_tools" else real(n))
    with pytest.raises(CaffeCompatError, match=r"pip install 'caffecompat\[proto\]'"):
        userproto.schema(other)
