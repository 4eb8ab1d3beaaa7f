"""pycaffe's data feeding, parameter storage and runtime semantics, each against an independent reference.

The training loops a pycaffe script writes (Input blobs written before each
`step(1)`, MemoryData with `set_input_arrays`, a Python data layer) must train
on the script's data: their losses and weights are checked against
`caffecompat train` run on the same batches through an HDF5Data layer, its
per-iteration losses recomputed from its snapshots. The rest are hand-computed
cases: storage shared between `net.layers[i].blobs` and `net.params`, top-less
nets, the global mode, threads, the Net callbacks and pycaffe's private names.
"""

from __future__ import annotations

import io
import re
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

import caffecompat as caffe
from caffecompat import glog
from caffecompat.errors import CaffeCompatError
from tests.cli_run import run_cli

BATCH, N, ITERS = 4, 12, 7  # 3 batches per pass over the data: the loops wrap around twice
SHAPE = (2, 1, 3)

NET_TAIL = """
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
  inner_product_param { num_output: 4 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip' bottom: 'label' top: 'loss' }
"""
HDF5_NET = """name: 'feed'
layer { name: 'data' type: 'HDF5Data' top: 'data' top: 'label' hdf5_data_param { source: '%s' batch_size: 4 } }
""" + NET_TAIL
INPUT_NET = """name: 'feed'
layer { name: 'data' type: 'Input' top: 'data' top: 'label'
  input_param { shape { dim: 4 dim: 2 dim: 1 dim: 3 } shape { dim: 4 } } }
""" + NET_TAIL
MEMORY_NET = """name: 'feed'
layer { name: 'data' type: 'MemoryData' top: 'data' top: 'label'
  memory_data_param { batch_size: 4 channels: 2 height: 1 width: 3 } }
""" + NET_TAIL
PYTHON_NET = """name: 'feed'
layer { name: 'data' type: 'Python' top: 'data' top: 'label'
  python_param { module: 'feed_layer' layer: 'ArrayData' param_str: '%s' } }
""" + NET_TAIL
PYTHON_LAYER = '''
import numpy as np
import caffecompat as caffe


class ArrayData(caffe.Layer):
    """Batches of 4 items of an .npz file, in order, wrapping around."""

    def setup(self, bottom, top):
        arrays = np.load(self.param_str)
        self.x, self.y, self.pos = arrays["x"], arrays["y"], 0

    def reshape(self, bottom, top):
        top[0].reshape(4, *self.x.shape[1:])
        top[1].reshape(4)

    def forward(self, bottom, top):
        top[0].data[...] = self.x[self.pos:self.pos + 4]
        top[1].data[...] = self.y[self.pos:self.pos + 4]
        self.pos = (self.pos + 4) % len(self.x)

    def backward(self, top, propagate_down, bottom):
        pass
'''
SOLVER = """net: '{net}' type: '{type}'
base_lr: 0.1 momentum: 0.9 weight_decay: 0.01 lr_policy: 'fixed'
max_iter: {iters} display: 1 snapshot: 1 snapshot_prefix: '{prefix}' random_seed: 3 solver_mode: CPU
{extra}"""


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    x = rng.normal(size=(N, *SHAPE)).astype(np.float32)
    y = rng.integers(0, 4, size=N).astype(np.float32)
    return x, y


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _solver(tmp_path: Path, name: str, net_text: str, iters: int = ITERS, extra: str = "",
            solver_type: str = "SGD") -> str:
    net = _write(tmp_path / f"{name}.prototxt", net_text)
    return _write(tmp_path / f"{name}_solver.prototxt",
                  SOLVER.format(net=net, type=solver_type, iters=iters, prefix=tmp_path / name, extra=extra))


def _init_weights(tmp_path: Path) -> str:
    net = caffe.Net(_write(tmp_path / "init.prototxt", INPUT_NET), caffe.TRAIN)
    rng = np.random.default_rng(5)
    for blobs in net.params.values():
        for blob in blobs:
            blob.data[...] = rng.normal(scale=0.5, size=blob.shape)
    path = str(tmp_path / "init.caffemodel")
    net.save(path)
    return path


