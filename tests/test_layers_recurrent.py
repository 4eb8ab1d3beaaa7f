"""LSTM, RNN and LSTMUnit (Caffe's recurrent_layer.cpp, lstm_layer.cpp, rnn_layer.cpp, lstm_unit_layer.cpp).

Forward against step-by-step numpy recurrences written here (float64) with two
sequences of unequal length per batch (cont markers), a static input and exposed
hidden states, and against OpenCV's Caffe importer; Backward by central differences.
"""

from __future__ import annotations

import numpy as np
import pytest

from caffecompat.net.weights import init_params
from caffecompat.proto import caffe_pb2
from tests.gradients import check_layer_gradients, net_backward
from tests.layer_nets import make_net, run

T, N, H = 5, 3, 4
# Stream 0: sequences of 3 then 2 steps; stream 1: one sequence of 5; stream 2: 1 then 4 steps.
CONT = np.array([[0, 0, 0], [1, 1, 0], [1, 1, 1], [0, 1, 1], [1, 1, 1]], np.float32)
FILLERS = ('weight_filler { type: "uniform" min: -0.5 max: 0.5 } '
           'bias_filler { type: "uniform" min: -0.5 max: 0.5 }')


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def np_lstm(x, cont, w_xc, b_c, w_hc, xs=None, w_s=None, h0=None, c0=None):
    """Caffe's LSTM, one step at a time: returns (h for every step, h_T, c_T)."""
    t_, n = cont.shape
    hid = w_hc.shape[1]
    h = np.zeros((n, hid)) if h0 is None else h0[0].astype(np.float64)
    c = np.zeros((n, hid)) if c0 is None else c0[0].astype(np.float64)
    out = []
    for t in range(t_):
        m = cont[t][:, None]
        z = x[t].reshape(n, -1) @ w_xc.T + b_c + (h * m) @ w_hc.T
        if xs is not None:
            z = z + xs.reshape(n, -1) @ w_s.T
        i, f, o, g = (z[:, k * hid:(k + 1) * hid] for k in range(4))
        c = sigmoid(f) * m * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        out.append(h)
    return np.stack(out), h[None], c[None]


def np_rnn(x, cont, w_xh, b_h, w_hh, w_ho, b_o, xs=None, w_s=None, h0=None):
    """Caffe's RNN, one step at a time: returns (o for every step, h_T)."""
    t_, n = cont.shape
    hid = w_hh.shape[0]
    h = np.zeros((n, hid)) if h0 is None else h0[0].astype(np.float64)
    out = []
    for t in range(t_):
        z = x[t].reshape(n, -1) @ w_xh.T + b_h + (h * cont[t][:, None]) @ w_hh.T
        if xs is not None:
            z = z + xs.reshape(n, -1) @ w_s.T
        h = np.tanh(z)
        out.append(np.tanh(h @ w_ho.T + b_o))
    return np.stack(out), h[None]


def recurrent_net(kind: str, static: bool, expose: bool, x_shape=(T, N, 2, 3), num_output: int = H):
    """A one-layer net of `kind` (LSTM/RNN) with its inputs, and random parameters and feeds."""
    states = ["h", "c"] if kind == "LSTM" else ["h"]
    bottoms = ["x", "cont"] + (["xs"] if static else []) + ([f"{s}0" for s in states] if expose else [])
    tops = ["y"] + ([f"{s}T" for s in states] if expose else [])
    text = (f'layer {{ name: "rec" type: "{kind}" '
            + " ".join(f'bottom: "{b}"' for b in bottoms) + " " + " ".join(f'top: "{t}"' for t in tops)
            + f' recurrent_param {{ num_output: {num_output} expose_hidden: {str(expose).lower()} {FILLERS} }} }}')
    shapes = {"x": x_shape, "cont": x_shape[:2], "xs": (x_shape[1], 2, 2),
              **{f"{s}0": (1, x_shape[1], num_output) for s in states}}
    inputs = {b: shapes[b] for b in bottoms}
    spec = make_net(text, inputs)
    params = init_params(spec, np.random.default_rng(0))
    rng = np.random.default_rng(7)
    feeds = {b: rng.normal(size=s).astype(np.float32) for b, s in inputs.items()}
    feeds["cont"] = CONT if x_shape[:2] == (T, N) else np.ones(x_shape[:2], np.float32)
    return spec, params, feeds, tops


