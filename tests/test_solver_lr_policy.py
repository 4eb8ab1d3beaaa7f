"""Learning-rate policies, solver checks and C++-style number formatting, against hand values and Caffe's logs."""

from __future__ import annotations

import io
import json
import math
import re

import numpy as np
import pytest

from caffecompat import glog
from caffecompat.errors import CaffeCompatError
from caffecompat.formats import protofile
from caffecompat.proto import caffe_pb2
from caffecompat.solver.fmt import caffe_float
from caffecompat.solver.lr_policy import LrSchedule, learning_rate, resolve_solver_type, validate_solver


def solver(**fields) -> caffe_pb2.SolverParameter:
    return caffe_pb2.SolverParameter(**fields)


def f32(x: float) -> float:
    return float(np.float32(x))


@pytest.fixture
def log_lines():
    stream = io.StringIO()
    glog.set_stream(stream)
    yield stream
    glog.set_stream(None)


# ---- caffe_float ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, text",
    [
        (0.01, "0.01"),
        (np.float32(0.01), "0.01"),  # 0.0099999998 as a float, printed with 6 digits
        (1e-05, "1e-05"),
        (np.float32(1e-05), "1e-05"),
        (0.000948517, "0.000948517"),
        (8.83883e-05, "8.83883e-05"),
        (2.32056, "2.32056"),
        (1.0, "1"),
        (100000.0, "100000"),
        (1e6, "1e+06"),
        (1234567.0, "1.23457e+06"),
        (0.0, "0"),
        (-0.0, "-0"),
        (-0.5, "-0.5"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (math.nan, "nan"),
        (-math.nan, "-nan"),
    ],
)
def test_caffe_float(value, text):
    assert caffe_float(value) == text


def test_caffe_float_on_golden_log_numbers(golden):
    # Every number Caffe printed for lr and gradient clipping reads back and prints the same.
    pattern = re.compile(r"(?:lr = |L2 norm |> |scale factor )([-+0-9.e]+)")
    seen = 0
    for log in sorted((golden / "train/logs").glob("*.log")):
        for text in pattern.findall(log.read_text()):
            assert caffe_float(np.float32(float(text))) == text, (log.name, text)
            seen += 1
    assert seen > 200


# ---- policies, hand-computed ----------------------------------------------------------------------


def test_fixed():
    p = solver(lr_policy="fixed", base_lr=0.01)
    assert learning_rate(p, 0) == learning_rate(p, 1000) == f32(0.01)


def test_step():
    p = solver(lr_policy="step", base_lr=0.1, gamma=0.5, stepsize=3)
    s = LrSchedule(p)
    # floor(it / 3) steps of x0.5: 0.1 for 0..2, 0.05 for 3..5, 0.025 for 6..8
    rates = [s.rate(i) for i in range(9)]
    assert rates == [f32(0.1)] * 3 + [f32(0.05)] * 3 + [f32(0.025)] * 3
    assert s.current_step == 2
    assert learning_rate(p, 7) == f32(0.025)


def test_exp():
    p = solver(lr_policy="exp", base_lr=1.0, gamma=0.5)
    # 1 * 0.5^3
    assert learning_rate(p, 3) == 0.125
    assert learning_rate(p, 0) == 1.0


def test_inv():
    p = solver(lr_policy="inv", base_lr=1.0, gamma=1.0, power=2.0)
    # (1 + 1*1)^-2 = 1/4 ; (1 + 1*3)^-2 = 1/16
    assert learning_rate(p, 1) == 0.25
    assert learning_rate(p, 3) == 0.0625


def test_multistep(log_lines):
    p = solver(lr_policy="multistep", base_lr=1.0, gamma=0.1, stepvalue=[2, 5])
    s = LrSchedule(p)
    rates = [s.rate(i) for i in range(7)]
    # x0.1 from iteration 2, x0.1^2 from iteration 5: gamma is the float 0.1 (0.100000001),
    # squared in double and rounded to float, 0.0100000007 (not the float nearest 0.01)
    g2 = f32(f32(0.1) ** 2)
    assert g2 != f32(0.01)
    assert rates == [1.0, 1.0, f32(0.1), f32(0.1), f32(0.1), g2, g2]
    assert s.current_step == 2
    assert [learning_rate(p, i) for i in range(7)] == rates
    text = log_lines.getvalue()
    assert "sgd_solver.cpp:50] MultiStep Status: Iteration 2, step = 1" in text
    assert "sgd_solver.cpp:50] MultiStep Status: Iteration 5, step = 2" in text


