"""The remaining BVLC layer types: SPP, MultinomialLogisticLoss, Parameter, Im2col, Filter, BatchReindex.

Each forward against a numpy reference written here from Caffe's *_layer.cpp loops (OpenCV implements none
of these types), each backward against central differences and Caffe's Backward_cpu formula.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from caffecompat.errors import CaffeCompatError
from caffecompat.proto import caffe_pb2
from tests.gradients import check_layer_gradients, net_backward
from tests.layer_nets import forward, make_net


def _normal(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _distinct(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Values 0.05 apart in random order: no max pooling tie within a finite-difference step."""
    values = np.random.default_rng(seed).permutation(int(np.prod(shape))) * 0.05
    return values.reshape(shape).astype(np.float32)


def _run(layers: str, feeds: dict[str, np.ndarray], blobs: list[str], params=None) -> dict[str, np.ndarray]:
    spec = make_net(layers, {k: v.shape for k, v in feeds.items()})
    return forward(spec, params or {}, feeds, blobs)


# -- Parameter -------------------------------------------------------------------------------------------------

PARAMETER = 'layer { name: "p" type: "Parameter" top: "w" parameter_param { shape { dim: 2 dim: 3 } } }\n'


def test_parameter_top_is_its_blob_and_starts_zeroed():
    from caffecompat.net.weights import init_params

    spec = make_net(PARAMETER, {})
    (name,) = spec.layers[-1].param_names
    assert spec.params[name].shape == (2, 3)
    # ParameterLayer fills nothing: Caffe's zeroed blob.
    assert not init_params(spec, np.random.default_rng(0))[name].any()
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(forward(spec, {name: value}, {}, ["w"])["w"], value)


def test_parameter_diff_is_the_top_diff():
    layers = PARAMETER + 'layer { name: "s" type: "Scale" bottom: "w" bottom: "x" top: "y" scale_param { axis: 0 } }'
    spec = make_net(layers, {"x": (2, 3)})
    name = spec.layers[-2].param_names[0]
    params = {name: _normal((2, 3), 1)}
    x = _normal((2, 3), 2)
    top = _normal((2, 3), 3)
    _, pdiffs, _ = net_backward(spec, params, {"x": x}, {spec.blob_values["y"]: top})
    np.testing.assert_allclose(pdiffs[name], top * x, rtol=1e-6)
    check_layer_gradients(spec, params, {"x": x})


def test_parameter_rejects_bottoms():
    with pytest.raises(CaffeCompatError, match="exactly 0 bottom"):
        make_net('layer { name: "p" type: "Parameter" bottom: "x" top: "w" '
                 'parameter_param { shape { dim: 2 } } }', {"x": (2,)})


# -- BatchReindex ----------------------------------------------------------------------------------------------

REINDEX = 'layer { name: "r" type: "BatchReindex" bottom: "x" bottom: "idx" top: "y" }'


def test_batch_reindex_forward_and_accumulating_backward():
    x = _normal((4, 2, 3))
    idx = np.array([3, 0, 3, 1.7, 3], np.float32)  # repeats, and a float truncated like static_cast<int>
    y = _run(REINDEX, {"x": x, "idx": idx}, ["y"])["y"]
    want = np.stack([x[int(i)] for i in idx])
    np.testing.assert_array_equal(y, want)
    spec = make_net(REINDEX, {"x": x.shape, "idx": idx.shape})
    top = _normal(y.shape, 5)
    _, _, bdiffs = net_backward(spec, {}, {"x": x, "idx": idx}, {spec.blob_values["y"]: top})
    ref = np.zeros_like(x)
    for n, i in enumerate(idx):  # BatchReindexLayer::Backward_cpu: bot_diff[permut[n]] += top_diff[n]
        ref[int(i)] += top[n]
    np.testing.assert_allclose(bdiffs["x"], ref, rtol=1e-6)
    assert not ref[2].any()
    check_layer_gradients(spec, {}, {"x": x, "idx": idx}, wrt=["x"])