def blobs_of(spec, params):
    (node,) = [n for n in spec.layers if n.name == "rec"]
    return [params[p].astype(np.float64) for p in node.param_names]


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("expose", [False, True])
def test_lstm_forward_matches_stepwise_numpy(static: bool, expose: bool) -> None:
    spec, params, feeds, tops = recurrent_net("LSTM", static, expose)
    blobs = blobs_of(spec, params)
    # Caffe's blob order: W_xc (4H x D), b_c (4H), [W_xc_static (4H x S)], W_hc (4H x H).
    assert [b.shape for b in blobs] == [(4 * H, 6), (4 * H,)] + ([(4 * H, 4)] if static else []) + [(4 * H, H)]
    w_s = blobs[2] if static else None
    h, h_t, c_t = np_lstm(feeds["x"], CONT, blobs[0], blobs[1], blobs[-1], feeds.get("xs"), w_s,
                          feeds.get("h0"), feeds.get("c0"))
    out = run(spec, params, feeds, None)
    np.testing.assert_allclose(out["y"], h, atol=1e-5)
    if expose:
        np.testing.assert_allclose(out["hT"], h_t, atol=1e-5)
        np.testing.assert_allclose(out["cT"], c_t, atol=1e-5)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("expose", [False, True])
def test_rnn_forward_matches_stepwise_numpy(static: bool, expose: bool) -> None:
    spec, params, feeds, tops = recurrent_net("RNN", static, expose)
    blobs = blobs_of(spec, params)
    # Caffe's blob order: W_xh, b_h, [W_xh_static], W_hh, W_ho, b_o.
    assert [b.shape for b in blobs] == ([(H, 6), (H,)] + ([(H, 4)] if static else [])
                                        + [(H, H), (H, H), (H,)])
    w_s = blobs[2] if static else None
    o, h_t = np_rnn(feeds["x"], CONT, blobs[0], blobs[1], *blobs[-3:], feeds.get("xs"), w_s, feeds.get("h0"))
    out = run(spec, params, feeds, None)
    np.testing.assert_allclose(out["y"], o, atol=1e-5)
    if expose:
        np.testing.assert_allclose(out["hT"], h_t, atol=1e-5)


def test_cont_zero_restarts_the_sequence() -> None:
    # A hand check of cont: stream 0's step 3 starts a new sequence, so its output equals a fresh
    # LSTM run over steps 3..4 alone.
    spec, params, feeds, _ = recurrent_net("LSTM", False, False)
    full = run(spec, params, feeds, None)["y"]
    blobs = blobs_of(spec, params)
    tail, _, _ = np_lstm(feeds["x"][3:, :1], np.array([[0], [1]], np.float32), blobs[0], blobs[1], blobs[2])
    np.testing.assert_allclose(full[3:, :1], tail, atol=1e-5)


def np_lstm_unit(c_prev, x, cont):
    hid = c_prev.shape[2]
    i, f, o, g = (x[..., k * hid:(k + 1) * hid].astype(np.float64) for k in range(4))
    c = sigmoid(f) * cont[..., None] * c_prev + sigmoid(i) * np.tanh(g)
    return c, sigmoid(o) * np.tanh(c)


UNIT = 'layer { name: "unit" type: "LSTMUnit" bottom: "c_prev" bottom: "gates" bottom: "cont" top: "c" top: "h" }'


def unit_feeds():
    rng = np.random.default_rng(3)
    return {"c_prev": rng.normal(size=(1, N, H)).astype(np.float32),
            "gates": rng.normal(size=(1, N, 4 * H)).astype(np.float32),
            "cont": np.array([[1, 0, 1]], np.float32)}


def test_lstm_unit_forward_matches_numpy() -> None:
    feeds = unit_feeds()
    spec = make_net(UNIT, {k: v.shape for k, v in feeds.items()})
    out = run(spec, {}, feeds, None)
    c, h = np_lstm_unit(feeds["c_prev"], feeds["gates"], feeds["cont"])
    np.testing.assert_allclose(out["c"], c, atol=1e-6)
    np.testing.assert_allclose(out["h"], h, atol=1e-6)


def test_lstm_unit_backward_by_finite_differences() -> None:
    feeds = unit_feeds()
    spec = make_net(UNIT, {k: v.shape for k, v in feeds.items()})
    check_layer_gradients(spec, {}, feeds, ["c", "h"], wrt=["c_prev", "gates"], samples=24)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
