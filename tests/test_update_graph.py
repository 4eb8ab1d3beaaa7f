"""The ONNX ApplyUpdate graph (runtime.update) against the numpy reference rules (solver.updates).

Every solver type, with and without clipping, L1 and L2, iter_size, lr_mult 0 and
decay_mult 0, over three iterations, written in place into the same buffers.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from caffecompat.proto import caffe_pb2
from caffecompat.runtime.update import UpdateParam, Updater
from caffecompat.solver.updates import Param, apply_update, make_history

TYPES = ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"]


@pytest.mark.parametrize("solver_type", TYPES)
@pytest.mark.parametrize("clip, regularization, iter_size", [(-1, "L2", 1), (0.5, "L1", 2), (100.0, "L2", 3)])
def test_update_graph_equals_numpy_rules(solver_type, clip, regularization, iter_size):
    rng = np.random.default_rng(0)
    solver = caffe_pb2.SolverParameter(type=solver_type, momentum=0.9 if solver_type != "AdaGrad" else 0,
                                       momentum2=0.999, delta=1e-6, weight_decay=5e-4, clip_gradients=clip,
                                       regularization_type=regularization, iter_size=iter_size, rms_decay=0.95,
                                       display=0)
    shapes = [(5, 4), (4,), (3,)]
    mults = [(1.0, 1.0), (2.0, 0.0), (0.0, 1.0)]
    params = [UpdateParam(f"p{i}", s, lr, dm) for i, (s, (lr, dm)) in enumerate(zip(shapes, mults))]
    values = {p.name: rng.normal(size=p.shape).astype(np.float32) for p in params}
    diffs = {p.name: rng.normal(size=p.shape).astype(np.float32) for p in params}
    history = make_history(solver_type, shapes)
    for blobs in history:
        for h in blobs:
            h[...] = rng.uniform(0.1, 1.0, size=h.shape)
    ref_values = {k: v.copy() for k, v in values.items()}
    ref_history = [[h.copy() for h in blobs] for blobs in history]
    ort_values = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in values.items()}
    ort_diffs = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in diffs.items()}
    ort_history = {p.name: [ort.OrtValue.ortvalue_from_numpy(h) for h in blobs] for p, blobs in zip(params, history)}
    updater = Updater(solver, solver_type, params, ["CPUExecutionProvider"])
    for it in range(3):
        norm = updater.run(ort_values, ort_diffs, ort_history, 0.01 * (it + 1), it)
        assert (norm is None) == (clip < 0)
        ref = [Param(p.name, ref_values[p.name], diffs[p.name].copy(), p.lr_mult, p.decay_mult, ref_history[i])
               for i, p in enumerate(params)]
        apply_update(solver, ref, 0.01 * (it + 1), it)
    for k in values:
        np.testing.assert_allclose(values[k], ref_values[k], rtol=1e-6, atol=1e-7)
    for mine, theirs in zip(history, ref_history):
        for a, b in zip(mine, theirs):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # The frozen parameter (lr_mult 0) never moves.
    assert np.array_equal(values["p2"], ref_values["p2"])