def _batch(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    a = (k * BATCH) % N
    return x[a:a + BATCH], y[a:a + BATCH]


@pytest.fixture
def reference(tmp_path, data, request) -> dict:
    """`caffecompat train` on the batches through HDF5Data: each iteration's loss, from its snapshots."""
    x, y = data
    solver_type = getattr(request, "param", "SGD")
    with h5py.File(tmp_path / "train.h5", "w") as f:
        f["data"], f["label"] = x, y
    listing = _write(tmp_path / "train.txt", f"{tmp_path / 'train.h5'}\n")
    init = _init_weights(tmp_path)
    solver = _solver(tmp_path, "cli", HDF5_NET % listing, solver_type=solver_type)
    status, log = run_cli(["train", "-solver", solver, "-weights", init])
    assert status == 0, log
    scorer = caffe.Net(str(tmp_path / "init.prototxt"), caffe.TRAIN)
    losses = []
    for k in range(ITERS):
        # The loss of iteration k: the weights after k updates on batch k.
        scorer.copy_from(init if k == 0 else str(tmp_path / f"cli_iter_{k}.caffemodel"))
        bx, by = _batch(x, y, k)
        losses.append(float(scorer.forward(data=bx, label=by)["loss"]))
    final = caffe.Net(str(tmp_path / "init.prototxt"), caffe.TRAIN,
                      weights=str(tmp_path / f"cli_iter_{ITERS}.caffemodel"))
    logged = re.findall(r"Iteration \d+ \(.*\), loss = (\S+)", log)
    return {"init": init, "losses": losses, "params": {k: [b.data.copy() for b in v] for k, v in final.params.items()},
            "logged": logged}


def _check_against(reference: dict, solver: caffe.Solver, losses: list[float], log: str) -> None:
    np.testing.assert_allclose(losses, reference["losses"], rtol=1e-6)
    assert len(set(np.round(losses, 5))) > 3  # the batches differ: not a loss of constant (zero) inputs
    for name, blobs in reference["params"].items():
        for mine, theirs in zip(solver.net.params[name], blobs):
            np.testing.assert_allclose(mine.data, theirs, rtol=1e-6, atol=1e-7)
    assert re.findall(r"Iteration \d+ \(.*\), loss = (\S+)", log) == reference["logged"]


def _captured():
    stream = io.StringIO()
    glog.set_stream(stream)
    return stream


@pytest.mark.parametrize(("reference", "cls"), [("SGD", "SGDSolver"), ("Adam", "AdamSolver"),
                                                ("Nesterov", "NesterovSolver")], indirect=["reference"])
def test_input_layer_loop_trains_on_the_scripts_batches(tmp_path, data, reference, cls):
    x, y = data
    # The class decides the update rule (the file says SGD), as pycaffe's AdamSolver(...) does.
    solver = getattr(caffe, cls)(_solver(tmp_path, "input", INPUT_NET))
    solver.net.copy_from(reference["init"])
    losses = []
    stream = _captured()
    try:
        for k in range(ITERS):
            bx, by = _batch(x, y, k)
            solver.net.blobs["data"].data[...] = bx
            solver.net.blobs["label"].data[...] = by
            solver.step(1)
            losses.append(float(solver.net.blobs["loss"].data))
            # InputLayer::Forward leaves its tops alone: what the script wrote is still there after the step.
            np.testing.assert_array_equal(solver.net.blobs["data"].data, bx)
    finally:
        glog.set_stream(None)
    _check_against(reference, solver, losses, stream.getvalue())


def test_memory_data_loop_trains_on_the_arrays(tmp_path, data, reference):
    x, y = data
    solver = caffe.get_solver(_solver(tmp_path, "memory", MEMORY_NET))
    solver.net.copy_from(reference["init"])
    solver.net.set_input_arrays(x, y)
    losses = []
    stream = _captured()
    try:
        for _ in range(ITERS):
            solver.step(1)
            losses.append(float(solver.net.blobs["loss"].data))
    finally:
        glog.set_stream(None)
    _check_against(reference, solver, losses, stream.getvalue())


def test_python_data_layer_loop_trains_on_its_batches(tmp_path, data, reference, monkeypatch):
    x, y = data
    np.savez(tmp_path / "arrays.npz", x=x, y=y)
    (tmp_path / "feed_layer.py").write_text(PYTHON_LAYER)
    monkeypatch.syspath_prepend(str(tmp_path))
    solver = caffe.SGDSolver(_solver(tmp_path, "python", PYTHON_NET % (tmp_path / "arrays.npz")))
    solver.net.copy_from(reference["init"])
    losses = []
    stream = _captured()
    try:
        for _ in range(ITERS):
            solver.step(1)
            losses.append(float(solver.net.blobs["loss"].data))
    finally:
        glog.set_stream(None)
    _check_against(reference, solver, losses, stream.getvalue())


def test_memory_data_in_the_test_net(tmp_path, data):
    x, y = data
    path = _solver(tmp_path, "memtest", MEMORY_NET, iters=3,
                   extra="test_iter: 3 test_interval: 2 test_initialization: false")
    solver = caffe.get_solver(path)
    solver.net.set_input_arrays(x, y)
    solver.test_nets[0].set_input_arrays(x[::-1].copy(), y[::-1].copy())
    stream = _captured()
    try:
        solver.step(3)  # the test runs at the start of iteration 2
    finally:
        glog.set_stream(None)
    logged = re.findall(r"Test net output #0: loss = (\S+)", stream.getvalue())
    assert len(logged) == 1
    # The expected mean: the weights after 2 updates (snapshot _iter_2) on the reversed arrays, batch by batch.
    scorer = caffe.Net(_write(tmp_path / "score.prototxt", INPUT_NET), caffe.TEST,
                       weights=str(tmp_path / "memtest_iter_2.caffemodel"))
    xr, yr = x[::-1], y[::-1]
    losses = [scorer.forward(data=xr[i:i + 4], label=yr[i:i + 4])["loss"] for i in range(0, N, 4)]
    assert float(logged[0]) == pytest.approx(float(np.mean(losses)), rel=1e-5)


def test_reshaped_input_blob_reshapes_the_solver_net(tmp_path, data):
    x, y = data
    solver = caffe.SGDSolver(_solver(tmp_path, "reshape", INPUT_NET, iters=1))
    solver.net.blobs["data"].reshape(2, *SHAPE)
    solver.net.blobs["label"].reshape(2)
    solver.net.blobs["data"].data[...] = x[:2]
    solver.net.blobs["label"].data[...] = y[:2]
    w = solver.net.params["ip"][0].data.copy()
    b = solver.net.params["ip"][1].data.copy()
    solver.step(1)
    assert solver.net.blobs["ip"].shape == (2, 4)
    logits = x[:2].reshape(2, -1) @ w.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = -np.mean(np.log(p[np.arange(2), y[:2].astype(int)]))
    assert float(solver.net.blobs["loss"].data) == pytest.approx(expected, rel=1e-5)


def test_set_input_arrays_checks(tmp_path, data):
    x, y = data
    solver = caffe.SGDSolver(_solver(tmp_path, "memchk", MEMORY_NET, iters=1))
    net = solver.net
    cases = [
        ((x[:6], y[:6]), "multiple of batch size \\(4\\)"),
        ((x.astype(np.float64), y), "must be float32"),
        ((np.asfortranarray(x.reshape(N, 6)).reshape(N, 2, 1, 3, order="F"), y), "C contiguous"),
        ((x.reshape(N, 2, 3), y), "must be 4-d"),
        ((x.reshape(N, 3, 1, 2), y), "needs N x 2 x 1 x 3"),
        ((x, y[:8]), "same first dimension"),
        ((x, y.reshape(N, 1).astype(np.float32)), "labels array must be 4-d"),
        ((x[:0], y[:0]), "positive multiple"),
    ]
    for (d, lab), message in cases:
        with pytest.raises(CaffeCompatError, match=message):
            net.set_input_arrays(d, lab)
    with pytest.raises(CaffeCompatError, match="no data yet.*set_input_arrays"):
        solver.step(1)
    with pytest.raises(CaffeCompatError, match="labels array must be 4-d"):
        net._set_input_arrays(x, y)  # the C++ entry point takes N x 1 x 1 x 1 labels only
    net._set_input_arrays(x, y.reshape(N, 1, 1, 1).copy())
    solver.step(1)
    np.testing.assert_array_equal(net.blobs["data"].data, x[:4])
    other = caffe.Net(_write(tmp_path / "in.prototxt", INPUT_NET), caffe.TEST)
    with pytest.raises(CaffeCompatError, match="first layer is a MemoryData layer"):
        other.set_input_arrays(x, y)


def test_cli_train_on_memory_data_is_one_clear_line(tmp_path, capsys):
    status, log = run_cli(["train", "-solver", _solver(tmp_path, "climem", MEMORY_NET, iters=1)])
    assert status == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "layer 'data' (MemoryData): no data yet" in err[0] and "HDF5Data" in err[0]


# -- storage -------------------------------------------------------------------------------------


def test_layer_blobs_are_the_params_the_solver_updates(tmp_path):
    # BVLC test_solver.py::test_apply_update, with momentum and weight decay worked by hand:
    # w = 0, diff = 1: v = lr * (diff + decay * w) = 0.1, w = -0.1.
    solver = caffe.SGDSolver(_solver(tmp_path, "store", INPUT_NET, iters=1))
    net = solver.net
    index = list(net._layer_names).index("ip")
    assert net.layers[index].blobs[0] is net.params["ip"][0]
    weights = net.layers[index].blobs[0].data[...]  # a view, as the BVLC test takes it
    weights[...] = 0
    net.layers[index].blobs[0].diff[...] = 1
    solver.apply_update()
    np.testing.assert_allclose(weights, -0.1, rtol=1e-6)
    np.testing.assert_allclose(net.params["ip"][0].data, -0.1, rtol=1e-6)
    # save and share_with read the same storage.
    net.layers[index].blobs[1].data[...] = 7
    net.save(str(tmp_path / "saved.caffemodel"))
    loaded = caffe.Net(str(tmp_path / "store.prototxt"), caffe.TEST, weights=str(tmp_path / "saved.caffemodel"))
    np.testing.assert_array_equal(loaded.params["ip"][1].data, 7)
    np.testing.assert_allclose(loaded.params["ip"][0].data, -0.1, rtol=1e-6)
    viewer = caffe.Net(str(tmp_path / "store.prototxt"), caffe.TEST)
    viewer.share_with(net)
    net.layers[index].blobs[1].data[...] = 3
    np.testing.assert_array_equal(viewer.params["ip"][1].data, 3)


def test_clear_param_diffs_zeroes_the_solver_nets_diffs(tmp_path, data):
    x, y = data
    solver = caffe.SGDSolver(_solver(tmp_path, "diffs", INPUT_NET, iters=1))
    net = solver.net
    net.blobs["data"].data[...] = x[:4]
    net.blobs["label"].data[...] = y[:4]
    net.forward()
    net.backward()
    assert np.abs(net.params["ip"][0].diff).sum() > 0
    net.clear_param_diffs()
    assert not net.params["ip"][0].diff.any()


# -- nets of any shape -------------------------------------------------------------------------


SILENT = """name: 'silent'
layer { name: 'data' type: 'DummyData' top: 'data' top: 'data2'
  dummy_data_param { shape { dim: 3 } shape { dim: 4 } data_filler { type: 'constant' value: 2 } } }
layer { name: 'silence_data' type: 'Silence' bottom: 'data' }
layer { name: 'silence_data2' type: 'Silence' bottom: 'data2' }
"""
NO_OUTPUTS = """name: 'sink' force_backward: true
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
  inner_product_param { num_output: 2 weight_filler { type: 'constant' value: 1 } } }
layer { name: 'sink' type: 'Silence' bottom: 'ip' }
"""


def test_top_less_nets_build_and_run(tmp_path):
    # BVLC test_net_spec.py::test_zero_tops: data into Silence layers only.
    net = caffe.Net(_write(tmp_path / "silent.prototxt", SILENT), caffe.TRAIN)
    assert net.forward() == {} and net.outputs == []
    np.testing.assert_array_equal(net.blobs["data2"].data, 2)
    net.backward()
    # A net whose only top is silenced: no outputs, but its blobs hold what the layers computed.
    sink = caffe.Net(_write(tmp_path / "sink.prototxt", NO_OUTPUTS), caffe.TEST)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert sink.forward(data=x) == {}
    np.testing.assert_array_equal(sink.blobs["ip"].data, [[3, 3], [12, 12]])
    sink.blobs["ip"].diff[...] = 5
    grads = sink.backward()
    # SilenceLayer::Backward zeroes its bottoms' diffs: nothing flows back to the data.
    np.testing.assert_array_equal(grads["data"], 0)
    # Caffe's tools build it too: `caffe time` runs its (empty) forward passes.
    status, log = run_cli(["time", "-model", str(tmp_path / "silent.prototxt"), "-iterations", "2"])
    assert status == 0 and "silence_data\tforward: 0 ms." in log


# -- mode ----------------------------------------------------------------------------------------


def test_mode_is_global_for_existing_nets_and_solvers(tmp_path, data, monkeypatch):
    import onnxruntime as ort

    from caffecompat.runtime import providers

    x, y = data
    net = caffe.Net(_write(tmp_path / "mode.prototxt", INPUT_NET), caffe.TEST)
    solver = caffe.SGDSolver(_solver(tmp_path, "modes", INPUT_NET, iters=2))
    before = net.forward(data=x[:4], label=y[:4])["loss"]
    assert net._engine.providers == ["CPUExecutionProvider"]
    fake = [("CPUExecutionProvider", {})]  # stands for the CUDA list: another provider list than the CPU's
    asked = []
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(providers, "resolve", lambda gpu, *a, **k: asked.append(gpu) or fake)
    monkeypatch.setattr(caffe.pycaffe, "_PROVIDERS", {})  # the fake list must not outlive the test
    caffe.set_device(1)
    caffe.set_mode_gpu()
    try:
        assert net.forward(data=x[:4], label=y[:4])["loss"] == before
        assert net._engine.providers == fake and asked[-1] == 1
        solver.step(1)
        assert solver.net._engine.providers == fake
    finally:
        caffe.set_mode_cpu()
        caffe.set_device(0)
    net.forward(data=x[:4], label=y[:4])
    solver.step(1)
    assert net._engine.providers == ["CPUExecutionProvider"] == solver.net._engine.providers


def test_set_mode_gpu_without_cuda_leaves_existing_nets_on_the_cpu(tmp_path, data):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the no-CUDA error cannot be seen here")
    x, y = data
    net = caffe.Net(_write(tmp_path / "nocuda.prototxt", INPUT_NET), caffe.TEST)
    with pytest.raises(CaffeCompatError, match="no CUDA execution provider"):
        caffe.set_mode_gpu()
    assert np.isfinite(net.forward(data=x[:4], label=y[:4])["loss"])
    assert net._engine.providers == ["CPUExecutionProvider"]


# -- threads -------------------------------------------------------------------------------------


DENSE = """name: 'dense'
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 3 dim: 5 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip' inner_product_param { num_output: 4 } }
layer { name: 'relu' type: 'ReLU' bottom: 'ip' top: 'ip' }
"""


def test_forward_from_threads_returns_each_calls_own_outputs(tmp_path):
    net = caffe.Net(_write(tmp_path / "dense.prototxt", DENSE), caffe.TEST)
    rng = np.random.default_rng(2)
    net.params["ip"][0].data[...] = rng.normal(size=(4, 5))
    net.params["ip"][1].data[...] = rng.normal(size=4)
    w, b = net.params["ip"][0].data.copy(), net.params["ip"][1].data.copy()
    inputs = rng.normal(size=(4, 100, 3, 5)).astype(np.float32)
    wrong: list[tuple[int, int]] = []

    def work(t: int) -> None:
        for i in range(100):
            out = net.forward(data=inputs[t, i])["ip"]
            if not np.allclose(out, np.maximum(inputs[t, i] @ w.T + b, 0), atol=1e-5):
                wrong.append((t, i))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert wrong == []


def test_solver_steps_from_threads_are_serialized(tmp_path, data):
    x, y = data
    solver = caffe.get_solver(_solver(tmp_path, "threads", MEMORY_NET, iters=40))
    solver.net.set_input_arrays(x, y)
    threads = [threading.Thread(target=solver.step, args=(5,)) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert solver.iter == 20


# -- callbacks -----------------------------------------------------------------------------------


BN_NET = """name: 'hooks' force_backward: true
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 4 dim: 3 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
  inner_product_param { num_output: 5 weight_filler { type: 'gaussian' std: 1 } bias_filler { type: 'gaussian' } } }
layer { name: 'bn' type: 'BatchNorm' bottom: 'ip' top: 'ip' }
layer { name: 'scale' type: 'Scale' bottom: 'ip' top: 'ip' scale_param { bias_term: true
  filler { type: 'gaussian' } bias_filler { type: 'gaussian' } } }
layer { name: 'relu' type: 'ReLU' bottom: 'ip' top: 'ip' }
layer { name: 'out' type: 'InnerProduct' bottom: 'ip' top: 'out'
  inner_product_param { num_output: 2 weight_filler { type: 'gaussian' std: 1 } } }
"""


def test_hooks_see_each_layer_in_order(tmp_path):
    path = _write(tmp_path / "hooks.prototxt", BN_NET)
    caffe.set_random_seed(4)
    plain = caffe.Net(path, caffe.TRAIN)
    caffe.set_random_seed(4)
    hooked = caffe.Net(path, caffe.TRAIN)
    x = np.random.default_rng(8).normal(size=(4, 3)).astype(np.float32)
    calls: list[tuple[str, int]] = []
    seen: dict[int, np.ndarray] = {}
    for when in ("before_forward", "after_forward", "before_backward", "after_backward"):
        getattr(hooked, when)(lambda i, when=when: calls.append((when, i)))
    hooked.after_forward(lambda i: seen.__setitem__(i, hooked.blobs["ip"].data.copy()))
    out = hooked.forward(data=x)["out"]
    w, b = hooked.params["ip"][0].data, hooked.params["ip"][1].data
    # after layer 1 (InnerProduct) the in-place blob holds x W^T + b; after 2 (BatchNorm) the batch-normalized
    # values (mean 0, Caffe's eps 1e-5); after 4 (ReLU) no negatives.
    ip = x @ w.T + b
    np.testing.assert_allclose(seen[1], ip, rtol=1e-5, atol=1e-6)
    normed = (ip - ip.mean(0)) / np.sqrt(ip.var(0) + 1e-5)
    np.testing.assert_allclose(seen[2], normed, rtol=1e-4, atol=1e-5)
    assert seen[4].min() >= 0 and seen[3].min() < 0
    hooked.blobs["out"].diff[...] = 1
    grads = hooked.backward()["data"]
    n = len(hooked.layers)
    assert calls == ([(k, i) for i in range(n) for k in ("before_forward", "after_forward")]
                     + [(k, i) for i in reversed(range(n)) for k in ("before_backward", "after_backward")])
    # Layer by layer gives the numbers of the fused run (in-place BatchNorm/Scale included).
    np.testing.assert_allclose(out, plain.forward(data=x)["out"], rtol=1e-5, atol=1e-6)
    plain.blobs["out"].diff[...] = 1
    np.testing.assert_allclose(grads, plain.backward()["data"], rtol=1e-4, atol=1e-6)
    for name in ("ip", "scale", "out"):
        for mine, theirs in zip(hooked.params[name], plain.params[name]):
            np.testing.assert_allclose(mine.diff, theirs.diff, rtol=1e-4, atol=1e-6)
    with pytest.raises(CaffeCompatError, match="callable"):
        hooked.before_forward(3)


def test_solver_step_calls_the_train_nets_hooks(tmp_path, data):
    x, y = data
    solver = caffe.SGDSolver(_solver(tmp_path, "shook", INPUT_NET, iters=1))
    calls: list[int] = []
    solver.net.before_forward(calls.append)
    solver.net.blobs["data"].data[...] = x[:4]
    solver.net.blobs["label"].data[...] = y[:4]
    solver.step(1)
    assert calls == [0, 1, 2]


# -- private names -------------------------------------------------------------------------------


def test_private_names(tmp_path):
    net = caffe.Net(_write(tmp_path / "priv.prototxt", INPUT_NET), caffe.TRAIN)
    assert net._blob_names == ["data", "label", "ip", "loss"]
    assert net._blob_loss_weights == [0.0, 0.0, 0.0, 1.0]
    assert net._bottom_ids(2) == [2, 1] and net._top_ids(2) == [3] and net._top_ids(0) == [0, 1]
    assert net._inputs == [0, 1] and net._outputs == [3]
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, *SHAPE)).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.blobs["label"].data[...] = [0, 1, 2, 3]
    assert net._forward(0, 1) == 0.0  # no loss layer in 0..1
    w = net.params["ip"][0].data
    np.testing.assert_allclose(net.blobs["ip"].data, x.reshape(4, -1) @ w.T, rtol=1e-5, atol=1e-6)
    loss = net._forward(2, 2)
    assert loss == pytest.approx(float(net.blobs["loss"].data))
    net._backward(2, 1)
    # SoftmaxWithLoss' gradient: (softmax - onehot) / N, through InnerProduct: W^T.
    logits = net.blobs["ip"].data
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(4), [0, 1, 2, 3]] -= 1
    np.testing.assert_allclose(net.params["ip"][0].diff, (p / 4).T @ x.reshape(4, -1), rtol=1e-4, atol=1e-6)
    with pytest.raises(CaffeCompatError, match="layer indices run from 0 to 2"):
        net._forward(0, 3)
    with pytest.raises(CaffeCompatError, match="must not be after end"):
        net._forward(2, 1)