@pytest.mark.parametrize("static,expose", [(False, False), (True, True)])
def test_recurrent_backward_by_finite_differences(kind: str, static: bool, expose: bool) -> None:
    spec, params, feeds, _ = recurrent_net(kind, static, expose)
    wrt = ["x"] + (["xs"] if static else []) + list(spec.params)
    # Only top 0's diff reaches the unrolled net in Caffe (the exposed final states' diffs are dropped).
    check_layer_gradients(spec, params, feeds, ["y"], wrt=wrt, samples=16)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_exposed_states_pass_no_diff_as_in_caffe(kind: str) -> None:
    # RecurrentLayer shares only the data of h_0/c_0 and h_T/c_T with its unrolled net: no diff crosses.
    spec, params, feeds, tops = recurrent_net(kind, False, True)
    rng = np.random.default_rng(5)
    diffs = {spec.blob_values[t]: rng.normal(size=spec.shapes[spec.blob_values[t]]).astype(np.float32)
             for t in tops}
    _, pdiffs, bdiffs = net_backward(spec, params, feeds, diffs)
    for s in (["h0", "c0"] if kind == "LSTM" else ["h0"]):
        assert not np.any(bdiffs.get(s, 0.0))
    only_y = {k: v for k, v in diffs.items() if k == spec.blob_values["y"]}
    _, pdiffs_y, _ = net_backward(spec, params, feeds, only_y)
    for p in pdiffs:
        np.testing.assert_allclose(pdiffs[p], pdiffs_y[p], atol=1e-6)


LRCN_NET = """
name: "tiny_lrcn"
layer { name: "seq" type: "HDF5Data" top: "cont" top: "input" top: "target"
        hdf5_data_param { source: "SOURCE" batch_size: %(t)d } }
layer { name: "image" type: "DummyData" top: "image"
        dummy_data_param { shape { dim: %(n)d dim: 1 dim: 6 dim: 6 } data_filler { type: "gaussian" std: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "image" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 8 weight_filler { type: "xavier" } } }
layer { name: "embed" type: "Embed" bottom: "input" top: "embedded"
        embed_param { input_dim: %(v)d num_output: 8 weight_filler { type: "uniform" min: -0.1 max: 0.1 } } }
layer { name: "lstm" type: "LSTM" bottom: "embedded" bottom: "cont" bottom: "fc" top: "lstm"
        recurrent_param { num_output: 16 weight_filler { type: "uniform" min: -0.1 max: 0.1 }
                          bias_filler { type: "constant" value: 0 } } }
layer { name: "predict" type: "InnerProduct" bottom: "lstm" top: "predict"
        inner_product_param { axis: 2 num_output: %(v)d weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "predict" bottom: "target" top: "loss"
        loss_param { ignore_label: -1 } softmax_param { axis: 2 } }
"""


def test_tiny_lrcn_trains_with_caffecompat_train(tmp_path) -> None:
    # The task needs the recurrence: each target is the previous input of the same sequence
    # (ignore_label -1 at a sequence's first step, where cont is 0).
    import h5py

    from tests.cli_run import run_cli

    t, n, v, batches = 6, 4, 5, 8
    rng = np.random.default_rng(0)
    cont = np.ones((batches * t, n), np.float32)
    for b in range(batches):
        cont[b * t] = 0
        cont[b * t + rng.integers(2, t - 1), rng.integers(0, n)] = 0  # a second, shorter sequence
    words = rng.integers(0, v, size=cont.shape).astype(np.float32)
    target = np.full(cont.shape, -1, np.float32)
    for r in range(1, cont.shape[0]):
        target[r] = np.where(cont[r] == 1, words[r - 1], -1)
    with h5py.File(tmp_path / "seq.h5", "w") as f:
        f["cont"], f["input"], f["target"] = cont, words, target
    (tmp_path / "list.txt").write_text(str(tmp_path / "seq.h5") + "\n")
    net = (LRCN_NET % {"t": t, "n": n, "v": v}).replace("SOURCE", str(tmp_path / "list.txt"))
    (tmp_path / "net.prototxt").write_text(net)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "net.prototxt"}"\nbase_lr: 0.05\nlr_policy: "fixed"\nmomentum: 0.9\n'
        f'display: 10\nmax_iter: 150\nsnapshot: 150\nsnapshot_prefix: "{tmp_path / "lrcn"}"\n'
        'solver_mode: CPU\nrandom_seed: 1\ntype: "Adam"\n')
    status, log = run_cli(["train", "-solver", str(tmp_path / "solver.prototxt")])
    assert status == 0, log[-2000:]
    losses = [float(line.rsplit("= ", 1)[1]) for line in log.splitlines() if "] Iteration" in line
              and ", loss = " in line]
    assert losses[0] > 1.2  # about ln 5 at the start
    assert min(losses[-3:]) < 0.5 * losses[0], losses
    # The snapshot keeps the LSTM's blobs in Caffe's order (W_xc, b_c, W_xc_static, W_hc) and loads back.
    import caffecompat as caffe
    from caffecompat.formats.blob import blob_to_array
    from caffecompat.formats.caffemodel import read_caffemodel

    model = tmp_path / "lrcn_iter_150.caffemodel"
    (lstm,) = [lp for lp in read_caffemodel(model).layer if lp.name == "lstm"]
    saved = [blob_to_array(b) for b in lstm.blobs]
    assert [a.shape for a in saved] == [(64, 8), (64,), (64, 8), (64, 16)]
    loaded = caffe.Net(str(tmp_path / "net.prototxt"), str(model), caffe.TEST)
    for ours, blob in zip(loaded.params["lstm"], saved):
        np.testing.assert_array_equal(ours.data, blob)


