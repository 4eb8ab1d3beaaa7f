"""pycaffe's Net API against hand-computed results: ranges, diffs, saving, reshaping, blobs, MemoryData, NetSpec.

The net of pycaffe's own test_net.py (DummyData -> Convolution -> InnerProduct
-> SoftmaxWithLoss, force_backward) checks forward/backward on a partial range
against numpy's InnerProduct and a direct convolution sum.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import caffecompat as caffe
from caffecompat import layers as L
from caffecompat import params as P
from caffecompat.errors import CaffeCompatError
from caffecompat.formats.net import read_net_prototxt
from caffecompat.proto import caffe_pb2

REPO = Path(__file__).resolve().parent.parent

SIMPLE = """name: 'testnet' force_backward: true
layer { type: 'DummyData' name: 'data' top: 'data' top: 'label'
  dummy_data_param { num: 5 channels: 2 height: 3 width: 4 num: 5 channels: 1 height: 1 width: 1
    data_filler { type: 'gaussian' std: 1 } data_filler { type: 'constant' } } }
layer { type: 'Convolution' name: 'conv' bottom: 'data' top: 'conv'
  convolution_param { num_output: 11 kernel_size: 2 pad: 3
    weight_filler { type: 'gaussian' std: 1 } bias_filler { type: 'constant' value: 2 } }
  param { decay_mult: 1 } param { decay_mult: 0 } }
layer { type: 'InnerProduct' name: 'ip' bottom: 'conv' top: 'ip_blob'
  inner_product_param { num_output: 13 weight_filler { type: 'gaussian' std: 2.5 }
    bias_filler { type: 'constant' value: -3 } } }
layer { type: 'SoftmaxWithLoss' name: 'loss' bottom: 'ip_blob' bottom: 'label' top: 'loss' }
"""

DEPLOY = """name: 'deploy'
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 dim: 6 dim: 5 } } }
layer { name: 'conv' type: 'Convolution' bottom: 'data' top: 'conv'
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2
    weight_filler { type: 'gaussian' std: 0.5 } bias_filler { type: 'gaussian' std: 0.5 } } }
