"""ArgMax (Caffe's shapes with and without axis, tie order, no Backward) and Reduction (SUM, ASUM, SUMSQ, MEAN;
Forward and Backward)."""

from __future__ import annotations

import numpy as np
import pytest

from caffecompat.errors import CaffeCompatError
from caffecompat.proto import caffe_pb2
from tests.gradients import net_backward
from tests.layer_nets import check_all_gradients, forward, make_data_net, make_net, relative_error

SHAPE = (2, 3, 2, 2)


def _caffe_topk(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    # Caffe sorts (value, index) pairs descending: equal values put the larger index first.
    idx = np.array([sorted(range(len(r)), key=lambda j: (r[j], j), reverse=True)[:k] for r in rows])
    return idx, np.take_along_axis(rows, idx, axis=1)


def _argmax(param: str, x: np.ndarray) -> np.ndarray:
    spec, params = make_data_net(
        f'layer {{ name: "am" type: "ArgMax" bottom: "data" top: "am" argmax_param {{ {param} }} }}', x.shape)
    return forward(spec, params, {"data": x}, ["am"])["am"]


def test_argmax_without_axis_flattens_each_instance():
    x = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    x[0, 0, 0, 0] = x[0, 2, 1, 1] = 9.0  # a tie for first place
    idx, val = _caffe_topk(x.reshape(2, -1), 3)
    ours = _argmax("top_k: 3", x)
    assert ours.shape == (2, 1, 3, 1)
    np.testing.assert_array_equal(ours.reshape(2, 3), idx)
    assert ours[0, 0, 0, 0] == 11  # the larger index of the tie comes first
    both = _argmax("top_k: 3 out_max_val: true", x)
    assert both.shape == (2, 2, 3, 1)
    np.testing.assert_array_equal(both[:, 0, :, 0], idx)
    np.testing.assert_array_equal(both[:, 1, :, 0], val)
    # A 2-D bottom still gets Caffe's 3 axes.
    assert _argmax("", x.reshape(2, 12)).shape == (2, 1, 1)


def test_argmax_along_an_axis():
    x = np.random.default_rng(1).normal(size=SHAPE).astype(np.float32)
    rows = np.moveaxis(x, 1, -1).reshape(-1, 3)
    idx, val = _caffe_topk(rows, 2)
    ours = _argmax("top_k: 2 axis: 1", x)
    assert ours.shape == (2, 2, 2, 2)
    np.testing.assert_array_equal(np.moveaxis(ours, 1, -1).reshape(-1, 2), idx)
    vals = _argmax("top_k: 2 axis: -3 out_max_val: true", x)
    np.testing.assert_array_equal(np.moveaxis(vals, 1, -1).reshape(-1, 2), val)


def test_argmax_errors():
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(CaffeCompatError, match="'am'.*top_k 4 exceeds"):
        _argmax("top_k: 4 axis: 1", x)
    with pytest.raises(CaffeCompatError, match="'am'.*top_k 13 exceeds"):
        _argmax("top_k: 13", x)


@pytest.mark.parametrize("op, axis, coeff", [("SUM", 0, 1), ("SUM", 2, -0.5), ("ASUM", 1, 2), ("ASUM", 0, 1),
                                             ("SUMSQ", 2, 0.5), ("SUMSQ", 3, 1), ("MEAN", -1, 3), ("MEAN", 1, 1),
                                             ("MEAN", 0, 0.7)])
def test_reduction_forward_and_gradient(op, axis, coeff):
    x = np.random.default_rng(2).normal(size=SHAPE).astype(np.float32)
    x = np.where(np.abs(x) < 0.1, 0.5, x).astype(np.float32)  # ASUM: no entry near the kink of |x|
    net = (f'layer {{ name: "top" type: "Reduction" bottom: "data" top: "top" '
           f'reduction_param {{ operation: {op} axis: {axis} coeff: {coeff} }} }}')
    spec, params = make_data_net(net, SHAPE)
    ours = forward(spec, params, {"data": x}, ["top"])["top"]
    a = axis % 4
    d = x.astype(np.float64).reshape(*SHAPE[:a], -1)
    base = {"SUM": d, "ASUM": np.abs(d), "SUMSQ": d * d, "MEAN": d / d.shape[-1]}[op]
    want = coeff * base.sum(axis=-1)
    # Caffe keeps the axes before `axis` only: reducing from axis 0 gives a 0-axis blob.
    assert ours.shape == SHAPE[:a]
    assert relative_error(ours, want) < 1e-5
    check_all_gradients(spec, params, {"data": x}, "top")


@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
def test_reduction_backward_is_caffes(op):
    # ReductionLayer::Backward_cpu: top_diff * coeff_ spread over the reduced entries, times sign(x) for ASUM
    # (sign(0) = 0, where |x| has no derivative) or 2x for SUMSQ; coeff_ is coeff / count for MEAN.
    x = np.random.default_rng(3).normal(size=SHAPE).astype(np.float32)
    x[0, 1, 0, 1] = x[1, 2, 1, 0] = 0.0
    spec = make_net(f'layer {{ name: "r" type: "Reduction" bottom: "x" top: "r" '
                    f'reduction_param {{ operation: {op} axis: 2 coeff: 1.5 }} }}', {"x": SHAPE}, caffe_pb2.TRAIN)
    dy = np.random.default_rng(4).normal(size=SHAPE[:2]).astype(np.float32)
    _, _, diffs = net_backward(spec, {}, {"x": x}, {"r": dy})
    coeff = np.float32(1.5) / np.float32(4) if op == "MEAN" else np.float32(1.5)
    spread = np.broadcast_to((dy * coeff)[:, :, None, None], SHAPE)
    want = {"SUM": spread, "MEAN": spread, "ASUM": np.sign(x) * spread, "SUMSQ": 2 * spread * x}[op]
    np.testing.assert_allclose(diffs["x"], want, rtol=1e-6, atol=0)
    if op == "ASUM":
        assert diffs["x"][0, 1, 0, 1] == 0 and diffs["x"][1, 2, 1, 0] == 0


def test_argmax_has_no_backward():
    layers = 'layer { name: "am" type: "ArgMax" bottom: "x" top: "am" argmax_param { top_k: 2 axis: 1 } }'
    spec = make_net(layers, {"x": SHAPE}, caffe_pb2.TRAIN)
    x = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    # ArgMaxLayer::Backward_cpu is NOT_IMPLEMENTED: force_backward asking for its bottom's diff is an error.
    with pytest.raises(CaffeCompatError, match="'am'.*no Backward"):
        net_backward(spec, {}, {"x": x})
    # Without force_backward nothing needs it: the pass runs and the input's diff stays zero.
    _, _, diffs = net_backward(spec, {}, {"x": x}, force_backward=False)
    assert not diffs["x"].any()


def test_reduction_axis_out_of_range():
    with pytest.raises(CaffeCompatError, match="reduction_param.axis 4"):
        make_data_net('layer { name: "r" type: "Reduction" bottom: "data" top: "r" reduction_param { axis: 4 } }',
                      SHAPE)