def test_zoo_lrcn_deploy_converts_and_matches_numpy(zoo, tmp_path, capsys) -> None:
    # lrcn_word_to_preds.deploy: Embed -> LSTM -> LSTM with the image features as static input ->
    # InnerProduct and Softmax on axis 2. Converted with `caffecompat convert` at 2 streams, random weights.
    import onnxruntime as ort

    from caffecompat import cli
    from caffecompat.formats.blob import array_to_blob
    from caffecompat.formats.caffemodel import write_caffemodel
    from caffecompat.formats.net import read_net_prototxt
    from caffecompat.net.spec import build
    from caffecompat.proto import caffe_pb2

    n = 2
    prototxt = zoo / "lrcn_coco" / "lrcn_word_to_preds.deploy.prototxt"
    net = read_net_prototxt(prototxt)
    shapes = {"cont_sentence": (1, n), "input_sentence": (1, n), "image_features": (n, 1000)}
    for name, shape in zip(net.input, net.input_shape):
        del shape.dim[:]
        shape.dim.extend(shapes[name])
    spec = build(net, caffe_pb2.TEST)
    rng = np.random.default_rng(0)
    weights, blobs = caffe_pb2.NetParameter(), {}
    for node in spec.layers:
        if node.param_shapes:
            lp = weights.layer.add(name=node.name, type=node.type)
            blobs[node.name] = [rng.uniform(-0.08, 0.08, s).astype(np.float32) for s in node.param_shapes]
            for a in blobs[node.name]:
                array_to_blob(a, lp.blobs.add())
    write_caffemodel(tmp_path / "w.caffemodel", weights)
    argv = ["convert", str(prototxt), str(tmp_path / "w.caffemodel"), str(tmp_path / "lrcn.onnx")]
    argv += [a for k, s in shapes.items() for a in ("-input_shape", f"{k}:{','.join(map(str, s))}")]
    argv += ["-outputs", "lstm1,lstm2,probs"]
    assert cli.main(argv) == 0, capsys.readouterr().err

    feeds = {"cont_sentence": np.array([[0, 1]], np.float32), "input_sentence": np.array([[0, 8800]], np.float32),
             "image_features": rng.normal(size=(n, 1000)).astype(np.float32)}
    sess = ort.InferenceSession(str(tmp_path / "lrcn.onnx"), providers=["CPUExecutionProvider"])
    out_lstm1, out_lstm2, probs = sess.run(["lstm1", "lstm2", "probs"], feeds)
    emb = blobs["embedding"][0].astype(np.float64)[feeds["input_sentence"].astype(int)]  # 1 x N x 1000
    lstm1, _, _ = np_lstm(emb, feeds["cont_sentence"], *[b.astype(np.float64) for b in blobs["lstm1"]])
    w_xc, b_c, w_s, w_hc = (b.astype(np.float64) for b in blobs["lstm2"])
    lstm2, _, _ = np_lstm(lstm1, feeds["cont_sentence"], w_xc, b_c, w_hc, feeds["image_features"], w_s)
    np.testing.assert_allclose(out_lstm1, lstm1, atol=1e-5)
    np.testing.assert_allclose(out_lstm2, lstm2, atol=1e-5)
    w, b = (a.astype(np.float64) for a in blobs["predict"])
    z = lstm2 @ w.T + b
    ref = np.exp(z - z.max(axis=2, keepdims=True))
    ref /= ref.sum(axis=2, keepdims=True)
    assert probs.shape == (1, n, 8801)
    np.testing.assert_allclose(probs, ref, rtol=1e-4, atol=1e-7)


