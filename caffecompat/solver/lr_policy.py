"""Learning-rate policies and solver-parameter checks, as Caffe's SGDSolver has them.

`LrSchedule(param).rate(it)` is SGDSolver::GetLearningRate: it keeps Caffe's
`current_step` (the step count the "step" and "multistep" policies reach, saved
in and restored from a .solverstate). `learning_rate(param, it)` is the same
rate for a run that started at iteration 0, with no state to carry.

Caffe computes the rate in float (Dtype) with C++'s overloads: pow(float, int)
(step, exp, multistep) is evaluated in double and rounded to float, while
pow(float, float) and exp(float) (inv, poly, sigmoid) are the float functions.
We do the same, so the rates (and the `lr = ...` log lines) match Caffe's
bit for bit; e.g. poly at 21 of 24 iterations prints 8.83883e-05, not ...84e-05.

`validate_solver(param)` gathers the checks Caffe makes while building the
solver and at the first learning-rate computation, so a bad solver fails
before any work with a message naming the field and the fix.
"""

from __future__ import annotations

import math

import numpy as np

from caffecompat import glog
from caffecompat.errors import CaffeCompatError
from caffecompat.proto import caffe_pb2

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")

# UpgradeSolverType: the legacy solver_type enum names the same solvers as `type`.
_LEGACY_TYPES = {
    caffe_pb2.SolverParameter.SGD: "SGD",
    caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
    caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad",
    caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
    caffe_pb2.SolverParameter.ADADELTA: "AdaDelta",
    caffe_pb2.SolverParameter.ADAM: "Adam",
}


def _f32(x: float) -> float:
    """`x` rounded to float32 (Caffe's Dtype), as a Python float; out of range gives +-inf."""
    with np.errstate(over="ignore"):
        return float(np.float32(x))


def _pow(x: float, y: float) -> float:
    """C pow() in double, giving inf or NaN where Python's math.pow would raise."""
    try:
        return math.pow(x, y)
    except OverflowError:
        return math.inf
    except ValueError:  # negative base, fractional exponent
        return math.nan


def _powf(x: float, y: float) -> float:
    """C++ pow(float, float): the float overload (libm powf), rounded once to float32."""
    return _f32(_pow(_f32(x), _f32(y)))


def _expf(x: float) -> float:
    """C++ exp(float): the float overload (libm expf), rounded once to float32."""
    try:
        return _f32(math.exp(_f32(x)))
    except OverflowError:
        return math.inf


def resolve_solver_type(param: caffe_pb2.SolverParameter, where: str = "solver") -> str:
    """The solver type name ("SGD", "Adam", ...), the legacy `solver_type` enum upgraded."""
    # UpgradeSolverType: the enum and the string field may not both be given.
    if param.HasField("solver_type") and param.HasField("type"):
        raise CaffeCompatError(
            f"{where}: both the old solver_type field (enum) and the new type field (string) are set; "
            f'keep only type: "{param.type}"'
        )
    if param.HasField("solver_type"):
        return _LEGACY_TYPES[param.solver_type]
    return param.type


def _need_gamma(param: caffe_pb2.SolverParameter, where: str) -> None:
    # GetLearningRate: CHECK_GE(gamma, 0) for step, exp, inv, multistep and sigmoid.
    if param.gamma < 0:
        raise CaffeCompatError(
            f'{where}: gamma must be >= 0 for lr_policy "{param.lr_policy}" (got {param.gamma:g}); '
            "set a non-negative gamma"
        )


def _need_stepsize(param: caffe_pb2.SolverParameter, where: str) -> None:
    # GetLearningRate: CHECK_GT(stepsize, 0) for step and sigmoid.
    if param.stepsize <= 0:
        raise CaffeCompatError(
            f'{where}: lr_policy "{param.lr_policy}" needs stepsize > 0 (got {param.stepsize}); '
            "set stepsize in the solver"
        )


def check_lr_policy(param: caffe_pb2.SolverParameter, where: str = "solver") -> None:
    """Caffe's checks on the lr_policy and the fields it uses (CaffeCompatError if one fails)."""
    policy = param.lr_policy
    if policy not in POLICIES:
        # GetLearningRate: LOG(FATAL) "Unknown learning rate policy".
        shown = f'"{policy}"' if policy else "not set"
        raise CaffeCompatError(
            f"{where}: unknown learning rate policy (lr_policy {shown}); "
            f"use one of {', '.join(POLICIES)}"
        )
    if policy in ("step", "sigmoid"):
        _need_stepsize(param, where)
    if policy != "fixed" and policy != "poly":
        _need_gamma(param, where)


def _fixed(param: caffe_pb2.SolverParameter) -> float:
    # fixed: base_lr.
    return _f32(param.base_lr)


def _step(param: caffe_pb2.SolverParameter, step: int) -> float:
    # step and multistep: base_lr * gamma ^ current_step, pow(float, int) in double.
    return _f32(param.base_lr * _pow(param.gamma, step))


def _exp(param: caffe_pb2.SolverParameter, iteration: int) -> float:
    # exp: base_lr * gamma ^ iter, pow(float, int) in double.
    return _f32(param.base_lr * _pow(param.gamma, iteration))


def _inv(param: caffe_pb2.SolverParameter, iteration: int) -> float:
    # inv: base_lr * (1 + gamma * iter) ^ (-power), all in float.
    base = np.float32(1) + np.float32(param.gamma) * np.float32(iteration)
    return _f32(np.float32(param.base_lr) * np.float32(_powf(base, -param.power)))


