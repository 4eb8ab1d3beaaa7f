"""Duplicate and empty layer names, as Caffe handles them.

References: the golden forward/dup_names run of the original Caffe (its
blobs are compared in test_forward_golden; here, `effective_weights.caffemodel`,
Net::ToProto after the weights were copied: the first layer of a name gets
every source layer of that name, the second keeps its filler), HED's real
train_val (five layers named `crop`, six unnamed losses), and numpy.
"""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pytest

from caffecompat import glog
from caffecompat.errors import NotSupportedError
from caffecompat.formats.caffemodel import read_weights
from caffecompat.formats.net import read_net_prototxt
from caffecompat.formats.protofile import parse_text
from caffecompat.net import spec as netspec
from caffecompat.net.export import export
from caffecompat.net.weights import init_params, load_caffemodel
from caffecompat.proto import caffe_pb2
from caffecompat.solver.snapshot import net_to_proto


@pytest.fixture(autouse=True)
def quiet_log():
    stream = io.StringIO()
    glog.set_stream(stream)
    yield stream
    glog.set_stream(None)


def test_weights_go_to_the_first_layer_of_a_name_as_caffe_copies_them(golden, quiet_log):
    folder = golden / "forward" / "dup_names"
    spec = netspec.build(read_net_prototxt(folder / "net.prototxt"), caffe_pb2.TEST)
    params = init_params(spec, np.random.default_rng(0))
    load_caffemodel(spec, params, str(folder / "weights.caffemodel"))
    ours = net_to_proto(spec, params)
    caffe = read_weights(folder / "effective_weights.caffemodel")
    assert [(lp.name, lp.type) for lp in ours.layer] == [(lp.name, lp.type) for lp in caffe.net.layer]
    assert [lp.name for lp in ours.layer][4] == ""  # the unnamed ReLU keeps no name, as in Caffe's ToProto
    for lp, (name, blobs) in zip(ours.layer, caffe.layers):
        assert len(lp.blobs) == len(blobs), name
        for ours_blob, theirs in zip(lp.blobs, blobs):
            np.testing.assert_array_equal(np.asarray(ours_blob.data, np.float32).reshape(theirs.shape), theirs)
    # Both `dup` entries of weights.caffemodel went into the first `dup` layer; the second keeps 0.05 / -0.1.
    second = spec.layers[3]
    assert second.name == "dup" and second.param_names == ["dup[3]#0", "dup[3]#1"]
    assert (params["dup[3]#0"] == np.float32(0.05)).all() and (params["dup[3]#1"] == np.float32(-0.1)).all()
    assert "Ignoring source layer" not in quiet_log.getvalue()


def _hed_train_val(zoo) -> caffe_pb2.NetParameter:
    """HED's train_val with its HED-fork data layers swapped for DummyData of the same tops."""
    net = read_net_prototxt(zoo / "hed" / "train_val.prototxt", check=False)
    for lp in net.layer:
        if lp.type == "ImageLabelmapData":
            lp.type = "DummyData"
            lp.ClearField("image_data_param")
            lp.ClearField("transform_param")
            lp.dummy_data_param.shape.add(dim=[1, 3, 48, 64])
            lp.dummy_data_param.shape.add(dim=[1, 1, 48, 64])
    return net


def test_hed_builds_with_five_crops_and_unnamed_losses(zoo):
    with pytest.raises(NotSupportedError, match="layer data of type ImageLabelmapData \\(a layer of HED\\)"):
        read_net_prototxt(zoo / "hed" / "train_val.prototxt")
    net = _hed_train_val(zoo)
    for phase in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        spec = netspec.build(net, phase, source_shapes=lambda lp: [tuple(s.dim) for s in lp.dummy_data_param.shape])
        crops = [n for n in spec.layers if n.name == "crop"]
        losses = [n for n in spec.layers if n.type == "SigmoidCrossEntropyLoss"]
        assert len(crops) == 5 and all(n.type == "Crop" for n in crops)
        assert len(losses) == 6 and all(n.name == "" for n in losses)
        assert [w for _, w in spec.loss_tops()] == [1.0] * 6
        assert all(spec.shapes[n.tops[0]] == (1, 1, 48, 64) for n in crops)
        # Every layer's parameters are its own, and the snapshot keeps Caffe's names.
        assert len(set(spec.params)) == sum(len(n.param_names) for n in spec.layers)
        proto = net_to_proto(spec, init_params(spec, np.random.default_rng(0)))
        assert [lp.name for lp in proto.layer].count("crop") == 5
        assert [lp.name for lp in proto.layer if lp.type == "SigmoidCrossEntropyLoss"] == [""] * 6


def test_unnamed_and_repeated_names_in_place_and_with_parameters():
    text = """
    layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 3
            weight_filler { type: "gaussian" } bias_filler { type: "constant" value: 0.5 } } }
    layer { type: "InnerProduct" bottom: "y" top: "y2" inner_product_param { num_output: 3
            weight_filler { type: "gaussian" } } }
    layer { type: "Power" bottom: "y2" top: "y2" power_param { shift: 1 } }
    layer { type: "Power" bottom: "y2" top: "y2" power_param { scale: 3 } }
    layer { name: "s" type: "TanH" bottom: "y2" top: "y2" }
    """
    spec = netspec.build(parse_text(text, caffe_pb2.NetParameter, "net", "net prototxt"), caffe_pb2.TEST)
    names = [n.name for n in spec.layers]
    assert names == ["data", "", "", "", "", "s"]
    assert list(spec.params) == ["#0", "#1", "[2]#0", "[2]#1"]
    tops = [t for n in spec.layers for t in n.tops]
    assert len(set(tops)) == len(tops) and tops[-1] == "y2"
    params = init_params(spec, np.random.default_rng(3))
    model = export(spec, params=params, outputs=["y2"]).model
    x = np.random.default_rng(4).normal(size=(2, 3)).astype(np.float32)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["y2"], {"x": x})[0]
    y = x @ params["#0"].T + params["#1"]
    want = np.tanh(3 * (y @ params["[2]#0"].T + params["[2]#1"] + 1))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