def test_zoo_lrcn_train_net_trains(zoo, tmp_path) -> None:
    # lrcn.prototxt at stages factored + 2-layer (the LRCN solver's): CaffeNet features as the static input of
    # lstm2, loss_weight 20, ignore_label -1. Its ImageData is swapped for DummyData (2 images, 67x67) and its
    # HDF5Data reads sentences written here: 2 streams of 20 steps, sequences starting at steps 0 and 9.
    import io

    import h5py

    from caffecompat import glog
    from caffecompat.formats.net import read_net_prototxt
    from caffecompat.proto import caffe_pb2
    from caffecompat.solver.loop import Solver

    t, n = 20, 2
    cont = np.ones((t, n), np.float32)
    cont[0] = cont[9] = 0
    words = np.random.default_rng(0).integers(0, 8801, size=(t, n)).astype(np.float32)
    target = np.where(cont == 1, np.roll(words, 1, axis=0), -1).astype(np.float32)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["cont_sentence"], f["input_sentence"], f["target_sentence"] = cont, words, target
    (tmp_path / "list.txt").write_text(str(tmp_path / "s.h5") + "\n")
    net = read_net_prototxt(zoo / "lrcn_coco" / "lrcn.prototxt")
    layers = [lp for lp in net.layer if lp.type != "ImageData"]
    for lp in layers:
        if lp.type == "HDF5Data":
            lp.hdf5_data_param.source = str(tmp_path / "list.txt")
    # Named "images": caffecompat's data feeder keys sources by layer name, and the net's ImageData and
    # HDF5Data are both named "data" (Caffe allows it); see the report of this branch.
    dummy = caffe_pb2.LayerParameter(name="images", type="DummyData", top=["data", "label"])
    for dims, filler in (([n, 3, 67, 67], dict(type="gaussian", std=50.0)), ([n], dict(type="constant"))):
        dummy.dummy_data_param.shape.add(dim=dims)
        dummy.dummy_data_param.data_filler.add(**filler)
    del net.layer[:]
    net.layer.extend([dummy, *layers])
    param = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy="fixed", display=1, max_iter=2,
                                      snapshot_after_train=False, random_seed=1, clip_gradients=10)
    param.net_param.CopyFrom(net)
    param.train_state.stage.extend(["factored", "2-layer"])
    log = io.StringIO()
    glog.set_stream(log)
    try:
        solver = Solver(param, "lrcn solver")
        names = [p for p in solver.param_names if p.startswith(("lstm1#", "lstm2#"))]
        before = {p: np.array(solver.value(p)) for p in names}
        solver.solve()
        shapes = [tuple(solver.value(p).shape) for p in names]
        moved = [p for p in names if not np.array_equal(before[p], solver.value(p))]
    finally:
        glog.set_stream(None)
    solver.close()
    losses = [float(line.rsplit("= ", 1)[1]) for line in log.getvalue().splitlines()
              if "solver.cpp:239] Iteration" in line]
    # lstm1: W_xc, b_c, W_hc; lstm2 adds W_xc_static (for fc8) before W_hc. Every one of them learns.
    h4 = 4000
    assert shapes == [(h4, 1000), (h4,), (h4, 1000)] + [(h4, 1000), (h4,), (h4, 1000), (h4, 1000)], shapes
    assert moved == names
    assert len(losses) == 2 and all(np.isfinite(losses)), losses


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
@pytest.mark.parametrize("x_shape", [(1, 3), (4, 1, 5)])
def test_recurrent_edge_shapes_match_numpy(kind: str, x_shape: tuple[int, ...]) -> None:
    # One timestep (LRCN's deploy), one stream, and an x of only (T, N): D = 1.
    spec, params, feeds, _ = recurrent_net(kind, False, False, x_shape=x_shape, num_output=3)
    b = blobs_of(spec, params)
    cont = feeds["cont"]
    ref = (np_lstm(feeds["x"], cont, b[0], b[1], b[2])[0] if kind == "LSTM"
           else np_rnn(feeds["x"], cont, *b)[0])
    np.testing.assert_allclose(run(spec, params, feeds, None)["y"], ref, atol=1e-5)


