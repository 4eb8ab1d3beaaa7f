"""pycaffe's API (`import caffecompat as caffe`) against the original Caffe, through the API only.

Every golden forward net's blobs after `Net(...).forward()`; the grad/ goldens'
loss, parameter diffs and blob diffs after `forward()` then `backward()`; the
grad_zoo nets' diffs, also when forward and backward run in two layer ranges;
and the sgd_step run's losses and test outputs with `SGDSolver.step`.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from google.protobuf import text_format

import caffecompat as caffe
from caffecompat import glog
from caffecompat.formats.blob import blob_to_array, read_binaryproto, read_blob_vector
from caffecompat.formats.caffemodel import read_caffemodel
from caffecompat.proto import caffe_pb2
from tests.golden_forward import TOLERANCE, relative_error
from tests.golden_train import parse_log
from tests.test_forward_golden import NETS


def _blob_vector(path) -> list[caffe_pb2.BlobProto]:
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(path.read_bytes())
    return list(vec.blobs)


@pytest.mark.parametrize("name", NETS)
def test_forward_goldens_through_net(golden, name):
    folder = golden / "forward" / name
    weights = next(p for p in (folder / "weights.caffemodel", folder / "weights_v1.caffemodel") if p.exists())
    net = caffe.Net(str(folder / "net.prototxt"), caffe.TEST, weights=str(weights))
    (data,) = net.inputs
    net.blobs[data].data[...] = read_binaryproto(folder / "input.binaryproto").reshape(net.blobs[data].shape)
    net.forward()
    expected = np.load(folder / "blobs.npz")
    names = (folder / "blob_names.txt").read_text().split()
    assert list(net.blobs) == names  # Caffe's blob order, split blobs included
    bad = {b: relative_error(net.blobs[b].data, expected[b]) for b in names}
    assert not {b: e for b, e in bad.items() if e > TOLERANCE}


def _rel(ours: np.ndarray, caffe_: np.ndarray) -> float:
    return float(np.abs(ours - caffe_).max() / max(1.0, float(np.abs(caffe_).max()))) if caffe_.size else 0.0


@pytest.mark.parametrize("case", ["grad", "grad_bn"])
def test_first_iteration_diffs_through_net(golden, monkeypatch, case):
    monkeypatch.chdir(golden)
    net_file = "train/net.prototxt" if case == "grad" else "train/net_bn.prototxt"
    weights = "train/init.caffemodel" if case == "grad" else "train/init_bn.caffemodel"
    net = caffe.Net(net_file, caffe.TRAIN, weights=weights)
    loss = net.forward()["loss"]
    net.backward()
    folder = golden / "train" / case
    assert float(loss) == pytest.approx(float((folder / "loss.txt").read_text()), rel=1e-5)
    caffe_params = read_caffemodel(folder / "params_with_diff.caffemodel").layer
    largest = max(float(np.abs(blob_to_array(b, diff=True)).max()) for lp in caffe_params for b in lp.blobs)
    checked = 0
    for layer in caffe_params:
        for i, blob in enumerate(layer.blobs):
            theirs = blob_to_array(blob, diff=True)
            ours = net.params[layer.name][i].diff.reshape(theirs.shape)
            # As tests/test_gradients_golden.py: a gradient that is zero in exact arithmetic (a conv bias
            # feeding BatchNorm) holds rounding noise in Caffe's file; it is measured against the largest.
            own = float(np.abs(theirs).max())
            err = float(np.abs(ours - theirs).max()) / (own if own >= 1e-3 * largest else largest)
            assert err <= 1e-5, f"{layer.name} blob {i} diff: {err}"
            checked += 1
    assert checked >= 8
    names = (folder / "blob_names.txt").read_text().split()
    for name, blob in zip(names, _blob_vector(folder / "blob_diffs.binaryproto")):
        err = _rel(net.blobs[name].diff.reshape(-1), blob_to_array(blob, diff=True).reshape(-1))
        assert err <= 1e-5, f"blob {name} diff: {err}"


ZOO = ["conv_pool", "activations", "shape_norm", "losses", "embed"]


def _zoo_net(golden, name: str) -> caffe.Net:
    folder = f"train/grad_zoo/{name}/"
    net = caffe.Net(folder + "net.prototxt", caffe.TRAIN, weights=folder + "weights.caffemodel")
    inputs = (golden / folder / "input_names.txt").read_text().split()
    for blob, array in zip(inputs, read_blob_vector(golden / folder / "inputs.binaryproto")):
        net.blobs[blob].data[...] = array.reshape(net.blobs[blob].shape)
    return net


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("split", [False, True], ids=["whole", "two_ranges"])
def test_grad_zoo_diffs_through_net(golden, monkeypatch, name, split):
    monkeypatch.chdir(golden)
    net = _zoo_net(golden, name)
    layers = list(net._layer_names)
    if split:
        # Net::ForwardFromTo / BackwardFromTo over two ranges give what one whole pass gives.
        mid = len(layers) // 2
        net.forward(end=layers[mid])
        net.forward(start=layers[mid + 1])
        net.backward(start=layers[-1], end=layers[mid + 1])
        net.backward(start=layers[mid])
    else:
        net.forward()
        net.backward()
    folder = golden / "train" / "grad_zoo" / name
    names = (folder / "blob_names.txt").read_text().split()
    for blob_name, data, diff in zip(names, _blob_vector(folder / "blobs.binaryproto"),
                                     _blob_vector(folder / "blob_diffs.binaryproto")):
        blob = net.blobs[blob_name]
        assert _rel(blob.data.reshape(-1), blob_to_array(data).reshape(-1)) <= 1e-5, f"{blob_name} data"
        assert _rel(blob.diff.reshape(-1), blob_to_array(diff, diff=True).reshape(-1)) <= 1e-5, f"{blob_name} diff"
    for layer in read_caffemodel(folder / "params_with_diff.caffemodel").layer:
        for i, blob in enumerate(layer.blobs):
            ours = net.params[layer.name][i]
            assert _rel(ours.diff.reshape(-1), blob_to_array(blob, diff=True).reshape(-1)) <= 1e-5, layer.name
            assert _rel(ours.data.reshape(-1), blob_to_array(blob).reshape(-1)) <= 1e-5, layer.name


def test_sgd_step_with_sgdsolver(golden, tmp_path, monkeypatch):
    param = caffe_pb2.SolverParameter()
    text_format.Parse((golden / "train" / "solver_sgd_step.prototxt").read_text(), param)
    param.snapshot_prefix = str(tmp_path / "sgd_step")
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(text_format.MessageToString(param))
    monkeypatch.chdir(golden)
    stream = io.StringIO()
    glog.set_stream(stream)
    try:
        solver = caffe.SGDSolver(str(solver_file))
        # What `caffe train -weights` does: copy the weights into the training net and the test nets.
        solver.net.copy_from("train/init.caffemodel")
        for net in solver.test_nets:
            net.copy_from("train/init.caffemodel")
        calls = []
        solver.add_callback(lambda: calls.append("start"), lambda: calls.append("ready"))
        solver.step(24)
    finally:
        glog.set_stream(None)
    log = parse_log(stream.getvalue())
    expected = json.loads((golden / "train" / "logs" / "sgd_step.json").read_text())
    for row in expected["train"]:
        if row["iter"] < 24:
            assert log.train[row["iter"]]["loss"] == pytest.approx(row["loss"], rel=1e-3), row["iter"]
    for row in expected["test"]:
        if row["iter"] < 24:
            for out, value in row["outputs"].items():
                assert log.test[row["iter"]][out] == pytest.approx(value, rel=1e-3, abs=1e-3)
    assert solver.iter == 24
    assert (tmp_path / "sgd_step_iter_24.caffemodel").is_file()
    # solver.net shows the live parameters: the final snapshot holds exactly them.
    snap = caffe.Net("train/net.prototxt", caffe.TEST, weights=str(tmp_path / "sgd_step_iter_24.caffemodel"))
    np.testing.assert_array_equal(snap.params["conv1"][0].data, solver.net.params["conv1"][0].data)
    assert solver.net.blobs["loss"].data.shape == ()
    assert calls == ["start", "ready"] * 24
    # Restoring the iteration-12 snapshot gives its iteration and its weights.
    again = caffe.get_solver(str(solver_file))
    again.restore(str(tmp_path / "sgd_step_iter_12.solverstate"))
    assert again.iter == 12
    half = caffe.Net("train/net.prototxt", caffe.TEST, weights=str(tmp_path / "sgd_step_iter_12.caffemodel"))
    np.testing.assert_array_equal(again.net.params["ip2"][0].data, half.params["ip2"][0].data)
