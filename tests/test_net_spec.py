"""NetSpec: Caffe's state rules, split insertion, in-place value names, outputs, params, weight copy."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from caffecompat.errors import CaffeCompatError, NotSupportedError
from caffecompat.net import spec as netspec
from caffecompat.net.weights import copy_trained_layers, init_params
from caffecompat.proto import caffe_pb2

HEAD = 'layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }\n'


def _net(text: str) -> caffe_pb2.NetParameter:
    return text_format.Parse(HEAD + text, caffe_pb2.NetParameter())


def _ip(name: str, bottom: str, top: str, extra: str = "") -> str:
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{top}" {extra} '
            'inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }\n')


def test_include_exclude_phase_stage_level():
    net = _net(
        _ip("train_only", "data", "a", 'include { phase: TRAIN }')
        + _ip("test_only", "data", "b", 'include { phase: TEST }')
        + _ip("staged", "data", "c", 'include { stage: "deploy" }')
        + _ip("not_staged", "data", "d", 'exclude { stage: "deploy" }')
        + _ip("leveled", "data", "e", 'include { min_level: 2 }')
    )
    names = lambda s: [n.name for n in s.layers if n.type != "Split"]  # noqa: E731
    assert names(netspec.build(net, caffe_pb2.TRAIN)) == ["in", "train_only", "not_staged"]
    assert names(netspec.build(net, caffe_pb2.TEST, stages=["deploy"])) == ["in", "test_only", "staged"]
    assert names(netspec.build(net, caffe_pb2.TEST, level=2)) == ["in", "test_only", "not_staged", "leveled"]


def test_include_and_exclude_together_is_an_error():
    net = _net(_ip("x", "data", "a", 'include { phase: TRAIN } exclude { phase: TEST }'))
    with pytest.raises(CaffeCompatError, match="both include and exclude"):
        netspec.build(net, caffe_pb2.TRAIN)


def test_split_layers_named_as_caffe_and_in_place_values():
    net = _net(_ip("ip", "data", "h")
               + 'layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }\n'
               + _ip("a", "h", "out_a") + _ip("b", "h", "out_b"))
    spec = netspec.build(net, caffe_pb2.TEST)
    split = spec.layer("h_relu_0_split")
    assert split.type == "Split"
    assert split.tops == ["h_relu_0_split_0", "h_relu_0_split_1"]
    # The last value of blob h is named h; the one the in-place ReLU overwrote is h@ip.
    assert spec.layer("ip").tops == ["h@ip"] and spec.layer("relu").tops == ["h"]
    # Net outputs: blobs no later layer reads, sorted by name as Caffe's std::set.
    assert spec.outputs == ["out_a", "out_b"]


def test_missing_bottom_and_duplicate_top():
    with pytest.raises(CaffeCompatError, match="'nope'"):
        netspec.build(_net(_ip("x", "nope", "a")), caffe_pb2.TEST)
    with pytest.raises(CaffeCompatError, match="already produced"):
        netspec.build(_net(_ip("x", "data", "a") + _ip("y", "data", "a")), caffe_pb2.TEST)


def test_unknown_type_names_the_file_and_the_closest_types():
    net = _net('layer { name: "w" type: "Warp" bottom: "data" top: "w" }')
    with pytest.raises(CaffeCompatError, match=r"^x.prototxt: layer 'w' has unknown type 'Warp': it is not a layer "
                                               "type of BVLC Caffe"):
        netspec.build(net, caffe_pb2.TEST, source="x.prototxt")
    net = _net('layer { name: "c" type: "Convolutoin" bottom: "data" top: "c" }')
    with pytest.raises(CaffeCompatError, match="unknown type 'Convolutoin': did you mean Convolution"):
        netspec.build(net, caffe_pb2.TEST, source="x.prototxt")
    net = _net('layer { name: "r" type: "relu" bottom: "data" top: "r" }')
    with pytest.raises(CaffeCompatError, match="unknown type 'relu': did you mean ReLU"):
        netspec.build(net, caffe_pb2.TEST, source="x.prototxt")


def test_caffe_type_we_lack_is_not_supported():
    from caffecompat.layers.caffe_types import CAFFE_TYPES
    from caffecompat.layers.registry import supported_types

    lacking = sorted(CAFFE_TYPES - set(supported_types()))
    if not lacking:
        pytest.skip("caffecompat runs every BVLC Caffe layer type")
    net = _net(f'layer {{ name: "l" type: "{lacking[0]}" bottom: "data" top: "l" }}')
    with pytest.raises(NotSupportedError, match=rf"not supported: layer l of type {lacking[0]} \(x.prototxt\)"):
        netspec.build(net, caffe_pb2.TEST, source="x.prototxt")


def test_unknown_type_is_reported_before_any_data_layer_opens():
    opened = []
    net = _net('layer { name: "d" type: "Data" top: "d2" }\n'
               'layer { name: "w" type: "Wrap" bottom: "data" top: "w" }')
    with pytest.raises(CaffeCompatError, match="unknown type 'Wrap'"):
        netspec.build(net, caffe_pb2.TEST, source_shapes=lambda lp: opened.append(lp.name) or [(1, 1)])
    assert opened == []


def test_shared_params_are_one_tensor_and_loss_weights():
    net = _net(_ip("a", "data", "x", 'param { name: "W" lr_mult: 2 } param { name: "B" }')
               + _ip("b", "data", "y", 'param { name: "W" } param { name: "B" }')
               + 'layer { name: "loss" type: "EuclideanLoss" bottom: "x" bottom: "y" top: "loss" }\n')
    spec = netspec.build(net, caffe_pb2.TRAIN)
    assert spec.layer("b").param_names == spec.layer("a").param_names == ["a#0", "a#1"]
    assert list(spec.params) == ["a#0", "a#1"] and spec.params["a#0"].lr_mult == 2
    # LossLayer: top 0 weighs 1 unless loss_weight says otherwise.
    assert spec.loss_tops() == [("loss", 1.0)]


def test_weight_copy_by_name_and_shape_mismatch():
    net = _net(_ip("kept", "data", "a") + _ip("fresh", "a", "b"))
    spec = netspec.build(net, caffe_pb2.TEST)
    values = init_params(spec, np.random.default_rng(0))
    fresh = values["fresh#0"].copy()
    source = {"kept": [np.ones((4, 3), np.float32), np.full((4,), 2, np.float32)],
              "gone": [np.zeros((1,), np.float32)]}
    assert copy_trained_layers(spec, values, source, "w.caffemodel") == ["kept"]
    assert (values["kept#0"] == 1).all() and (values["kept#1"] == 2).all()
    assert (values["fresh#0"] == fresh).all()  # not in the file: keeps its filler
    with pytest.raises(CaffeCompatError, match=r"'kept'.*\[5, 3\].*\[4, 3\].*rename the layer"):
        copy_trained_layers(spec, values, {"kept": [np.ones((5, 3), np.float32), np.ones(4, np.float32)]},
                            "w.caffemodel")