BAD_NETS = {
    "num_output": ('type: "LSTM" bottom: "x" bottom: "cont" top: "y"', {"x": (3, 2, 4), "cont": (3, 2)},
                   "recurrent_param.num_output must be given"),
    "bottoms": ('type: "RNN" bottom: "x" top: "y" recurrent_param { num_output: 3 }', {"x": (3, 2, 4)},
                "takes 2 or 3 bottom blobs (x, cont, [x_static]), got 1"),
    "cont": ('type: "LSTM" bottom: "x" bottom: "cont" top: "y" recurrent_param { num_output: 3 }',
             {"x": (3, 2, 4), "cont": (2, 3)}, "bottom 1 (cont) has shape [2, 3]: needs exactly [3, 2]"),
    "static": ('type: "LSTM" bottom: "x" bottom: "cont" bottom: "s" top: "y" recurrent_param { num_output: 3 }',
               {"x": (3, 2, 4), "cont": (3, 2), "s": (5, 2)}, "its first axis must be the 2 streams"),
    "tops": ('type: "LSTM" bottom: "x" bottom: "cont" bottom: "h0" bottom: "c0" top: "y" '
             'recurrent_param { num_output: 3 expose_hidden: true }',
             {"x": (3, 2, 4), "cont": (3, 2), "h0": (1, 2, 3), "c0": (1, 2, 3)}, "takes exactly 3 top blob(s)"),
    "h0": ('type: "LSTM" bottom: "x" bottom: "cont" bottom: "h0" bottom: "c0" top: "y" top: "a" top: "b" '
           'recurrent_param { num_output: 3 expose_hidden: true }',
           {"x": (3, 2, 4), "cont": (3, 2), "h0": (1, 2, 4), "c0": (1, 2, 3)}, "bottom 2 (h_0) has shape [1, 2, 4]"),
    "unit": ('type: "LSTMUnit" bottom: "c" bottom: "x" bottom: "cont" top: "c1" top: "h1"',
             {"c": (1, 2, 3), "x": (1, 2, 11), "cont": (1, 2)}, "has 11 channels, needs 4 x 3"),
    "unit_t": ('type: "LSTMUnit" bottom: "c" bottom: "x" bottom: "cont" top: "c1" top: "h1"',
               {"c": (2, 2, 3), "x": (2, 2, 12), "cont": (2, 2)}, "c_prev (bottom 0) has shape [2, 2, 3]"),
}


@pytest.mark.parametrize("case", sorted(BAD_NETS))
def test_malformed_recurrent_layers_name_layer_and_fix(case: str) -> None:
    from caffecompat.errors import CaffeCompatError

    body, inputs, message = BAD_NETS[case]
    with pytest.raises(CaffeCompatError, match="layer 'bad'") as err:
        make_net(f'layer {{ name: "bad" {body} }}', inputs)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_step_by_step_with_exposed_states_equals_one_unrolled_pass(kind: str) -> None:
    # The README's recipe for decoding one step per Forward: feed h_T/c_T back as h_0/c_0.
    spec, params, feeds, tops = recurrent_net(kind, True, True)
    whole = run(spec, params, feeds, None)
    step_spec, _, _, _ = recurrent_net(kind, True, True, x_shape=(1, N, 2, 3))
    states = {t[0] + "0": feeds[t[0] + "0"] for t in tops[1:]}
    for t in range(T):
        out = run(step_spec, params, {"x": feeds["x"][t:t + 1], "cont": CONT[t:t + 1], "xs": feeds["xs"], **states},
                  None)
        np.testing.assert_allclose(out["y"][0], whole["y"][t], atol=1e-6)
        states = {k[0] + "0": out[k] for k in tops[1:]}
    for k in tops[1:]:
        np.testing.assert_allclose(states[k[0] + "0"], whole[k], atol=1e-6)


