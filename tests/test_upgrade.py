"""Legacy net and solver upgrades (caffecompat.formats.upgrade) against Caffe's behaviour."""

from __future__ import annotations

import io

import pytest
from google.protobuf import text_format

from caffecompat import glog
from caffecompat.errors import CaffeCompatError
from caffecompat.formats import protofile, upgrade
from caffecompat.proto import caffe_pb2


@pytest.fixture
def log() -> io.StringIO:
    stream = io.StringIO()
    glog.set_stream(stream)
    yield stream
    glog.set_stream(None)


def net_from(text: str) -> caffe_pb2.NetParameter:
    return text_format.Parse(text, caffe_pb2.NetParameter())


def test_v1_legacy_matches_caffe_upgrade_net_proto_text(golden, log):
    d = golden / "forward" / "v1_legacy"
    net = protofile.read_text(d / "net.prototxt", caffe_pb2.NetParameter, "net")
    assert upgrade.net_needs_upgrade(net)
    assert upgrade.upgrade_net(net, str(d / "net.prototxt")) is True
    expected = protofile.read_text(d / "upgraded_by_caffe.prototxt", caffe_pb2.NetParameter, "net")
    assert net == expected
    lines = log.getvalue().splitlines()
    assert len(lines) == 1
    assert "upgrade_proto.cpp:" in lines[0] and str(d / "net.prototxt") in lines[0]
    assert "V1LayerParameter" in lines[0] and "input fields" in lines[0]


def test_current_net_is_left_alone(log):
    net = net_from('layer { name: "a" type: "ReLU" bottom: "x" top: "x" }')
    before = net.SerializeToString()
    assert not upgrade.net_needs_upgrade(net)
    assert upgrade.upgrade_net(net, "n.prototxt") is False
    assert net.SerializeToString() == before
    assert log.getvalue() == ""


V0_NET = """
name: "v0"
input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 2 group: 1
                 biasterm: false blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
                 weight_filler { type: "gaussian" std: 0.01 } }
         bottom: "pad1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 } bottom: "conv1" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.1 beta: 0.5 k: 2 } bottom: "pool1" top: "norm1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 10 } bottom: "norm1" top: "fc" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "fc" top: "fc" }
layers { layer { name: "prob" type: "softmax" } bottom: "fc" top: "prob" }
"""