def test_layer_setup_and_reshape_of_caffe_layers(tmp_path):
    net = caffe.Net(_write(tmp_path / "shape.prototxt", INPUT_NET), caffe.TRAIN)
    ip = net.layers[1]
    bottom, top = caffe.Blob((7, 2, 1, 3)), caffe.Blob((1,))
    ip.setup([bottom], [top])
    ip.reshape([bottom], [top])
    assert top.shape == (7, 4)  # InnerProduct: N x num_output
    with pytest.raises(CaffeCompatError, match="give 1 bottom and 1 top blobs"):
        ip.reshape([bottom, bottom], [top])
    shapes = r"need parameters of shape \[\[4, 5\], \[4\]\], the layer has \[\[4, 6\], \[4\]\]"
    with pytest.raises(CaffeCompatError, match=shapes):
        ip.reshape([caffe.Blob((7, 5))], [top])  # 5 inputs for weights made for 6


def test_solver_closes_its_data_with_it_and_its_nets_keep_it(tmp_path, data):
    import gc

    x, y = data
    path = _solver(tmp_path, "life", MEMORY_NET, iters=2)
    net = caffe.get_solver(path).net  # the solver object itself is dropped at once
    gc.collect()
    net.set_input_arrays(x, y)
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, x[:4])
    source = net._engine.feeder.source_of(net._spec.layers[0])
    del net
    gc.collect()
    assert source.data is None  # MemorySource.close ran: the solver's sources closed with it


def test_two_data_layers_of_one_name_each_feed_their_own_tops(tmp_path):
    # Caffe allows two layers one name (LRCN's train net has an ImageData and an HDF5Data both named "data");
    # each data layer's source is its own, told apart by its tops.
    path = tmp_path / "net.prototxt"
    path.write_text(
        'layer { name: "data" type: "DummyData" top: "a" dummy_data_param { shape { dim: 2 dim: 3 } '
        'data_filler { type: "constant" value: 1 } } }\n'
        'layer { name: "data" type: "DummyData" top: "b" dummy_data_param { shape { dim: 2 dim: 4 } '
        'data_filler { type: "constant" value: 2 } } }\n'
        'layer { name: "sum" type: "Concat" bottom: "a" bottom: "b" top: "ab" concat_param { axis: 1 } }\n')
    net = caffe.Net(str(path), caffe.TEST)
    out = net.forward()["ab"]
    assert out.shape == (2, 7)
    assert np.array_equal(out, np.array([[1, 1, 1, 2, 2, 2, 2]] * 2, np.float32))