def test_multistep_advances_one_step_per_call():
    # Caffe's multistep moves current_step at most once per iteration: a schedule at step 0
    # that first sees iteration 10 (both stepvalues passed) needs two iterations to catch up.
    p = solver(lr_policy="multistep", base_lr=1.0, gamma=0.1, stepvalue=[2, 5])
    s = LrSchedule(p, current_step=0)
    assert s.rate(10) == f32(0.1)
    assert s.rate(11) == f32(f32(0.1) ** 2)
    # Two stepvalues on consecutive iterations step twice; the same stepvalue twice steps on the next one.
    q = solver(lr_policy="multistep", base_lr=1.0, gamma=0.5, stepvalue=[3, 3])
    assert [learning_rate(q, i) for i in range(6)] == [1, 1, 1, 0.5, 0.25, 0.25]


def test_multistep_resumes_from_current_step():
    p = solver(lr_policy="multistep", base_lr=1.0, gamma=0.5, stepvalue=[2, 5])
    s = LrSchedule(p, current_step=1)
    assert s.rate(3) == 0.5
    assert s.rate(5) == 0.25


def test_poly():
    p = solver(lr_policy="poly", base_lr=1.0, power=2.0, max_iter=4)
    # (1 - 2/4)^2 = 0.25 ; (1 - 3/4)^2 = 0.0625
    assert learning_rate(p, 2) == 0.25
    assert learning_rate(p, 3) == 0.0625
    assert learning_rate(p, 4) == 0.0


def test_poly_is_computed_in_float():
    # Caffe's rmsprop_poly log prints 8.83883e-05 at iteration 21: float pow(0.125f, 1.5f)
    # times float base_lr; the same in double rounds to 8.83884e-05.
    p = solver(lr_policy="poly", base_lr=0.002, power=1.5, max_iter=24)
    assert caffe_float(learning_rate(p, 21)) == "8.83883e-05"


def test_sigmoid():
    p = solver(lr_policy="sigmoid", base_lr=1.0, gamma=1.0, stepsize=2)
    # 1 / (1 + e^0) = 0.5 ; 1 / (1 + e^-1) = 0.7310585786...
    assert learning_rate(p, 2) == 0.5
    assert learning_rate(p, 3) == pytest.approx(0.7310585786300049, rel=1e-7)
    # Far before stepsize the exponent overflows float: the rate is 0, as in C++.
    far = solver(lr_policy="sigmoid", base_lr=0.1, gamma=0.5, stepsize=100000)
    assert learning_rate(far, 0) == 0.0


# ---- Caffe's checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"lr_policy": "cosine"}, ['unknown learning rate policy', '"cosine"', "fixed, step"]),
        ({}, ["unknown learning rate policy", "not set"]),
        ({"lr_policy": "step", "gamma": 0.1}, ["stepsize > 0", "set stepsize"]),
        ({"lr_policy": "sigmoid", "gamma": 0.1}, ["stepsize > 0"]),
        ({"lr_policy": "sigmoid", "gamma": -0.1, "stepsize": 5}, ["gamma must be >= 0", "sigmoid"]),
        ({"lr_policy": "exp", "gamma": -0.5}, ["gamma must be >= 0", "exp"]),
        ({"lr_policy": "multistep", "gamma": -1, "stepvalue": [3]}, ["gamma must be >= 0"]),
    ],
)
def test_lr_policy_errors(fields, words):
    p = solver(base_lr=0.1, **fields)
    for call in (lambda: learning_rate(p, 0), lambda: LrSchedule(p, where="s.prototxt"), lambda: validate_solver(p)):
        with pytest.raises(CaffeCompatError) as err:
            call()
        for w in words:
            assert w in str(err.value)


def test_lr_schedule_error_names_the_file():
    with pytest.raises(CaffeCompatError, match=r"^my_solver.prototxt: .*stepsize"):
        LrSchedule(solver(lr_policy="step", gamma=0.1), where="my_solver.prototxt")