def test_asking_a_diff_for_cont_is_refused() -> None:
    # RecurrentLayer::Backward_cpu: CHECK(!propagate_down[1]) "Cannot backpropagate to sequence indicators."
    from caffecompat.errors import CaffeCompatError

    net = ('layer { name: "ip" type: "InnerProduct" bottom: "x0" top: "x" inner_product_param { num_output: 3 '
           'axis: 2 weight_filler { type: "gaussian" std: 0.1 } } }\n'
           'layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h" loss_weight: 1 '
           'propagate_down: true propagate_down: true recurrent_param { num_output: 4 } }')
    spec = make_net(net, {"x0": (3, 2, 2), "cont": (3, 2)})
    rng = np.random.default_rng(0)
    params = {k: rng.normal(0, 0.3, v.shape).astype(np.float32) for k, v in init_params(spec, rng).items()}
    with pytest.raises(CaffeCompatError, match="layer 'lstm' .*cannot backpropagate to the sequence indicators"):
        net_backward(spec, params, {"x0": np.ones((3, 2, 2)), "cont": np.ones((3, 2))}, force_backward=False)
    # force_backward alone never asks for it (AllowForceBackward), and the other diffs flow.
    spec = make_net(net.replace("propagate_down: true propagate_down: true ", ""), {"x0": (3, 2, 2), "cont": (3, 2)})
    _, pdiffs, _ = net_backward(spec, params, {"x0": np.ones((3, 2, 2)), "cont": np.ones((3, 2))})
    assert np.any(pdiffs["ip#0"])


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_pycaffe_forward_calls_carry_the_hidden_state(kind: str, tmp_path) -> None:
    # RecurrentLayer::Forward_cpu without expose_hidden: h_0 (c_0) is the previous Forward's h_T (c_T), as
    # LRCN's captioner relies on (one word per net.forward, cont 0 on the first). T one-step calls on one
    # pycaffe Net equal one T-step pass; a runner's state is its own.
    import caffecompat as caffe
    from caffecompat.runtime.forward import ForwardRunner

    spec, params, feeds, _ = recurrent_net(kind, True, False)
    whole = run(spec, params, feeds, None)["y"]
    step_text = (f'input: "x" input_shape {{ dim: 1 dim: {N} dim: 2 dim: 3 }}\n'
                 f'input: "cont" input_shape {{ dim: 1 dim: {N} }}\n'
                 f'input: "xs" input_shape {{ dim: {N} dim: 2 dim: 2 }}\n'
                 f'layer {{ name: "rec" type: "{kind}" bottom: "x" bottom: "cont" bottom: "xs" top: "y" '
                 f'recurrent_param {{ num_output: {H} }} }}\n')
    (tmp_path / "step.prototxt").write_text(step_text)
    net = caffe.Net(str(tmp_path / "step.prototxt"), caffe.TEST)
    for k, blob in enumerate(net.params["rec"]):
        blob.data[...] = params[f"rec#{k}"]
    step_spec, _, _, _ = recurrent_net(kind, True, False, x_shape=(1, N, 2, 3))
    runner = ForwardRunner(step_spec)
    for t in range(T):
        step = {"x": feeds["x"][t:t + 1], "cont": CONT[t:t + 1], "xs": feeds["xs"]}
        out = net.forward(**step)["y"]
        np.testing.assert_allclose(out[0], whole[t], atol=1e-5)
        np.testing.assert_allclose(runner.run(step, params)[step_spec.outputs[0]][0], whole[t], atol=1e-5)


def test_training_passes_carry_the_hidden_state() -> None:
    # caffecompat train's runtime: a batch whose first step continues (cont 1) starts from the last batch's
    # h_T/c_T, as Caffe's LRCN training streams do across batches.
    from caffecompat.runtime.training import TrainingNet

    text = ('layer { name: "rec" type: "LSTM" bottom: "x" bottom: "cont" top: "y" loss_weight: 1 '
            f'recurrent_param {{ num_output: {H} {FILLERS} }} }}')
    spec = make_net(text, {"x": (T, N, 3), "cont": (T, N)}, caffe_pb2.TRAIN)
    params = init_params(spec, np.random.default_rng(0))
    x = np.random.default_rng(1).normal(size=(2 * T, N, 3)).astype(np.float32)
    cont = np.ones((2 * T, N), np.float32)
    cont[0] = 0
    runner = TrainingNet(spec, params)
    y = spec.blob_values["y"]
    outs = [runner.forward_backward({"x": x[k * T:(k + 1) * T], "cont": cont[k * T:(k + 1) * T]})[y]
            for k in range(2)]
    blobs = blobs_of(spec, params)
    ref, _, _ = np_lstm(x, cont, blobs[0], blobs[1], blobs[2])
    np.testing.assert_allclose(np.concatenate(outs), ref, atol=1e-5)