@pytest.mark.parametrize("bad", [-1.0, -0.5, 4.0])
def test_batch_reindex_refuses_indices_outside_the_batch(bad):
    # check_batch_reindex: CHECK_GE(index, 0) and CHECK_LT(index, num); Gather alone would wrap -1.
    with pytest.raises(CaffeCompatError, match="out of data bounds"):
        _run(REINDEX, {"x": _normal((4, 2)), "idx": np.array([0, bad], np.float32)}, ["y"])


def test_batch_reindex_needs_1d_indices():
    with pytest.raises(CaffeCompatError, match="must be 1-D"):
        make_net(REINDEX, {"x": (4, 2), "idx": (2, 1)})


# -- MultinomialLogisticLoss -----------------------------------------------------------------------------------

MLL = 'layer { name: "loss" type: "MultinomialLogisticLoss" bottom: "p" bottom: "label" top: "loss" }'


def _mll_ref(p: np.ndarray, label: np.ndarray) -> tuple[float, np.ndarray]:
    num = p.shape[0]
    flat = p.reshape(num, -1).astype(np.float64)
    loss, diff = 0.0, np.zeros_like(flat)
    for i in range(num):
        prob = max(flat[i, int(label[i])], 1e-20)
        loss -= np.log(prob)
        diff[i, int(label[i])] = -1.0 / num / prob
    return loss / num, diff.reshape(p.shape)


@pytest.mark.parametrize("shape", [(4, 5), (3, 2, 2, 1)])
def test_multinomial_logistic_loss(shape):
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 1.0, size=shape).astype(np.float32)
    dim = int(np.prod(shape[1:]))
    label = rng.integers(0, dim, size=(shape[0],)).astype(np.float32)
    p.reshape(shape[0], -1)[0, int(label[0])] = 0.0  # clamped to kLOG_THRESHOLD: log(1e-20)
    spec = make_net(MLL, {"p": shape, "label": (shape[0],)}, caffe_pb2.TRAIN)
    out, _, bdiffs = net_backward(spec, {}, {"p": p, "label": label})
    loss, diff = _mll_ref(p, label)
    np.testing.assert_allclose(out[spec.blob_values["loss"]], loss, rtol=1e-5)
    np.testing.assert_allclose(bdiffs["p"], diff, rtol=1e-5)
    p.reshape(shape[0], -1)[0, int(label[0])] = 0.5  # away from the clamp for central differences
    check_layer_gradients(spec, {}, {"p": p, "label": label}, tops=[], wrt=["p"])


def test_multinomial_logistic_loss_refuses_bad_labels():
    from caffecompat.layers.labels import check_labels, label_rules

    spec = make_net(MLL, {"p": (2, 3), "label": (2,)}, caffe_pb2.TRAIN)
    rules = label_rules(spec)
    assert [r.classes for r in rules] == [3]
    with pytest.raises(CaffeCompatError, match=r"outside \[0, 3\)"):
        check_labels(rules, lambda r: np.array([0, 3], np.float32))
    # A label computed in the net is not checked before the pass: outside [0, dim), negative ones included,
    # it is ONNX Runtime's error (never a wrapped read).
    layers = 'layer { name: "neg" type: "Power" bottom: "label" top: "neg" power_param { scale: -1 } }\n' + \
        MLL.replace('bottom: "label"', 'bottom: "neg"')
    for label in ([0, 1], [0, -3]):
        spec = make_net(layers, {"p": (2, 3), "label": (2,)})
        # ONNX Runtime's words vary by version, and long ones are cut ("GatherElements op: Out..." on 1.23).
        with pytest.raises(CaffeCompatError, match=r"(?i)out of (data bounds|range)|GatherElements op: Out"):
            forward(spec, {}, {"p": np.full((2, 3), 0.3, np.float32), "label": np.array(label, np.float32)},
                    ["loss"])
    with pytest.raises(CaffeCompatError, match="one label per item"):
        make_net(MLL, {"p": (2, 3), "label": (2, 2)}, caffe_pb2.TRAIN)
    with pytest.raises(CaffeCompatError, match="propagate_down"):
        net_backward(make_net(MLL.replace("}", 'propagate_down: true propagate_down: true }'),
                              {"p": (2, 3), "label": (2,)}, caffe_pb2.TRAIN), {},
                     {"p": np.full((2, 3), 0.3, np.float32), "label": np.zeros(2, np.float32)})