V0_EXPECTED = """
name: "v0"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 4 bias_term: false pad: 2 kernel_size: 3 group: 1 stride: 2
                            weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
        lrn_param { local_size: 3 alpha: 0.1 beta: 0.5 k: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "norm1" top: "fc" inner_product_param { num_output: 10 } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" dropout_param { dropout_ratio: 0.3 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def test_v0_net_with_padding_layer(log):
    net = net_from(V0_NET)
    problems: list[str] = []
    assert upgrade.upgrade_net(net, "v0.prototxt", problems)
    assert net == net_from(V0_EXPECTED), text_format.MessageToString(net)
    assert problems == []
    assert "V0LayerParameter" in log.getvalue()


def test_v0_data_layer_and_transform_fields(log):
    net = net_from("""
      layers { layer { name: "d" type: "data" source: "db" batchsize: 16 scale: 0.5 meanfile: "m"
                       cropsize: 4 mirror: true rand_skip: 3 } top: "data" top: "label" }
    """)
    upgrade.upgrade_net(net, "d.prototxt")
    assert net == net_from("""
      layer { name: "d" type: "Data" top: "data" top: "label"
              transform_param { scale: 0.5 mean_file: "m" crop_size: 4 mirror: true }
              data_param { source: "db" batch_size: 16 rand_skip: 3 } }
    """)


def test_v0_setting_on_wrong_layer_type_is_reported_and_dropped(log):
    net = net_from('input: "x" layers { layer { name: "r" type: "relu" num_output: 3 } bottom: "x" top: "y" }')
    problems: list[str] = []
    upgrade.upgrade_net(net, "bad.prototxt", problems)
    assert net == net_from('layer { name: "r" type: "ReLU" bottom: "x" top: "y" }')
    assert len(problems) == 1 and "num_output" in problems[0] and "bad.prototxt" in problems[0]
    assert "E" == log.getvalue()[0]


def test_v0_unknown_type_is_an_error():
    net = net_from('input: "x" layers { layer { name: "w" type: "warp" } bottom: "x" top: "y" }')
    with pytest.raises(CaffeCompatError, match=r"w.prototxt.*unknown type 'warp'"):
        upgrade.upgrade_net(net, "w.prototxt")


def test_v0_padding_into_non_conv_is_an_error():
    net = net_from("""
      input: "x"
      layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "p" }
      layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }
    """)
    with pytest.raises(CaffeCompatError, match="only conv and pool"):
        upgrade.upgrade_net(net, "p.prototxt")


def test_v0_unknown_bottom_is_an_error():
    net = net_from('layers { layer { name: "r" type: "relu" } bottom: "nowhere" top: "r" }')
    with pytest.raises(CaffeCompatError, match="'nowhere'"):
        upgrade.upgrade_net(net, "b.prototxt")


def test_v1_data_transformation_fields_move(log):
    net = net_from("""
      layers { name: "d" type: IMAGE_DATA top: "data"
               image_data_param { source: "list.txt" batch_size: 2 mean_file: "m.binaryproto"
                                  crop_size: 7 mirror: true scale: 0.25 } }
    """)
    upgrade.upgrade_net(net, "t.prototxt")
    assert net == net_from("""
      layer { name: "d" type: "ImageData" top: "data"
              transform_param { scale: 0.25 mean_file: "m.binaryproto" crop_size: 7 mirror: true }
              image_data_param { source: "list.txt" batch_size: 2 } }
    """)
    assert "data transformation" in log.getvalue()


def test_v1_share_modes_names_rules_and_loss_weight(log):
    net = net_from("""
      layers { name: "ip" type: INNER_PRODUCT bottom: "x" top: "y" param: "w" param: "b"
               blob_share_mode: PERMISSIVE blobs_lr: 3 include { phase: TRAIN } exclude { stage: "s" }
               loss_weight: 0.5 inner_product_param { num_output: 2 } }
      layers { type: NONE }
    """)
    upgrade.upgrade_net(net, "s.prototxt")
    assert net == net_from("""
      layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
              param { name: "w" share_mode: PERMISSIVE lr_mult: 3 } param { name: "b" }
              include { phase: TRAIN } exclude { stage: "s" } loss_weight: 0.5
              inner_product_param { num_output: 2 } }
      layer { type: "" }
    """)


def test_every_v1_type_has_a_name():
    for name in caffe_pb2.V1LayerParameter.LayerType.keys():
        net = net_from(f"layers {{ name: 'l' type: {name} }}")
        upgrade._upgrade_v1_net(net, "x", [])
        assert net.layer[0].type == upgrade._V1_TYPES[name]


def test_both_layer_and_layers_is_an_error():
    net = net_from('layer { name: "a" type: "ReLU" } layers { name: "b" type: RELU }')
    with pytest.raises(CaffeCompatError, match=r"mixed.prototxt: .*both 'layer' and 'layers'"):
        upgrade.upgrade_net(net, "mixed.prototxt")


def test_input_shape_becomes_first_input_layer(log):
    net = net_from("""
      input: "a" input_shape { dim: 1 dim: 2 } input: "b" input_shape { dim: 3 }
      layer { name: "c" type: "Concat" bottom: "a" bottom: "b" top: "c" }
    """)
    upgrade.upgrade_net(net, "i.prototxt")
    assert net == net_from("""
      layer { name: "input" type: "Input" top: "a" top: "b"
              input_param { shape { dim: 1 dim: 2 } shape { dim: 3 } } }
      layer { name: "c" type: "Concat" bottom: "a" bottom: "b" top: "c" }
    """)


def test_input_without_shape_is_dropped(log):
    net = net_from('input: "data" layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    assert upgrade.upgrade_net(net, "i.prototxt")
    assert net == net_from('layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')


def test_too_few_input_dims_is_an_error():
    net = net_from('input: "a" input: "b" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4')
    with pytest.raises(CaffeCompatError, match="8 input_dim values"):
        upgrade.upgrade_net(net, "i.prototxt")


def test_batchnorm_with_three_params_gets_zero_multipliers(log):
    net = net_from("""
      layer { name: "bn" type: "BatchNorm" param { lr_mult: 1 name: "m" } param { lr_mult: 1 } param {} }
      layer { name: "bn2" type: "BatchNorm" param { lr_mult: 1 } }
    """)
    upgrade.upgrade_net(net, "bn.prototxt")
    assert net == net_from("""
      layer { name: "bn" type: "BatchNorm" param { lr_mult: 0 decay_mult: 0 name: "m" }
              param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 } }
      layer { name: "bn2" type: "BatchNorm" param { lr_mult: 1 } }
    """)


@pytest.mark.parametrize(
    "enum,name",
    [("SGD", "SGD"), ("NESTEROV", "Nesterov"), ("ADAGRAD", "AdaGrad"), ("RMSPROP", "RMSProp"),
     ("ADADELTA", "AdaDelta"), ("ADAM", "Adam")],
)
def test_solver_type_enum_becomes_string(enum, name, log):
    solver = text_format.Parse(f"base_lr: 0.1 solver_type: {enum}", caffe_pb2.SolverParameter())
    assert upgrade.solver_needs_upgrade(solver)
    assert upgrade.upgrade_solver(solver, "s.prototxt")
    assert solver.type == name and not solver.HasField("solver_type")
    assert "s.prototxt" in log.getvalue()


def test_current_solver_is_left_alone(log):
    solver = text_format.Parse('type: "Adam"', caffe_pb2.SolverParameter())
    assert not upgrade.upgrade_solver(solver, "s.prototxt")
    assert log.getvalue() == ""


def test_solver_with_both_type_fields_is_an_error():
    solver = text_format.Parse('type: "Adam" solver_type: SGD', caffe_pb2.SolverParameter())
    with pytest.raises(CaffeCompatError, match="both.prototxt: .*solver_type"):
        upgrade.upgrade_solver(solver, "both.prototxt")