def valid(**fields) -> caffe_pb2.SolverParameter:
    base = {"lr_policy": "fixed", "base_lr": 0.01}
    base.update(fields)
    return solver(**base)


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"type": "RMSProp", "momentum": 0.9}, ["momentum cannot be used with RMSProp", "remove momentum"]),
        ({"type": "AdaGrad", "momentum": 0.9}, ["momentum cannot be used with AdaGrad"]),
        ({"type": "RMSProp", "rms_decay": 1.0}, ["rms_decay should lie between 0 and 1"]),
        ({"type": "RMSProp", "rms_decay": -0.1}, ["rms_decay"]),
        ({"type": "Adamax"}, ['unknown solver type "Adamax"', "SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam"]),
        ({"type": "sgd"}, ['unknown solver type "sgd"']),
        ({"type": "SGD", "solver_type": caffe_pb2.SolverParameter.ADAM}, ["solver_type", "type", "keep only"]),
        ({"weight_decay": 0.1, "regularization_type": "L3"}, ['unknown regularization type "L3"', '"L2" or "L1"']),
        ({"average_loss": 0}, ["average_loss must be >= 1"]),
        ({"iter_size": 0}, ["iter_size must be >= 1"]),
    ],
)
def test_validate_solver_errors(fields, words):
    with pytest.raises(CaffeCompatError) as err:
        validate_solver(valid(**fields), where="solver.prototxt")
    message = str(err.value)
    assert message.startswith("solver.prototxt: ")
    assert "\n" not in message
    for w in words:
        assert w in message


def test_validate_solver_accepts_caffe_valid_solvers():
    for t in ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"):
        validate_solver(valid(type=t))
    # An unknown regularization type is only fatal in Caffe once there is weight decay.
    validate_solver(valid(regularization_type="L3"))
    validate_solver(valid(type="Adam", momentum=0.9))


def test_hdf5_snapshots_are_accepted():
    # snapshot_format: HDF5 is written as Caffe writes it (tests/test_solver_resume.py).
    validate_solver(valid(snapshot_format=caffe_pb2.SolverParameter.HDF5))


def test_legacy_solver_type_enum():
    assert resolve_solver_type(solver(solver_type=caffe_pb2.SolverParameter.NESTEROV)) == "Nesterov"
    assert resolve_solver_type(solver(solver_type=caffe_pb2.SolverParameter.ADAM)) == "Adam"
    assert resolve_solver_type(solver()) == "SGD"
    with pytest.raises(CaffeCompatError, match="momentum cannot be used with RMSProp"):
        validate_solver(valid(solver_type=caffe_pb2.SolverParameter.RMSPROP, momentum=0.9))


# ---- Caffe's logs --------------------------------------------------------------------------------


def _golden_runs(golden):
    for log in sorted((golden / "train/logs").glob("*.log")):
        if not log.name.startswith("test_"):
            yield log.stem, log, golden / f"train/solver_{log.stem}.prototxt"


def test_golden_lr_schedule_matches_every_logged_iteration(golden, log_lines):
    runs = 0
    for name, log, solver_file in _golden_runs(golden):
        param = protofile.read_text(solver_file, caffe_pb2.SolverParameter, "solver")
        validate_solver(param, where=str(solver_file))
        logged = re.findall(r"sgd_solver\.cpp:112\] Iteration (\d+), lr = (\S+)", log.read_text())
        assert logged, name
        first = int(logged[0][0])
        # The resumed run restores current_step from the iteration-12 snapshot.
        schedule = LrSchedule(param, current_step=1 if first == 12 else 0)
        for it, text in logged:
            assert caffe_float(schedule.rate(int(it))) == text, (name, it)
            if first == 0:
                assert caffe_float(learning_rate(param, int(it))) == text, (name, it)
        # The parsed JSON has the same lr per iteration.
        parsed = json.loads(log.with_suffix(".json").read_text())
        by_iter = dict(logged)
        with_lr = [row for row in parsed["train"] if "lr" in row]
        assert len(with_lr) == len(logged)
        for row in with_lr:
            assert row["lr"] == float(by_iter[str(row["iter"])]), (name, row["iter"])
        runs += 1
    assert runs == 11  # the ten first-round runs and deconv_sgd
    # The nesterov run's multistep changes are logged as Caffe logs them.
    assert "MultiStep Status: Iteration 5, step = 1" in log_lines.getvalue()
    assert "MultiStep Status: Iteration 13, step = 2" in log_lines.getvalue()