# -- Im2col ----------------------------------------------------------------------------------------------------

def _im2col_ref(x: np.ndarray, k, st, pd, dl) -> np.ndarray:
    """Caffe's im2col_nd_cpu: channel c * prod(k) + offset holds x at out * stride - pad + offset * dilation."""
    n, c, *size = x.shape
    out = [(size[i] + 2 * pd[i] - (dl[i] * (k[i] - 1) + 1)) // st[i] + 1 for i in range(len(k))]
    offsets = list(itertools.product(*(range(v) for v in k)))
    cols = np.zeros((n, c * len(offsets), *out), np.float32)
    for ch in range(c):
        for j, off in enumerate(offsets):
            for pos in itertools.product(*(range(v) for v in out)):
                src = [pos[i] * st[i] - pd[i] + off[i] * dl[i] for i in range(len(k))]
                if all(0 <= src[i] < size[i] for i in range(len(k))):
                    cols[(slice(None), ch * len(offsets) + j, *pos)] = x[(slice(None), ch, *src)]
    return cols


IM2COL_CASES = {
    "plain": ("kernel_size: 3", (2, 2, 4, 5), [3, 3], [1, 1], [0, 0], [1, 1]),
    "stride_pad": ("kernel_size: 3 stride: 2 pad: 1", (1, 3, 5, 6), [3, 3], [2, 2], [1, 1], [1, 1]),
    "rect_dilated": ("kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 dilation: 2",
                     (2, 2, 6, 7), [2, 3], [2, 1], [1, 0], [2, 2]),
    "floor_rows": ("kernel_size: 2 stride: 3", (1, 2, 7, 8), [2, 2], [3, 3], [0, 0], [1, 1]),
    "1d": ("kernel_size: 3 stride: 2 pad: 2", (2, 2, 7), [3], [2], [2], [1]),
    "3d": ("kernel_size: 2 pad: 1 stride: 2", (1, 2, 3, 4, 3), [2, 2, 2], [2, 2, 2], [1, 1, 1], [1, 1, 1]),
}


@pytest.mark.parametrize("case", list(IM2COL_CASES))
def test_im2col(case):
    param, shape, k, st, pd, dl = IM2COL_CASES[case]
    layers = f'layer {{ name: "c" type: "Im2col" bottom: "x" top: "y" convolution_param {{ {param} }} }}'
    x = _normal(shape)
    y = _run(layers, {"x": x}, ["y"])["y"]
    np.testing.assert_allclose(y, _im2col_ref(x, k, st, pd, dl), rtol=1e-6, atol=1e-6)
    spec = make_net(layers, {"x": shape})
    check_layer_gradients(spec, {}, {"x": x}, samples=15)


def test_im2col_channel_axis_2():
    layers = ('layer { name: "c" type: "Im2col" bottom: "x" top: "y" '
              'convolution_param { kernel_size: 2 axis: 2 } }')
    x = _normal((2, 3, 2, 4, 3))
    y = _run(layers, {"x": x}, ["y"])["y"]
    ref = _im2col_ref(x.reshape(6, 2, 4, 3), [2, 2], [1, 1], [0, 0], [1, 1]).reshape(2, 3, 8, 3, 2)
    np.testing.assert_allclose(y, ref, rtol=1e-6)


def test_im2col_kernel_too_big():
    with pytest.raises(CaffeCompatError, match="does not fit"):
        make_net('layer { name: "c" type: "Im2col" bottom: "x" top: "y" convolution_param { kernel_size: 5 } }',
                 {"x": (1, 1, 3, 3)})


# -- SPP -------------------------------------------------------------------------------------------------------

def _caffe_pool_ref(x: np.ndarray, k, st, pd, ave: bool) -> np.ndarray:
    """PoolingLayer::Forward_cpu's loops with Caffe's CEIL output size and last-window clipping."""
    n, c, h, w = x.shape
    out = []
    for i, size in enumerate((h, w)):
        o = int(np.ceil((size + 2 * pd[i] - k[i]) / st[i])) + 1
        if pd[i] and (o - 1) * st[i] >= size + pd[i]:
            o -= 1
        out.append(o)
    y = np.zeros((n, c, *out), np.float64)
    for ph, pw in itertools.product(range(out[0]), range(out[1])):
        hs, ws = ph * st[0] - pd[0], pw * st[1] - pd[1]
        he, we = min(hs + k[0], h + pd[0]), min(ws + k[1], w + pd[1])
        pool = (he - hs) * (we - ws)
        hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
        win = x[:, :, hs:he, ws:we].astype(np.float64)
        y[:, :, ph, pw] = win.sum((2, 3)) / pool if ave else win.max((2, 3))
    return y


def _spp_ref(x: np.ndarray, height: int, ave: bool) -> np.ndarray:
    levels = []
    for level in range(height):
        bins = 2 ** level
        k = [int(np.ceil(s / bins)) for s in x.shape[2:]]
        pd = [(k[i] * bins - x.shape[2 + i] + 1) // 2 for i in range(2)]
        levels.append(_caffe_pool_ref(x, k, k, pd, ave))
    if height == 1:
        return levels[0]
    return np.concatenate([v.reshape(x.shape[0], -1) for v in levels], axis=1)


@pytest.mark.parametrize("pool,height,shape", [("MAX", 3, (2, 2, 7, 9)), ("AVE", 3, (2, 2, 7, 9)),
                                               ("MAX", 2, (1, 3, 6, 5)), ("AVE", 1, (2, 2, 5, 3)),
                                               ("MAX", 1, (1, 2, 4, 4))])
def test_spp(pool, height, shape):
    layers = (f'layer {{ name: "spp" type: "SPP" bottom: "x" top: "y" '
              f'spp_param {{ pyramid_height: {height} pool: {pool} }} }}')
    x = _distinct(shape)
    spec = make_net(layers, {"x": shape})
    y = forward(spec, {}, {"x": x}, ["y"])["y"]
    ref = _spp_ref(x, height, pool == "AVE")
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    check_layer_gradients(spec, {}, {"x": x}, samples=15)


def test_spp_pyramid_too_high_for_the_input():
    with pytest.raises(CaffeCompatError, match="pyramid_height"):
        make_net('layer { name: "spp" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 3 } }',
                 {"x": (1, 1, 2, 2)})


# -- Filter ----------------------------------------------------------------------------------------------------

FILTER = 'layer { name: "f" type: "Filter" bottom: "a" bottom: "b" bottom: "sel" top: "fa" top: "fb" }'


def test_filter_keeps_selected_items():
    a, b = _normal((5, 2, 3)), _normal((5, 4), 1)
    sel = np.array([0, 2.5, 0, -1, 1], np.float32).reshape(5, 1, 1, 1)
    out = _run(FILTER, {"a": a, "b": b, "sel": sel}, ["fa", "fb"])
    keep = [1, 3, 4]
    np.testing.assert_array_equal(out["fa"], a[keep])
    np.testing.assert_array_equal(out["fb"], b[keep])
    none = _run(FILTER, {"a": a, "b": b, "sel": np.zeros_like(sel)}, ["fa"])
    assert none["fa"].shape == (0, 2, 3)


def test_filter_checks():
    with pytest.raises(CaffeCompatError, match="selector"):
        make_net(FILTER, {"a": (5, 2), "b": (5, 4), "sel": (5, 2)})
    with pytest.raises(CaffeCompatError, match="first dimension"):
        make_net(FILTER, {"a": (4, 2), "b": (5, 4), "sel": (5,)})
    with pytest.raises(CaffeCompatError, match="one top per bottom"):
        make_net('layer { name: "f" type: "Filter" bottom: "a" bottom: "sel" top: "fa" top: "x" }',
                 {"a": (5, 2), "sel": (5,)})


def test_filter_backward_scatters_back():
    layers = FILTER.replace("}", 'propagate_down: true propagate_down: true propagate_down: false }')
    spec = make_net(layers, {"a": (5, 2, 3), "b": (5, 4), "sel": (5,)})
    a, b = _normal((5, 2, 3)), _normal((5, 4), 1)
    sel = np.array([1, 0, 0, 3, 1], np.float32)
    ra, rb = _normal((3, 2, 3), 2), _normal((3, 4), 3)
    _, _, bdiffs = net_backward(spec, {}, {"a": a, "b": b, "sel": sel},
                                {spec.blob_values["fa"]: ra, spec.blob_values["fb"]: rb})
    # FilterLayer::Backward_cpu: kept item n gets the diff of its top row, the others 0.
    want_a, want_b = np.zeros_like(a), np.zeros_like(b)
    want_a[[0, 3, 4]], want_b[[0, 3, 4]] = ra, rb
    np.testing.assert_array_equal(bdiffs["a"], want_a)
    np.testing.assert_array_equal(bdiffs["b"], want_b)

    # Central differences of sum(fa * ra) over every entry of a.
    def loss(values: np.ndarray) -> float:
        return float((forward(spec, {}, {"a": values, "b": b, "sel": sel}, ["fa"])["fa"] * ra).sum())

    numeric = np.zeros_like(a)
    for i in range(a.size):
        up, down = a.copy(), a.copy()
        up.flat[i] += 1e-2
        down.flat[i] -= 1e-2
        numeric.flat[i] = (loss(up) - loss(down)) / 2e-2
    np.testing.assert_allclose(bdiffs["a"], numeric, atol=1e-3)


def test_filter_refuses_the_selector_diff():
    from caffecompat.layers import registry
    from caffecompat.layers.graph import GraphBuilder
    from caffecompat.layers.registry import Diffs

    spec = make_net('layer { name: "f" type: "Filter" bottom: "a" bottom: "sel" top: "fa" }',
                    {"a": (2, 2), "sel": (2,)})
    node = spec.layers[-1]
    g = GraphBuilder(17, True)
    registry.get(node).lower(node, g)
    # FilterLayer::Backward_cpu: LOG(FATAL) when propagate_down asks for the selector's diff.
    with pytest.raises(CaffeCompatError, match="selector"):
        registry.get(node).backward(node, g, Diffs(top=["d"], need_bottom=[True, True], need_param=[]))


# -- HDF5Output ------------------------------------------------------------------------------------------------

def _hdf5_output_net(tmp_path, data_shape=(3, 2, 2), label_shape=(3,)) -> str:
    shape = " ".join(f"dim: {d}" for d in data_shape)
    lshape = " ".join(f"dim: {d}" for d in label_shape)
    text = (f'layer {{ name: "in" type: "Input" top: "data" top: "label" input_param {{ shape {{ {shape} }} '
            f'shape {{ {lshape} }} }} }}\n'
            'layer { name: "scale" type: "Power" bottom: "data" top: "scaled" power_param { scale: 2 } }\n'
            f'layer {{ name: "out" type: "HDF5Output" bottom: "scaled" bottom: "label" '
            f'hdf5_output_param {{ file_name: "{tmp_path / "out.h5"}" }} }}\n')
    (tmp_path / "net.prototxt").write_text(text)
    return str(tmp_path / "net.prototxt")


def test_hdf5_output_leaves_the_first_batch(tmp_path):
    import h5py

    import caffecompat as caffe

    (tmp_path / "out.h5").write_bytes(b"old content")  # H5F_ACC_TRUNC: building the net replaces it
    net = caffe.Net(_hdf5_output_net(tmp_path), caffe.TEST)
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert list(f) == []
    x, label = _normal((3, 2, 2)), np.array([2, 0, 1], np.float32)
    net.blobs["data"].data[...] = x
    net.blobs["label"].data[...] = label
    net.forward()
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert sorted(f) == ["data", "label"]
        # Forward_cpu reshapes to the legacy num x channels x height x width: missing axes are 1.
        assert f["data"].shape == (3, 2, 2, 1) and f["data"].dtype == np.float32
        np.testing.assert_array_equal(f["data"][...].reshape(3, 2, 2), 2 * x)
        np.testing.assert_array_equal(f["label"][...], label.reshape(3, 1, 1, 1))
    # hdf5_save_nd_dataset cannot make "data" twice: Caffe's second Forward fails, the file keeps batch one.
    net.blobs["data"].data[...] = 0
    with pytest.raises(CaffeCompatError, match="Failed to make float dataset data"):
        net.forward()
    with h5py.File(tmp_path / "out.h5", "r") as f:
        np.testing.assert_array_equal(f["data"][...].reshape(3, 2, 2), 2 * x)


def test_hdf5_output_checks(tmp_path):
    import caffecompat as caffe

    net = caffe.Net(_hdf5_output_net(tmp_path, label_shape=(2,)), caffe.TEST)
    with pytest.raises(CaffeCompatError, match="same batch size"):
        net.forward()
    bad = tmp_path / "bad"
    bad.mkdir()
    path = _hdf5_output_net(bad)
    with open(path) as f:
        text = f.read().replace(str(bad / "out.h5"), str(tmp_path / "missing" / "out.h5"))
    with open(path, "w") as f:
        f.write(text)
    with pytest.raises(CaffeCompatError, match="cannot create the file"):
        caffe.Net(path, caffe.TEST)
    # The ONNX path refuses the layer.
    with pytest.raises(CaffeCompatError, match="not supported: layer out of type HDF5Output"):
        make_net('layer { name: "out" type: "HDF5Output" bottom: "a" bottom: "b" '
                 f'hdf5_output_param {{ file_name: "{tmp_path / "x.h5"}" }} }}', {"a": (2, 1), "b": (2,)})


def test_parameter_learns_in_the_solver():
    from caffecompat.formats.protofile import parse_text
    from caffecompat.solver.loop import Solver

    net = parse_text(
        'layer { name: "t" type: "DummyData" top: "target" dummy_data_param { shape { dim: 2 dim: 3 } '
        'data_filler { type: "constant" value: 1 } } }\n' + PARAMETER +
        'layer { name: "loss" type: "EuclideanLoss" bottom: "w" bottom: "target" top: "loss" }\n',
        caffe_pb2.NetParameter, "net.prototxt", "net")
    param = caffe_pb2.SolverParameter(base_lr=0.5, lr_policy="fixed", max_iter=1, display=0,
                                      snapshot_after_train=False, random_seed=1)
    param.net_param.CopyFrom(net)
    solver = Solver(param, "solver")
    try:
        name = [n for n in solver.param_names if n.startswith("p#")][0]
        solver.solve()
        # EuclideanLoss: diff = (w - target) / num = -1 / 2 from the zeroed blob; SGD: w = 0 - 0.5 * (-0.5).
        np.testing.assert_allclose(solver.value(name), np.full((2, 3), 0.25), rtol=1e-6)
    finally:
        solver.close()


def test_hdf5_output_in_a_train_net_with_an_automatic_loss_top(tmp_path):
    import h5py

    from caffecompat.formats.protofile import parse_text
    from caffecompat.solver.loop import Solver

    # The loss has no top: Net::Init's AutoTopBlobs gives it "(automatic)"; the host-side HDF5Output makes the
    # solver run the net by segments, which see that blob too.
    net = parse_text(
        'layer { name: "d" type: "DummyData" top: "data" top: "label" dummy_data_param { shape { dim: 4 dim: 3 } '
        'shape { dim: 4 } data_filler { type: "gaussian" } data_filler { type: "constant" value: 1 } } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
        'inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }\n'
        f'layer {{ name: "out" type: "HDF5Output" bottom: "ip" bottom: "label" '
        f'hdf5_output_param {{ file_name: "{tmp_path / "out.h5"}" }} }}\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" }\n',
        caffe_pb2.NetParameter, "net.prototxt", "net")
    # display 0: Caffe's Solve runs one more Forward after the last iteration when displaying, a second write.
    param = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy="fixed", max_iter=1, display=0,
                                      snapshot_after_train=False, random_seed=1)
    param.net_param.CopyFrom(net)
    solver = Solver(param, "solver")
    try:
        solver.solve()
    finally:
        solver.close()
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert f["data"].shape == (4, 2, 1, 1)
        np.testing.assert_array_equal(f["label"][...].ravel(), np.ones(4))
