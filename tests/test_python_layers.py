"""Python layers (`type: "Python"`) in Net, in the solvers and in `caffecompat train/test/time`.

pycaffe's own test_python_layer.py cases (a x10 layer three times, exceptions,
a layer with its own parameter blob, the phase), a Python Euclidean loss written
as pycaffe users write it checked against the built-in EuclideanLoss (diffs and
a training run), a Python data layer feeding training, and one-line errors for
a missing or failing module.
"""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

import caffecompat as caffe
from caffecompat.cli import main

LAYERS = '''
import json
import numpy as np
import caffecompat as caffe


class SimpleLayer(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 10 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 10 * top[0].diff


class ExceptionLayer(caffe.Layer):
    def setup(self, bottom, top):
        raise RuntimeError("setup went wrong")


class ParameterLayer(caffe.Layer):
    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[0] = 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data + self.blobs[0].data[0]

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] = 1


class PhaseLayer(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape()

    def forward(self, bottom, top):
        top[0].data[()] = self.phase


class EuclideanLossLayer(caffe.Layer):
    """Caffe's examples/pycaffe/layers/pyloss.py, as users write it."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num


class RegressionData(caffe.Layer):
    """A data layer: x ~ N(0, 1) and y = x W, a new batch every forward."""

    def setup(self, bottom, top):
        p = json.loads(self.param_str)
        self.batch = p["batch"]
        self.rng = np.random.default_rng(p["seed"])
        self.w = np.array([[1, -2], [0.5, 1], [-1, 0], [2, 0.25]], np.float32)
        self.last = None
        top[0].reshape(self.batch, 4)
        top[1].reshape(self.batch, 2)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        self.last = self.rng.normal(size=(self.batch, 4)).astype(np.float32)
        top[0].data[...] = self.last
        top[1].data[...] = self.last @ self.w

    def backward(self, top, propagate_down, bottom):
        pass
'''


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder holding the layers module (`pylayers`), made the working directory, as Caffe users run."""
    (tmp_path / "pylayers.py").write_text(LAYERS)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in ("pylayers", "failing_module"):
        sys.modules.pop(name, None)


def _write(folder, name: str, text: str) -> str:
    (folder / name).write_text(textwrap.dedent(text))
    return str(folder / name)


def _python(name: str, layer: str, bottoms: list[str], tops: list[str], extra: str = "") -> str:
    b = " ".join(f"bottom: '{x}'" for x in bottoms)
    t = " ".join(f"top: '{x}'" for x in tops)
    return (f"layer {{ type: 'Python' name: '{name}' {b} {t} {extra} "
            f"python_param {{ module: 'pylayers' layer: '{layer}' }} }}\n")


def _x10_net(folder) -> caffe.Net:
    text = ("name: 'pythonnet' force_backward: true\ninput: 'data' input_shape { dim: 10 dim: 9 dim: 8 }\n"
            + _python("one", "SimpleLayer", ["data"], ["one"]) + _python("two", "SimpleLayer", ["one"], ["two"])
            + _python("three", "SimpleLayer", ["two"], ["three"]))
    return caffe.Net(_write(folder, "x10.prototxt", text), caffe.TRAIN)


def test_forward_backward_and_reshape(workdir):
    net = _x10_net(workdir)
    net.blobs["data"].data[...] = 8
    net.forward()
    assert np.all(net.blobs["three"].data == 8000)
    net.blobs["three"].diff[...] = 7
    net.backward()
    assert np.all(net.blobs["data"].diff == 7000)
    net.blobs["data"].reshape(4, 4, 4, 4)
    net.forward()
    assert all(blob.data.shape == (4, 4, 4, 4) for blob in net.blobs.values())


def test_partial_ranges_with_python_layers_between(workdir):
    net = _x10_net(workdir)
    net.blobs["one"].data[...] = 2
    net.forward(start="two")
    assert np.all(net.blobs["three"].data == 200)
    net.blobs["two"].diff[...] = 1
    net.backward(start="two", end="two")
    assert np.all(net.blobs["one"].diff == 10)


def test_setup_exception_is_one_line_naming_layer_and_module(workdir):
    text = ("name: 'pythonnet'\ninput: 'data' input_shape { dim: 2 }\n"
            + _python("layer", "ExceptionLayer", ["data"], ["top"]))
    with pytest.raises(RuntimeError) as info:  # pycaffe raised RuntimeError too
        caffe.Net(_write(workdir, "exc.prototxt", text), caffe.TEST)
    message = str(info.value)
    assert "\n" not in message
    assert "layer 'layer'" in message and "module pylayers" in message and "setup went wrong" in message


def test_parameter_blobs_save_load_share(workdir):
    text = ("name: 'pythonnet' force_backward: true\ninput: 'data' input_shape { dim: 10 dim: 9 dim: 8 }\n"
            + _python("layer", "ParameterLayer", ["data"], ["top"]))
    path = _write(workdir, "param.prototxt", text)
    net = caffe.Net(path, caffe.TRAIN)
    net.forward()
    net.backward()
    layer = net.layers[list(net._layer_names).index("layer")]
    assert layer.blobs[0].data[0] == 0 and layer.blobs[0].diff[0] == 1
    assert net.params["layer"][0] is layer.blobs[0]
    layer.blobs[0].data[0] += layer.blobs[0].diff[0]
    net.save(str(workdir / "p.caffemodel"))
    layer.blobs[0].data[0] = -1
    net.copy_from(str(workdir / "p.caffemodel"))
    assert layer.blobs[0].data[0] == 1
    net.blobs["data"].data[...] = 3
    assert np.all(net.forward()["top"] == 4)  # forward reads the parameter the net holds
    other = caffe.Net(path, caffe.TRAIN)
    other.share_with(net)
    assert other.layers[1].blobs[0].data[0] == 1


def test_phase(workdir):
    text = "name: 'pythonnet'\n" + _python("layer", "PhaseLayer", [], ["phase"])
    path = _write(workdir, "phase.prototxt", text)
    for phase in (caffe.TRAIN, caffe.TEST):
        assert caffe.Net(path, phase).forward()["phase"] == phase


def _regression_net(folder, python_loss: bool, data: str = "input") -> str:
    if data == "input":
        head = ("layer { name: 'data' type: 'Input' top: 'data' top: 'target' "
                "input_param { shape { dim: 8 dim: 4 } shape { dim: 8 dim: 2 } } }\n")
    else:
        head = ("layer { type: 'Python' name: 'data' top: 'data' top: 'target' python_param { module: 'pylayers' "
                "layer: 'RegressionData' param_str: '{\"batch\": 8, \"seed\": 3}' } }\n")
    builtin = "layer { name: 'loss' type: 'EuclideanLoss' bottom: 'ip' bottom: 'target' top: 'loss' }\n"
    loss = (_python("loss", "EuclideanLossLayer", ["ip", "target"], ["loss"], "loss_weight: 1")
            if python_loss else builtin)
    text = ("name: 'regression'\n" + head
            + "layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip' inner_product_param { num_output: 2 "
              "weight_filler { type: 'gaussian' std: 0.3 } bias_filler { type: 'constant' value: 0.1 } } }\n" + loss)
    return _write(folder, f"reg_{python_loss}_{data}.prototxt", text)


def test_python_euclidean_loss_matches_the_builtin(workdir):
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=(8, 2)).astype(np.float32)
    nets = []
    for python_loss in (True, False):
        caffe.set_random_seed(7)
        net = caffe.Net(_regression_net(workdir, python_loss), caffe.TRAIN)
        net.blobs["data"].data[...] = x
        net.blobs["target"].data[...] = y
        net.forward()
        net.backward()
        nets.append(net)
    py, builtin = nets
    np.testing.assert_array_equal(py.params["ip"][0].data, builtin.params["ip"][0].data)
    assert float(py.blobs["loss"].data.sum()) == pytest.approx(float(builtin.blobs["loss"].data), rel=1e-6)
    for blob in ("ip", "target"):
        np.testing.assert_allclose(py.blobs[blob].diff, builtin.blobs[blob].diff, rtol=1e-6, atol=1e-7)
    for i in range(2):
        np.testing.assert_allclose(py.params["ip"][i].diff, builtin.params["ip"][i].diff, rtol=1e-5, atol=1e-6)


def _solver(folder, net: str, name: str, max_iter: int = 30) -> str:
    return _write(folder, f"solver_{name}.prototxt", f"""\
        net: "{net}"
        base_lr: 0.05
        momentum: 0.9
        lr_policy: "fixed"
        max_iter: {max_iter}
        display: 5
        random_seed: 5
        snapshot_prefix: "{folder / name}"
        """)


def test_python_loss_and_data_layers_train_as_the_builtin(workdir):
    losses = {}
    for python_loss in (True, False):
        solver = caffe.SGDSolver(_solver(workdir, _regression_net(workdir, python_loss, data="python"),
                                         f"s{python_loss}"))
        steps = []
        for _ in range(25):
            solver.step(1)
            steps.append(float(solver.net.blobs["loss"].data.sum()))
        losses[python_loss] = steps
        # The data layer fed the net: the blob holds the layer's last batch.
        data_layer = solver.net.layers[0]
        np.testing.assert_array_equal(solver.net.blobs["data"].data, data_layer.last)
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)
    assert losses[True][-1] < 0.2 * losses[True][0]


def test_cli_train_test_time_with_python_layers(workdir, capsys):
    net = _regression_net(workdir, True, data="python")
    solver = _solver(workdir, net, "cli", max_iter=20)
    assert main(["train", "-solver", solver]) == 0
    weights = str(workdir / "cli_iter_20.caffemodel")
    assert main(["test", "-model", net, "-weights", weights, "-iterations", "2"]) == 0
    assert main(["time", "-model", net, "-iterations", "2"]) == 0
    err = capsys.readouterr().err
    assert "Iteration 20, loss = " in err and "Loss: " in err and "loss\tbackward:" in err


def test_missing_or_failing_module_is_one_line(workdir, capsys):
    text = ("name: 'bad'\ninput: 'data' input_shape { dim: 2 }\n"
            "layer { type: 'Python' name: 'L1' bottom: 'data' top: 't' "
            "python_param { module: 'no_such_module' layer: 'X' } }\n")
    assert main(["time", "-model", _write(workdir, "missing.prototxt", text), "-iterations", "1"]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "layer 'L1'" in line and "no_such_module" in line and "cannot import" in line
    (workdir / "failing_module.py").write_text("x = 1\nraise ValueError('broken at import')\n")
    text = text.replace("no_such_module", "failing_module")
    assert main(["time", "-model", _write(workdir, "failing.prototxt", text), "-iterations", "1"]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "layer 'L1'" in line and "failing_module" in line and "ValueError: broken at import" in line
    assert "failing_module.py:2" in line
    assert main(["convert", _write(workdir, "conv.prototxt", text), "x.caffemodel", "x.onnx"]) == 1
    assert "not supported: layer L1 of type Python" in capsys.readouterr().err
