"""Solver update rules, one hand-computed step (or two) each, in Caffe's order of operations."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from caffecompat import glog
from caffecompat.errors import CaffeCompatError
from caffecompat.proto import caffe_pb2
from caffecompat.solver.updates import Param, adam_correction, apply_update, make_history

RTOL = 1e-6


def solver(**fields) -> caffe_pb2.SolverParameter:
    return caffe_pb2.SolverParameter(**fields)


def param(data, grad, lr_mult=1.0, decay_mult=1.0, history=None, solver_type="SGD", name="w") -> Param:
    data = np.asarray(data, dtype=np.float32)
    hist = make_history(solver_type, [data.shape])[0] if history is None else [
        np.asarray(h, dtype=np.float32) for h in history
    ]
    return Param(name, data, np.asarray(grad, dtype=np.float32), lr_mult, decay_mult, hist)


def close(actual, expected):
    np.testing.assert_allclose(actual, np.asarray(expected, dtype=np.float64), rtol=RTOL, atol=1e-12)


@pytest.fixture
def log_lines():
    stream = io.StringIO()
    glog.set_stream(stream)
    yield stream
    glog.set_stream(None)


# ---- history ------------------------------------------------------------------------------------


def test_make_history():
    shapes = [(2, 3), (4,)]
    for solver_type, n in [("SGD", 1), ("Nesterov", 1), ("AdaGrad", 1), ("RMSProp", 1), ("AdaDelta", 2), ("Adam", 2)]:
        history = make_history(solver_type, shapes)
        assert [len(h) for h in history] == [n, n]
        assert [h.shape for h in history[0]] == [(2, 3)] * n
        assert all(h.dtype == np.float32 and not h.any() for hs in history for h in hs)
    with pytest.raises(CaffeCompatError, match="unknown solver type"):
        make_history("Adamax", shapes)


# ---- SGD, regularization, normalization, clipping -----------------------------------------------


def test_sgd_momentum_two_steps():
    s = solver(type="SGD", momentum=0.9)
    p = param([1.0, -2.0], [0.5, 0.25])
    apply_update(s, [p], 0.1, 0)
    # h = 0.1 * g + 0.9 * 0 = [0.05, 0.025]; w = [1 - 0.05, -2 - 0.025]
    close(p.history[0], [0.05, 0.025])
    close(p.grad, [0.05, 0.025])
    close(p.data, [0.95, -2.025])
    p.grad[:] = [0.5, 0.25]
    apply_update(s, [p], 0.1, 1)
    # h = 0.1 * g + 0.9 * h = [0.05 + 0.045, 0.025 + 0.0225]
    close(p.history[0], [0.095, 0.0475])
    close(p.data, [0.95 - 0.095, -2.025 - 0.0475])
    assert p.data.dtype == np.float32 and p.history[0].dtype == np.float32


def test_lr_mult_scales_the_rate():
    p = param([1.0], [0.5], lr_mult=2.0)
    apply_update(solver(type="SGD"), [p], 0.1, 0)
    # local rate 0.1 * 2 = 0.2: w = 1 - 0.2 * 0.5
    close(p.data, [0.9])


def test_l2_decay_uses_decay_mult():
    p = param([1.0, -2.0], [0.5, 0.25], decay_mult=0.5)
    apply_update(solver(type="SGD", weight_decay=0.1), [p], 1.0, 0)
    # local decay 0.1 * 0.5 = 0.05: g = [0.5 + 0.05 * 1, 0.25 + 0.05 * -2] = [0.55, 0.15]
    close(p.data, [1.0 - 0.55, -2.0 - 0.15])


def test_l1_decay_adds_sign():
    p = param([1.0, -2.0, 0.0], [0.5, 0.25, 0.25], decay_mult=0.5)
    apply_update(solver(type="SGD", weight_decay=0.1, regularization_type="L1"), [p], 1.0, 0)
    # g = [0.5 + 0.05, 0.25 - 0.05, 0.25 + 0] (sign(0) = 0)
    close(p.data, [1.0 - 0.55, -2.0 - 0.2, 0.0 - 0.25])


def test_zero_decay_mult_skips_regularization():
    p = param([3.0], [0.5], decay_mult=0.0)
    apply_update(solver(type="SGD", weight_decay=0.1, regularization_type="bogus"), [p], 1.0, 0)
    close(p.data, [2.5])


def test_iter_size_normalizes():
    p = param([1.0], [0.5])
    apply_update(solver(type="SGD", iter_size=2), [p], 1.0, 0)
    # accumulated 0.5 over 2 passes: g = 0.25
    close(p.data, [0.75])


def test_clip_gradients_over_all_params(log_lines):
    a, b = param([10.0], [3.0], name="a"), param([10.0], [4.0], name="b")
    apply_update(solver(type="SGD", clip_gradients=1.0), [a, b], 1.0, 0)
    # global norm sqrt(3^2 + 4^2) = 5 > 1: scale 1/5 -> g = [0.6], [0.8]
    close(a.data, [9.4])
    close(b.data, [9.2])
    assert log_lines.getvalue().rstrip().endswith(
        "sgd_solver.cpp:99] Gradient clipping: scaling down gradients (L2 norm 5 > 1) by scale factor 0.2"
    )


def test_clip_happens_before_normalization():
    a, b = param([0.0], [3.0]), param([0.0], [4.0])
    apply_update(solver(type="SGD", clip_gradients=4.0, iter_size=2), [a, b], 1.0, 0)
    # clip first: norm 5 > 4, scale 0.8 -> [2.4], [3.2]; then / 2 -> [1.2], [1.6]
    # (normalizing first would give norm 2.5 < 4 and no clipping: [1.5], [2.0])
    close(a.data, [-1.2])
    close(b.data, [-1.6])


def test_no_clip_under_the_threshold(log_lines):
    a = param([0.0], [3.0])
    apply_update(solver(type="SGD", clip_gradients=3.0), [a], 1.0, 0)
    close(a.data, [-3.0])
    assert "Gradient clipping" not in log_lines.getvalue()


def test_frozen_param_is_kept_unchanged():
    p = param([1.0, 2.0], [0.0, 0.0], lr_mult=0.0)
    apply_update(solver(type="SGD", momentum=0.9, weight_decay=0.1), [p], 0.1, 0)
    # decay is added to the gradient, but the local rate is 0: no history, no step
    close(p.data, [1.0, 2.0])
    close(p.history[0], [0.0, 0.0])


def test_updates_in_place_through_views():
    buffer = np.array([5.0, 1.0, -2.0, 5.0], dtype=np.float32)
    grad = np.array([0.5, 0.25], dtype=np.float32)
    p = Param("w", buffer[1:3], grad, 1.0, 1.0, [np.zeros(2, np.float32)])
    apply_update(solver(type="SGD"), [p], 0.1, 0)
    close(buffer, [5.0, 0.95, -2.025, 5.0])
    # Caffe leaves the update in the diff
    assert p.grad is grad
    close(grad, [0.05, 0.025])


def test_history_count_is_checked():
    p = param([1.0], [1.0], solver_type="SGD")
    with pytest.raises(CaffeCompatError, match="Adam needs 2 history blob"):
        apply_update(solver(type="Adam"), [p], 0.1, 0)


def test_iteration_lr_line(log_lines):
    p = param([1.0], [0.0])
    apply_update(solver(type="SGD", display=2), [p], 1e-05, 4)
    apply_update(solver(type="SGD", display=2), [p], 1e-05, 5)
    apply_update(solver(type="SGD"), [p], 0.01, 6)
    lines = log_lines.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("sgd_solver.cpp:112] Iteration 4, lr = 1e-05")


# ---- the other update rules ---------------------------------------------------------------------


def test_nesterov():
    p = param([1.0], [1.0], history=[[1.0]])
    apply_update(solver(type="Nesterov", momentum=0.5), [p], 0.1, 0)
    # h' = 0.1 * 1 + 0.5 * 1 = 0.6; update = 1.5 * 0.6 - 0.5 * 1 = 0.4
    close(p.history[0], [0.6])
    close(p.data, [0.6])


def test_adagrad_two_steps():
    p = param([1.0], [2.0], solver_type="AdaGrad")
    s = solver(type="AdaGrad", delta=0.5)
    apply_update(s, [p], 0.1, 0)
    # h = 0 + 2^2 = 4; update = 0.1 * 2 / (sqrt(4) + 0.5) = 0.08
    close(p.history[0], [4.0])
    close(p.data, [0.92])
    p.grad[:] = [1.0]
    apply_update(s, [p], 0.1, 1)
    # h = 4 + 1 = 5; update = 0.1 * 1 / (sqrt(5) + 0.5)
    close(p.history[0], [5.0])
    close(p.data, [0.92 - 0.1 / (math.sqrt(5.0) + 0.5)])


def test_rmsprop():
    p = param([1.0], [2.0], history=[[1.0]])
    apply_update(solver(type="RMSProp", rms_decay=0.9, delta=0.01), [p], 0.1, 0)
    # h = (1 - 0.9) * 4 + 0.9 * 1 = 1.3; update = 0.1 * 2 / (sqrt(1.3) + 0.01)
    close(p.history[0], [1.3])
    close(p.data, [1.0 - 0.2 / (math.sqrt(1.3) + 0.01)])


def test_adadelta():
    p = param([1.0], [2.0], history=[[0.0], [0.5]])
    apply_update(solver(type="AdaDelta", momentum=0.9, delta=0.01), [p], 0.5, 0)
    # g2 = 0.1 * 4 + 0.9 * 0 = 0.4
    # u = 2 * sqrt((0.5 + 0.01) / (0.4 + 0.01))
    # u2 = 0.1 * u^2 + 0.9 * 0.5   (the update before the learning rate)
    u = 2.0 * math.sqrt(0.51 / 0.41)
    close(p.history[0], [0.4])
    close(p.history[1], [0.1 * u * u + 0.45])
    close(p.data, [1.0 - 0.5 * u])


# Caffe's momentum fields are floats: 0.9 is 0.8999999761581421 and 0.999 is 0.9990000128746033,
# and 1 - beta2 loses most digits (0.00099998713), so the hand values use the float betas.
B1 = 0.8999999761581421
B2 = 0.9990000128746033


def test_adam_first_step():
    p = param([1.0], [0.5], solver_type="Adam")
    apply_update(solver(type="Adam", momentum=0.9, momentum2=0.999, delta=1e-8), [p], 0.01, 0)
    # t = 1: m = (1 - B1) * 0.5, v = (1 - B2) * 0.25
    # update = 0.01 * sqrt(1 - B2) / (1 - B1) * m / (sqrt(v) + 1e-8)
    m, v = (1 - B1) * 0.5, (1 - B2) * 0.25
    close(p.history[0], [m])
    close(p.history[1], [v])
    update = 0.01 * (math.sqrt(1 - B2) / (1 - B1)) * m / (math.sqrt(v) + 1e-8)
    close(p.data, [1.0 - update])
    # about lr * sign(g) on the first step
    assert update == pytest.approx(0.01, rel=1e-5)


def test_adam_uses_the_current_iteration():
    p = param([1.0], [0.5], history=[[0.2], [0.01]])
    apply_update(solver(type="Adam", momentum=0.9, momentum2=0.999, delta=0.001), [p], 0.01, 4)
    # t = 5: m = (1 - B1) * 0.5 + B1 * 0.2; v = (1 - B2) * 0.25 + B2 * 0.01
    # correction = sqrt(1 - B2^5) / (1 - B1^5); epsilon added outside the square root
    m = (1 - B1) * 0.5 + B1 * 0.2
    v = (1 - B2) * 0.25 + B2 * 0.01
    correction = math.sqrt(1 - B2**5) / (1 - B1**5)
    close(p.history[0], [m])
    close(p.history[1], [v])
    close(p.data, [1.0 - 0.01 * correction * m / (math.sqrt(v) + 0.001)])


def test_adam_correction_in_double_from_float_betas():
    b1, b2 = np.float32(0.9), np.float32(0.999)
    expected = math.sqrt(1 - float(b2) ** 3) / (1 - float(b1) ** 3)
    assert adam_correction(b1, b2, 2) == np.float32(expected)


def test_legacy_solver_type_enum_selects_the_rule():
    p = param([1.0], [2.0], solver_type="AdaGrad")
    apply_update(solver(solver_type=caffe_pb2.SolverParameter.ADAGRAD, delta=0.5), [p], 0.1, 0)
    close(p.data, [0.92])


@pytest.mark.parametrize("solver_type", ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"])
def test_sliced_parallel_update_equals_one_pass(monkeypatch, solver_type):
    """Large blobs are updated in slices on several threads, block by block; the result is bit-identical."""
    from caffecompat.solver import updates

    rng = np.random.default_rng(3)
    shape = (3, 700_001)  # > 2 slices of updates._SLICE elements
    solver = caffe_pb2.SolverParameter(type=solver_type, weight_decay=0.01, momentum=0.9 if solver_type not in (
        "AdaGrad", "RMSProp") else 0.0, delta=1e-6, rms_decay=0.9, momentum2=0.999)

    def run(slice_size: int, block: int) -> tuple[np.ndarray, list[np.ndarray]]:
        monkeypatch.setattr(updates, "_SLICE", slice_size)
        monkeypatch.setattr(updates, "_BLOCK", block)
        data = rng_data.copy()
        grad = rng_grad.copy()
        history = [h.copy() for h in rng_hist]
        updates.apply_update(solver, [Param("w", data, grad, 1.0, 1.0, history)], 0.01, 3)
        return data, history

    rng_data = rng.normal(size=shape).astype(np.float32)
    rng_grad = rng.normal(size=shape).astype(np.float32)
    rng_hist = [np.abs(rng.normal(size=shape)).astype(np.float32) for _ in range(updates.HISTORY_BLOBS[solver_type])]
    whole_data, whole_hist = run(1 << 40, 1 << 40)
    sliced_data, sliced_hist = run(1 << 18, 10_007)  # blocks that do not divide the slices
    assert np.array_equal(whole_data, sliced_data)
    for a, b in zip(whole_hist, sliced_hist):
        assert np.array_equal(a, b)
