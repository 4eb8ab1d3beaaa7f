"""`caffecompat convert -input_shape NAME:N,C,H,W -dynamic_batch`, and the streamed model file.

References: OpenCV's cv2.dnn.readNetFromCaffe on OpenPose's real deploy file
(placeholder input 1x3x1x1, "defined at runtime"), which sizes a net from its
actual input, run on a real-size batch of two; the same model run image by
image; and the in-memory ModelProto of the same conversion.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from caffecompat import cli, glog
from caffecompat import convert as conv
from caffecompat.errors import CaffeCompatError, NotSupportedError
from caffecompat.formats.net import read_net_prototxt
from caffecompat.net.state import make_state
from caffecompat.proto import caffe_pb2
from tests.golden_forward import TOLERANCE, relative_error
from tests.test_opencv_bvlc import _random_weights


@pytest.fixture(autouse=True)
def quiet_log():
    glog.set_stream(io.StringIO())
    yield
    glog.set_stream(None)


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def test_openpose_with_a_real_input_size_and_any_batch_matches_opencv(zoo, tmp_path, capsys):
    cv2 = pytest.importorskip("cv2")
    deploy = zoo / "openpose_coco" / "pose_deploy_linevec.prototxt"
    h, w = 128, 160  # a real image size (a multiple of OpenPose's stride 8), kept small for the CPU
    net = read_net_prototxt(deploy)
    assert [tuple(s.dim) for s in net.layer[0].input_param.shape] == [(1, 3, 1, 1)]  # the placeholder
    conv.set_input_shapes(net, make_state(net, caffe_pb2.TEST), {"image": (1, 3, h, w)}, str(deploy))
    weights = tmp_path / "pose.caffemodel"
    _random_weights(net, weights)
    out = tmp_path / "pose.onnx"
    assert cli.main(["convert", str(deploy), str(weights), str(out), "-input_shape", f"image:1,3,{h},{w}",
                     "-dynamic_batch"]) == 0, capsys.readouterr().err
    assert f"inputs image[Nx3x{h}x{w}]" in capsys.readouterr().out
    model = onnx.load(str(out))
    assert [_dims(vi) for vi in model.graph.input] == [["N", 3, h, w]]
    assert [_dims(vi) for vi in model.graph.output] == [["N", 57, h // 8, w // 8]]

    x = np.random.default_rng(0).uniform(-1, 1, size=(2, 3, h, w)).astype(np.float32)
    ref = cv2.dnn.readNetFromCaffe(str(deploy), str(weights))
    ref.setInput(x)
    want = ref.forward()  # the last layer, whose top is net_output
    sess = _session(out)
    (got,) = sess.run(["net_output"], {"image": x})
    assert got.shape == want.shape == (2, 57, h // 8, w // 8)
    assert relative_error(got, want) < TOLERANCE
    assert np.abs(want).max() > 1e-3  # not a vacuous comparison of zeros
    (one,) = sess.run(["net_output"], {"image": x[1:]})
    np.testing.assert_allclose(one, got[1:], rtol=1e-5, atol=1e-6)


SMALL = """name: "small"
layer { name: "data" type: "Input" top: "data" top: "aux"
        input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "flat" type: "Flatten" bottom: "conv" top: "flat" }
layer { name: "ip" type: "InnerProduct" bottom: "flat" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "r" type: "Reshape" bottom: "ip" top: "r" reshape_param { shape { dim: 0 dim: 5 dim: 1 } } }
layer { name: "sum" type: "Reduction" bottom: "aux" top: "sum" reduction_param { axis: 1 } }
"""


def _small(tmp_path, text: str = SMALL):
    path = tmp_path / "small.prototxt"
    path.write_text(text)
    return path


def test_input_shapes_replace_the_prototxts_and_the_batch_can_stay_open(tmp_path):
    result = conv.convert_net(_small(tmp_path), None, input_shapes={"data": (3, 3, 10, 12), "aux": (3, 7)},
                              dynamic_batch=True)
    assert result.inputs == {"data": ("N", 3, 10, 12), "aux": ("N", 7)}
    assert {o.name: _dims(o) for o in result.graph.graph.output} == {"r": ["N", 5, 1], "sum": ["N"]}
    path = tmp_path / "m.onnx"
    result.save(path)
    sess = _session(path)
    rng = np.random.default_rng(1)
    x, aux = rng.normal(size=(4, 3, 10, 12)).astype(np.float32), rng.normal(size=(4, 7)).astype(np.float32)
    r, s = sess.run(["r", "sum"], {"data": x, "aux": aux})
    assert r.shape == (4, 5, 1) and s.shape == (4,)
    np.testing.assert_allclose(s, aux.sum(axis=1), rtol=1e-5)
    r1, _ = sess.run(["r", "sum"], {"data": x[2:3], "aux": aux[2:3]})
    np.testing.assert_allclose(r1, r[2:3], rtol=1e-5, atol=1e-6)


def test_input_shape_errors_name_the_inputs(tmp_path, capsys):
    path = _small(tmp_path)
    with pytest.raises(CaffeCompatError, match=r"no input blob 'img' \(its inputs: data, aux\)"):
        conv.convert_net(path, None, input_shapes={"img": (1, 3, 8, 8)})
    with pytest.raises(CaffeCompatError, match="has 2 inputs"):
        conv.convert_net(path, None, input_shapes={"": (1, 3, 8, 8)})
    assert conv.parse_input_shape("1,3,224,224") == ("", (1, 3, 224, 224))
    assert conv.parse_input_shape("data:1,3,224,224") == ("data", (1, 3, 224, 224))
    for bad in ("data:1,3,x", "data:", "data:1,0,2"):
        with pytest.raises(CaffeCompatError, match="expected NAME:N,C,H,W"):
            conv.parse_input_shape(bad)
    assert cli.main(["convert", str(path), "-", str(tmp_path / "m.onnx"), "-input_shape", "data:1,3"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_layer_that_fixes_the_batch_is_named(tmp_path):
    text = SMALL + ('layer { name: "cut" type: "Slice" bottom: "ip" top: "a" top: "b" '
                    'slice_param { axis: 0 slice_point: 1 } }\n')
    with pytest.raises(NotSupportedError, match="-dynamic_batch with layer\\(s\\) cut of .*small.prototxt"):
        conv.convert_net(_small(tmp_path, text), None, dynamic_batch=True)
    conv.convert_net(_small(tmp_path, text), None)  # a fixed batch is fine


@pytest.mark.parametrize("external", [False, True])
def test_the_streamed_file_holds_the_in_memory_model(tmp_path, external):
    result = conv.convert_net(_small(tmp_path), None, seed=5)
    files = result.save(tmp_path / "m.onnx", external_data=external)
    assert [f.name for f in files] == (["m.onnx", "m.onnx.data"] if external else ["m.onnx"])
    onnx.checker.check_model(str(files[0]), full_check=True)
    written, built = onnx.load(str(files[0])), result.model
    assert written.graph.node == built.graph.node and written.graph.input == built.graph.input
    assert written.graph.output == built.graph.output
    got = {t.name: onnx.numpy_helper.to_array(t) for t in written.graph.initializer}
    want = {t.name: onnx.numpy_helper.to_array(t) for t in built.graph.initializer}
    assert got.keys() == want.keys() and set(result.param_names) <= set(got)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