layer { name: 'relu' type: 'ReLU' bottom: 'conv' top: 'conv' }
layer { name: 'ip' type: 'InnerProduct' bottom: 'conv' top: 'ip'
  inner_product_param { num_output: 3 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { name: 'prob' type: 'Softmax' bottom: 'ip' top: 'prob' }
"""


def _net(tmp_path: Path, text: str, phase: int = caffe.TRAIN, name: str = "net.prototxt", **kw) -> caffe.Net:
    path = tmp_path / name
    path.write_text(text)
    return caffe.Net(str(path), phase, **kw)


@pytest.fixture
def simple(tmp_path) -> caffe.Net:
    caffe.set_random_seed(1701)
    net = _net(tmp_path, SIMPLE)
    net.blobs["label"].data[...] = np.random.default_rng(0).integers(13, size=net.blobs["label"].data.shape)
    return net


def test_structure(simple):
    assert list(simple.blobs) == ["data", "label", "conv", "ip_blob", "loss"]
    assert simple._layer_names == ["data", "conv", "ip", "loss"]
    assert simple.inputs == [] and simple.outputs == ["loss"]
    assert simple.top_names["data"] == ["data", "label"] and simple.bottom_names["loss"] == ["ip_blob", "label"]
    assert [layer.type for layer in simple.layers] == ["DummyData", "Convolution", "InnerProduct", "SoftmaxWithLoss"]
    assert list(simple.layer_dict) == simple._layer_names
    assert [b.shape for b in simple.params["conv"]] == [(11, 2, 2, 2), (11,)]
    assert np.all(simple.params["conv"][1].data == 2) and np.all(simple.params["ip"][1].data == -3)
    assert simple.blob_loss_weights["loss"] == 1.0 and simple.blob_loss_weights["conv"] == 0.0
    blob = simple.blobs["conv"]
    assert (blob.num, blob.channels, blob.height, blob.width, blob.count) == (5, 11, 8, 9, 5 * 11 * 8 * 9)
    # Layer::SetLossWeights: the loss top's diff holds its weight before any backward.
    assert simple.blobs["loss"].diff == 1.0


def test_forward_range_inner_product(simple):
    conv = simple.blobs["conv"]
    x = np.random.default_rng(1).uniform(size=conv.shape).astype(np.float32)
    conv.data[...] = x  # written before forward(start=...): that layer reads it
    out = simple.forward(start="ip", end="ip")
    assert list(out) == ["ip_blob"]
    w, b = simple.params["ip"][0].data, simple.params["ip"][1].data
    np.testing.assert_allclose(simple.blobs["ip_blob"].data, x.reshape(5, -1) @ w.T + b, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(conv.data, x)  # the range did not run the convolution


def test_backward_range_inner_product(simple):
    simple.forward()
    top = np.random.default_rng(2).uniform(size=simple.blobs["ip_blob"].shape).astype(np.float32)
    simple.blobs["ip_blob"].diff[...] = top
    out = simple.backward(start="ip", end="ip")
    assert list(out) == ["conv"]
    w = simple.params["ip"][0].data
    np.testing.assert_allclose(simple.blobs["conv"].diff.reshape(5, -1), top @ w, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(simple.params["ip"][0].diff, top.T @ simple.blobs["conv"].data.reshape(5, -1),
                               rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(simple.params["ip"][1].diff, top.sum(0), rtol=1e-4, atol=1e-4)
    assert not simple.params["conv"][0].diff.any()  # conv is outside the range


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int, stride: int) -> np.ndarray:
    n, c, h, wd = x.shape
    k = w.shape[2]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.zeros((n, w.shape[0], oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride:i * stride + k, j * stride:j * stride + k]
            out[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w) + b
    return out


def test_convolution_ranges_by_hand(tmp_path):
    net = _net(tmp_path, "force_backward: true\n" + DEPLOY, caffe.TEST)
    x = np.random.default_rng(3).normal(size=(2, 3, 6, 5)).astype(np.float32)
    out = net.forward(data=x, end="conv")
    w, b = net.params["conv"][0].data, net.params["conv"][1].data
    expected = _conv(x.astype(np.float64), w, b, pad=1, stride=2)
    np.testing.assert_allclose(out["conv"], expected, rtol=1e-4, atol=1e-5)  # `end` is before the in-place ReLU
    net.forward(start="relu", end="relu")
    np.testing.assert_allclose(net.blobs["conv"].data, np.maximum(expected, 0), rtol=1e-4, atol=1e-5)
    # Backward through the convolution alone: the bottom diff is the transposed convolution of the top diff.
    top = np.random.default_rng(4).normal(size=expected.shape).astype(np.float32)
    net.blobs["conv"].diff[...] = top
    grads = net.backward(start="conv", end="conv", diffs=["data"])
    dx = np.zeros((2, 3, 8, 7))
    for i in range(top.shape[2]):
        for j in range(top.shape[3]):
            dx[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3] += np.einsum("no,ockl->nckl", top[:, :, i, j], w)
    np.testing.assert_allclose(grads["data"], dx[:, :, 1:7, 1:6], rtol=1e-4, atol=1e-4)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    dw = sum(np.einsum("no,nckl->ockl", top[:, :, i, j], xp[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3])
             for i in range(top.shape[2]) for j in range(top.shape[3]))
    np.testing.assert_allclose(net.params["conv"][0].diff, dw, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(net.params["conv"][1].diff, top.sum((0, 2, 3)), rtol=1e-4, atol=1e-4)


def test_param_diffs_accumulate_until_cleared(simple):
    simple.forward()
    simple.backward()
    once = [b.diff.copy() for blobs in simple.params.values() for b in blobs]
    assert once[0].max() > 0
    simple.backward()
    twice = [b.diff.copy() for blobs in simple.params.values() for b in blobs]
    for a, b in zip(once, twice):
        np.testing.assert_allclose(b, 2 * a, rtol=1e-5, atol=1e-6)
    diff = simple.params["conv"][0].diff
    simple.clear_param_diffs()
    assert not diff.any()  # the same array, zeroed in place


def test_save_then_reload_identical(simple, tmp_path):
    simple.params["ip"][0].data[0, 0] = 123.5  # the saved file holds what the blobs hold now
    saved = tmp_path / "saved.caffemodel"
    simple.save(str(saved))
    again = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TRAIN, weights=str(saved))
    legacy = caffe.Net(str(tmp_path / "net.prototxt"), str(saved), caffe.TRAIN)  # pycaffe's old form
    for name, blobs in simple.params.items():
        for mine, theirs, old in zip(blobs, again.params[name], legacy.params[name]):
            np.testing.assert_array_equal(mine.data, theirs.data)
            np.testing.assert_array_equal(mine.data, old.data)
    h5 = tmp_path / "saved.h5"
    simple.save_hdf5(str(h5))
    again.params["ip"][0].data[...] = 0
    again.load_hdf5(str(h5))
    np.testing.assert_array_equal(again.params["ip"][0].data, simple.params["ip"][0].data)
    again.params["conv"][0].data[...] = 0
    again.copy_from(str(saved))
    np.testing.assert_array_equal(again.params["conv"][0].data, simple.params["conv"][0].data)


def test_share_with_shows_the_other_nets_values(simple, tmp_path):
    other = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)
    other.share_with(simple)
    simple.params["ip"][0].data[...] = 7
    assert np.all(other.params["ip"][0].data == 7)


def test_reshaped_input_reshapes_the_net_and_forward_all(tmp_path):
    net = _net(tmp_path, DEPLOY, caffe.TEST)
    x = np.random.default_rng(5).normal(size=(2, 3, 6, 5)).astype(np.float32)
    reference = net.forward(data=x)["prob"].copy()
    net.blobs["data"].reshape(1, 3, 6, 5)
    net.blobs["data"].data[...] = x[1:]
    out = net.forward()
    assert net.blobs["conv"].shape == (1, 4, 3, 3)
    np.testing.assert_allclose(out["prob"], reference[1:], rtol=1e-5, atol=1e-6)
    net.blobs["data"].reshape(2, 3, 6, 5)
    net.reshape()
    five = np.concatenate([x, x, x[:1]])
    probs = net.forward_all(data=five)["prob"]  # 5 items in batches of 2, the last padded
    np.testing.assert_allclose(probs, np.concatenate([reference, reference, reference[:1]]), rtol=1e-5, atol=1e-6)
    with pytest.raises(CaffeCompatError, match="do not match"):
        net.forward(image=x)
    with pytest.raises(CaffeCompatError, match="no layer named 'nope'"):
        net.forward(start="nope")


def test_in_place_layers_share_a_blob(tmp_path):
    net = _net(tmp_path, DEPLOY, caffe.TEST)
    x = np.random.default_rng(6).normal(size=(2, 3, 6, 5)).astype(np.float32)
    net.forward(data=x)
    assert "relu" in net._layer_names and list(net.blobs).count("conv") == 1
    assert net.blobs["conv"].data.min() >= 0  # the blob holds the ReLU's output, as Caffe's does


def test_memory_data_set_input_arrays(tmp_path):
    net = _net(tmp_path, """name: 'm'
layer { name: 'data' type: 'MemoryData' top: 'data' top: 'label'
  memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
  inner_product_param { num_output: 3 weight_filler { type: 'constant' value: 1 } } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip' bottom: 'label' top: 'loss' }
""")
    data = np.arange(16, dtype=np.float32).reshape(4, 1, 2, 2)
    labels = np.array([0, 1, 2, 0], np.float32)
    net.set_input_arrays(data, labels)
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, data[:2])
    np.testing.assert_array_equal(net.blobs["label"].data, labels[:2])
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, data[2:])
    net.forward()  # wraps around, as MemoryDataLayer's cursor does
    np.testing.assert_array_equal(net.blobs["data"].data, data[:2])
    with pytest.raises(CaffeCompatError, match="multiple of batch size"):
        net.set_input_arrays(data[:3], labels[:3])
    with pytest.raises(CaffeCompatError, match="float32"):
        net.set_input_arrays(data.astype(np.float64), labels)


def test_blob_reshape_and_legacy_dims():
    blob = caffe.Blob((2, 3))
    assert (blob.num, blob.channels, blob.height, blob.width) == (2, 3, 1, 1)
    blob.data[...] = np.arange(6).reshape(2, 3)
    blob.reshape(3, 2)  # same count: the values stay, reinterpreted
    assert blob.data.tolist() == [[0, 1], [2, 3], [4, 5]]
    blob.reshape(4)
    assert blob.shape == (4,) and not blob.data.any()


def test_layer_type_list_and_modes():
    types = caffe.layer_type_list()
    assert "Python" in types and "Convolution" in types and types == sorted(types)
    caffe.set_mode_cpu()
    caffe.set_device(0)


def _netspec_deploy() -> caffe_pb2.NetParameter:
    def conv(bottom, nout):
        return L.Convolution(bottom, param=[dict(lr_mult=1), dict(lr_mult=2)], num_output=nout, pad=2,
                             kernel_size=5, stride=1, weight_filler=dict(type="xavier"),
                             bias_filler=dict(type="constant"))

    def ip(bottom, nout):
        return L.InnerProduct(bottom, param=[dict(lr_mult=1), dict(lr_mult=2)], num_output=nout,
                              weight_filler=dict(type="xavier"), bias_filler=dict(type="constant"))

    def body(n, data):
        n.conv1 = conv(data, 16)
        n.relu1 = L.ReLU(n.conv1, in_place=True)
        n.pool1 = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
        n.conv2 = conv(n.pool1, 32)
        n.relu2 = L.ReLU(n.conv2, in_place=True)
        n.pool2 = L.Pooling(n.relu2, pool=P.Pooling.MAX, kernel_size=2, stride=2)
        n.ip1 = ip(n.pool2, 64)
        n.relu3 = L.ReLU(n.ip1, in_place=True)
        n.ip2 = ip(n.relu3, 4)
        return n.ip2

    deploy = caffe.NetSpec()
    deploy.data = L.Input(shape=dict(dim=[1, 3, 32, 32]))
    deploy.prob = L.Softmax(body(deploy, deploy.data))
    deploy_proto = deploy.to_proto()
    deploy_proto.name = "ShapesNet"

    def data_layer(phase, source, mirror):
        transform = dict(mean_file="mean.binaryproto", scale=0.0078125, **({"mirror": True} if mirror else {}))
        return L.Data(name="data", ntop=2, include=dict(phase=phase), transform_param=transform,
                      data_param=dict(source=source, batch_size=50, backend=P.Data.LMDB))

    train = caffe.NetSpec()
    train.data, train.label = data_layer(caffe.TRAIN, "train_lmdb", True)
    head = body(train, train.data)
    train.accuracy = L.Accuracy(head, train.label, include=dict(phase=caffe.TEST))
    train.loss = L.SoftmaxWithLoss(head, train.label)
    train_proto = train.to_proto()
    test_data = caffe.NetSpec()
    test_data.data, test_data.label = data_layer(caffe.TEST, "val_lmdb", False)
    train_proto.layer.insert(1, test_data.to_proto().layer[0])
    train_proto.name = "ShapesNet"
    return deploy_proto, train_proto


def test_netspec_writes_the_models_files():
    deploy, train_val = _netspec_deploy()
    for proto, path in ((deploy, "deploy.prototxt"), (train_val, "train_val.prototxt")):
        theirs = read_net_prototxt(REPO / "caffecompat" / "examples" / "shapes" / path)
        assert str(proto) == str(theirs), path


def test_netspec_names_and_to_proto():
    n = caffe.NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[2, 3]), dict(dim=[2])], ntop=2)
    n.ip = L.InnerProduct(L.ReLU(n.data), num_output=4)
    text = str(n.to_proto())
    assert 'name: "ReLU1"' in text and 'top: "ReLU1"' in text  # unnamed tops are numbered per type
    anonymous = caffe.to_proto(L.Sigmoid(L.Input(shape=dict(dim=[1]))))
    assert [layer.name for layer in anonymous.layer] == ["Input1", "Sigmoid1"]
    with pytest.raises(TypeError, match="not a Top"):
        L.ReLU("data")


def test_dropout_backward_reuses_the_forward_mask(tmp_path):
    net = _net(tmp_path, """name: 'd' force_backward: true
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 4 dim: 50 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
  inner_product_param { num_output: 40 weight_filler { type: 'gaussian' std: 1 } } }
layer { name: 'drop' type: 'Dropout' bottom: 'ip' top: 'ip' dropout_param { dropout_ratio: 0.5 } }
layer { name: 'loss' type: 'Reduction' bottom: 'ip' top: 'loss' loss_weight: 1 }
""")
    net.blobs["data"].data[...] = np.random.default_rng(0).normal(size=(4, 50))
    net.forward()
    kept = net.blobs["ip"].data != 0
    assert 0.2 < kept.mean() < 0.8
    net.backward()  # a separate pass: Dropout's backward must use the mask the forward drew
    np.testing.assert_array_equal(net.blobs["ip"].diff, np.where(kept, 2.0, 0.0))


def test_forward_backward_all_batches_and_unpads(tmp_path):
    net = _net(tmp_path, "force_backward: true\n" + DEPLOY, caffe.TEST)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(3, 3, 6, 5)).astype(np.float32)
    top = rng.normal(size=(3, 3)).astype(np.float32)
    outs, diffs = net.forward_backward_all(data=x, prob=top)
    assert outs["prob"].shape == (3, 3) and diffs["data"].shape == (3, 3, 6, 5)
    for i in (0, 2):  # each item as the first of a batch of its own
        batch = np.stack([x[i], x[i]])
        np.testing.assert_allclose(net.forward(data=batch)["prob"][0], outs["prob"][i], rtol=1e-5, atol=1e-6)
        grads = net.backward(prob=np.stack([top[i], top[i]]))
        np.testing.assert_allclose(grads["data"][0], diffs["data"][i], rtol=1e-5, atol=1e-6)