def _poly(param: caffe_pb2.SolverParameter, iteration: int) -> float:
    # poly: base_lr * (1 - iter / max_iter) ^ power, all in float.
    base = np.float32(1) - np.float32(iteration) / np.float32(param.max_iter)
    return _f32(np.float32(param.base_lr) * np.float32(_powf(base, param.power)))


def _sigmoid(param: caffe_pb2.SolverParameter, iteration: int) -> float:
    # sigmoid: base_lr / (1 + exp(-gamma * (iter - stepsize))), all in float.
    z = -np.float32(param.gamma) * (np.float32(iteration) - np.float32(param.stepsize))
    s = np.float32(1) / (np.float32(1) + np.float32(_expf(z)))
    return _f32(np.float32(param.base_lr) * s)


def _multistep_advance(param: caffe_pb2.SolverParameter, iteration: int, current_step: int) -> int:
    # multistep: at most one step per call, once iter reaches stepvalue[current_step].
    if current_step < len(param.stepvalue) and iteration >= param.stepvalue[current_step]:
        return current_step + 1
    return current_step


class LrSchedule:
    """SGDSolver::GetLearningRate with its `current_step` state.

    Call `rate(it)` once per iteration, in order, as Caffe does; after resuming,
    set `current_step` from the .solverstate first.
    """

    def __init__(self, param: caffe_pb2.SolverParameter, current_step: int = 0, where: str = "solver"):
        check_lr_policy(param, where)
        self.param = param
        self.current_step = current_step

    def rate(self, iteration: int) -> float:
        """The learning rate at `iteration` (a float32 value), updating `current_step`."""
        # Float overflow or 0/0 gives inf/NaN silently, as in C++.
        with np.errstate(all="ignore"):
            return self._rate(iteration)

    def _rate(self, iteration: int) -> float:
        p = self.param
        policy = p.lr_policy
        if policy == "fixed":
            return _fixed(p)
        if policy == "step":
            # step: current_step is recomputed as iter / stepsize every iteration.
            self.current_step = iteration // p.stepsize
            return _step(p, self.current_step)
        if policy == "multistep":
            step = _multistep_advance(p, iteration, self.current_step)
            if step != self.current_step:
                self.current_step = step
                glog.info("sgd_solver.cpp:50", f"MultiStep Status: Iteration {iteration}, step = {step}")
            return _step(p, self.current_step)
        if policy == "exp":
            return _exp(p, iteration)
        if policy == "inv":
            return _inv(p, iteration)
        if policy == "poly":
            return _poly(p, iteration)
        return _sigmoid(p, iteration)


def _multistep_from_start(param: caffe_pb2.SolverParameter, iteration: int) -> int:
    """current_step after calling GetLearningRate at every iteration 0..`iteration`."""
    step, last = 0, -1
    while step < len(param.stepvalue):
        # The next step happens at the first later iteration that reaches the next stepvalue.
        at = max(last + 1, param.stepvalue[step])
        if at > iteration:
            break
        step, last = step + 1, at
    return step


def learning_rate(param: caffe_pb2.SolverParameter, iteration: int) -> float:
    """The rate Caffe uses at `iteration` in a run started at iteration 0 (no logging)."""
    check_lr_policy(param)
    if param.lr_policy == "multistep":
        return _step(param, _multistep_from_start(param, iteration))
    if param.lr_policy == "step":
        return _step(param, iteration // param.stepsize)
    return LrSchedule(param).rate(iteration)


def validate_solver(param: caffe_pb2.SolverParameter, where: str = "solver") -> None:
    """Caffe's checks on a SolverParameter before solving; CaffeCompatError names the field and fix."""
    solver_type = resolve_solver_type(param, where)
    if solver_type not in SOLVER_TYPES:
        # SolverRegistry::CreateSolver: "Unknown solver type".
        raise CaffeCompatError(
            f'{where}: unknown solver type "{solver_type}" (type field); '
            f"use one of {', '.join(SOLVER_TYPES)}"
        )
    # Solver::Init: CHECK_GE(average_loss, 1).
    if param.average_loss < 1:
        raise CaffeCompatError(
            f"{where}: average_loss must be >= 1 (got {param.average_loss}); set it to 1 or more"
        )
    # Solver::Step divides the loss by iter_size (Caffe does not check it; 0 would give NaN).
    if param.iter_size < 1:
        raise CaffeCompatError(
            f"{where}: iter_size must be >= 1 (got {param.iter_size}); set it to 1 or more"
        )
    # AdaGradSolver / RMSPropSolver constructor_sanity_check: no momentum.
    if solver_type in ("AdaGrad", "RMSProp") and param.momentum != 0:
        raise CaffeCompatError(
            f"{where}: momentum cannot be used with {solver_type} (got momentum {param.momentum:g}); "
            "remove momentum from the solver"
        )
    # RMSPropSolver constructor_sanity_check: 0 <= rms_decay < 1.
    if solver_type == "RMSProp" and not 0 <= param.rms_decay < 1:
        raise CaffeCompatError(
            f"{where}: rms_decay should lie between 0 and 1 (got {param.rms_decay:g}); set 0 <= rms_decay < 1"
        )
    # SGDSolver::Regularize: LOG(FATAL) on an unknown type, reached only when there is weight decay.
    if param.weight_decay != 0 and param.regularization_type not in ("L1", "L2"):
        raise CaffeCompatError(
            f'{where}: unknown regularization type "{param.regularization_type}" '
            '(regularization_type field); use "L2" or "L1"'
        )
    check_lr_policy(param, where)
