"""One solver iteration's parameter update, in the order and float32 arithmetic of Caffe's CPU path.

`apply_update` is SGDSolver::ApplyUpdate after the rate is known: it logs
`Iteration N, lr = X`, clips the gradients over all learnable parameters, then
for each parameter normalizes by iter_size, adds weight decay, turns the
gradient into the update with the solver's rule (keeping Caffe's history
blobs), and finally subtracts the update from the weights (Net::Update).

Every step writes into the caller's arrays in place: `Param.data` may be a view
of an ONNX Runtime buffer, and `Param.grad` ends up holding the update, as
Caffe's diff does. Scalars are float32 and each Caffe BLAS call is one numpy
step in the same order, so results match Caffe's to float32 rounding.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from caffecompat import glog
from caffecompat.errors import CaffeCompatError
from caffecompat.proto import caffe_pb2
from caffecompat.runtime import providers
from caffecompat.solver.fmt import caffe_float
from caffecompat.solver.lr_policy import SOLVER_TYPES, resolve_solver_type

F32 = np.float32

# AdaDeltaPreSolve / AdamPreSolve: these solvers keep a second history blob per parameter.
HISTORY_BLOBS = {"SGD": 1, "Nesterov": 1, "AdaGrad": 1, "RMSProp": 1, "AdaDelta": 2, "Adam": 2}


@dataclass
class Param:
    """One learnable parameter blob, as in Caffe's Net::learnable_params()."""

    name: str
    data: np.ndarray  # float32, updated in place
    grad: np.ndarray  # float32 accumulated gradient; overwritten with the update
    lr_mult: float
    decay_mult: float
    history: list[np.ndarray] = field(default_factory=list)  # one blob, two for AdaDelta and Adam


def make_history(solver_type: str, shapes: Sequence[Sequence[int]]) -> list[list[np.ndarray]]:
    """Zeroed history blobs per parameter (SGDSolver::PreSolve and the AdaDelta/Adam additions)."""
    if solver_type not in HISTORY_BLOBS:
        raise CaffeCompatError(f'unknown solver type "{solver_type}"; use one of {", ".join(SOLVER_TYPES)}')
    n = HISTORY_BLOBS[solver_type]
    return [[np.zeros(tuple(s), dtype=np.float32) for _ in range(n)] for s in shapes]


class _Scratch(threading.local):
    """One reusable float32 buffer per thread for elementwise temporaries.

    Large nets (CaffeNet's fc6 has 38M weights) would otherwise allocate and
    page-fault a fresh temporary per operation per iteration.
    """

    def __init__(self) -> None:
        self._buffer = np.empty(0, dtype=np.float32)

    def like(self, a: np.ndarray) -> np.ndarray:
        """An uninitialized float32 array of a's shape (valid until this thread's next call)."""
        if self._buffer.size < a.size:
            self._buffer = np.empty(a.size, dtype=np.float32)
        return self._buffer[: a.size].reshape(a.shape)


_scratch = _Scratch()


def _axpby(a: np.float32, x: np.ndarray, b: np.float32, y: np.ndarray) -> None:
    """y = a * x + b * y in place (caffe_cpu_axpby)."""
    ax = np.multiply(x, a, out=_scratch.like(x))
    np.multiply(y, b, out=y)
    np.add(y, ax, out=y)


def _square(x: np.ndarray) -> np.ndarray:
    """x * x in the scratch buffer, valid until the next scratch use (_axpby may take it as its x)."""
    return np.square(x, out=_scratch.like(x))


def log_iteration_lr(solver: caffe_pb2.SolverParameter, iteration: int, rate: float) -> None:
    """SGDSolver::ApplyUpdate: log `Iteration N, lr = X` when display divides the iteration."""
    if solver.display and iteration % solver.display == 0:
        glog.info("sgd_solver.cpp:112", f"Iteration {iteration}, lr = {caffe_float(F32(rate))}")


def log_clip(l2norm: float, clip: float) -> float | None:
    """ClipGradients' log line when the diffs' L2 norm exceeds clip; returns the scale factor or None."""
    l2norm, clip32 = F32(l2norm), F32(clip)
    if clip32 < 0 or not l2norm > clip32:
        return None
    scale = F32(clip32 / l2norm)
    glog.info(
        "sgd_solver.cpp:99",
        f"Gradient clipping: scaling down gradients (L2 norm {caffe_float(l2norm)} > "
        f"{caffe_float(clip32)}) by scale factor {caffe_float(scale)}",
    )
    return float(scale)


def clip_gradients(params: Sequence[Param], clip: float, log: bool = True) -> float | None:
    """SGDSolver::ClipGradients; returns the diffs' L2 norm when clipping is on (None when off)."""
    # ClipGradients: a negative clip_gradients (the default -1) turns clipping off.
    if clip < 0:
        return None
    sumsq = F32(0)
    for p in params:
        g = p.grad.reshape(-1)
        sumsq = F32(sumsq + F32(np.dot(g, g)))
    l2norm = np.sqrt(sumsq)
    # ClipGradients: scale every diff by clip / ||g|| when the global L2 norm exceeds clip.
    if l2norm > F32(clip):
        scale = F32(F32(clip) / l2norm)
        for p in params:
            np.multiply(p.grad, scale, out=p.grad)
        if log:
            log_clip(l2norm, clip)
    return float(l2norm)


def normalize(p: Param, iter_size: int) -> None:
    """SGDSolver::Normalize: multiply the accumulated gradient by 1 / iter_size (in float)."""
    if iter_size == 1:
        return
    np.multiply(p.grad, F32(1) / F32(iter_size), out=p.grad)


def regularize(p: Param, weight_decay: float, regularization_type: str) -> None:
    """SGDSolver::Regularize with local decay = weight_decay * decay_mult."""
    local_decay = F32(weight_decay) * F32(p.decay_mult)
    if not local_decay:
        return
    if regularization_type == "L2":
        # Regularize: L2 adds decay * w to the gradient.
        p.grad += np.multiply(p.data, local_decay, out=_scratch.like(p.data))
    elif regularization_type == "L1":
        # Regularize: L1 adds decay * sign(w), with sign(0) = 0.
        sign = np.sign(p.data, out=_scratch.like(p.data))
        p.grad += np.multiply(sign, local_decay, out=sign)
    else:
        raise CaffeCompatError(f'unknown regularization type "{regularization_type}"; use "L2" or "L1"')


def sgd_update(p: Param, local_rate: np.float32, momentum: np.float32) -> None:
    """SGDSolver::ComputeUpdateValue: h = lr * g + momentum * h; the update is h."""
    h = p.history[0]
    _axpby(local_rate, p.grad, momentum, h)
    np.copyto(p.grad, h)


def nesterov_update(p: Param, local_rate: np.float32, momentum: np.float32) -> None:
    """NesterovSolver: h' = lr * g + momentum * h; the update is (1 + momentum) * h' - momentum * h."""
    h = p.history[0]
    previous = h.copy()
    _axpby(local_rate, p.grad, momentum, h)
    _axpby(F32(1) + momentum, h, -momentum, previous)
    np.copyto(p.grad, previous)


def adagrad_update(p: Param, local_rate: np.float32, delta: np.float32) -> None:
    """AdaGradSolver: h += g^2; the update is lr * g / (sqrt(h) + delta)."""
    h = p.history[0]
    h += _square(p.grad)
    denom = np.sqrt(h, out=_scratch.like(h))
    denom += delta
    np.divide(p.grad, denom, out=p.grad)
    np.multiply(p.grad, local_rate, out=p.grad)


def rmsprop_update(p: Param, local_rate: np.float32, delta: np.float32, rms_decay: np.float32) -> None:
    """RMSPropSolver: h = (1 - rms_decay) * g^2 + rms_decay * h; the update is lr * g / (sqrt(h) + delta)."""
    h = p.history[0]
    _axpby(F32(1) - rms_decay, _square(p.grad), rms_decay, h)
    denom = np.sqrt(h, out=_scratch.like(h))
    denom += delta
    np.divide(p.grad, denom, out=p.grad)
    np.multiply(p.grad, local_rate, out=p.grad)


def adadelta_update(p: Param, local_rate: np.float32, delta: np.float32, momentum: np.float32) -> None:
    """AdaDeltaSolver: g2 = m*g2 + (1-m)*g^2; u = g*sqrt((u2+delta)/(g2+delta)); u2 = m*u2 + (1-m)*u^2.

    The update is then lr * u.
    """
    g2, u2 = p.history
    one_minus = F32(1) - momentum
    _axpby(one_minus, np.square(p.grad), momentum, g2)
    # AdaDelta: delta is added to both histories, then their ratio is square-rooted.
    ratio = delta + u2
    np.divide(ratio, delta + g2, out=ratio)
    np.sqrt(ratio, out=ratio)
    np.multiply(p.grad, ratio, out=p.grad)
    # AdaDelta: the update history takes the update before the learning rate is applied.
    _axpby(one_minus, np.square(p.grad), momentum, u2)
    np.multiply(p.grad, local_rate, out=p.grad)


def adam_correction(beta1: np.float32, beta2: np.float32, iteration: int) -> np.float32:
    """Adam's bias correction sqrt(1 - beta2^t) / (1 - beta1^t), t = iteration + 1, in double then float."""
    t = iteration + 1
    return F32(np.sqrt(1.0 - float(beta2) ** t) / (1.0 - float(beta1) ** t))


def adam_update(
    p: Param,
    local_rate: np.float32,
    beta1: np.float32,
    beta2: np.float32,
    eps_hat: np.float32,
    iteration: int,
) -> None:
    """AdamSolver: m, v moving averages of g, g^2; the update is (lr * correction) * m / (sqrt(v) + eps)."""
    m, v = p.history
    _axpby(F32(1) - beta1, p.grad, beta1, m)
    _axpby(F32(1) - beta2, _square(p.grad), beta2, v)
    # Adam: epsilon is added to sqrt(v) (not inside it) and the correction folds into the rate.
    denom = np.sqrt(v, out=_scratch.like(v))
    denom += eps_hat
    np.divide(m, denom, out=p.grad)
    np.multiply(p.grad, local_rate * adam_correction(beta1, beta2, iteration), out=p.grad)


def compute_update_value(
    solver: caffe_pb2.SolverParameter, solver_type: str, p: Param, rate: float, iteration: int
) -> None:
    """The solver type's ComputeUpdateValue: turn p.grad into the update, with local rate = rate * lr_mult."""
    local_rate = F32(rate) * F32(p.lr_mult)
    momentum, delta = F32(solver.momentum), F32(solver.delta)
    if solver_type == "SGD":
        sgd_update(p, local_rate, momentum)
    elif solver_type == "Nesterov":
        nesterov_update(p, local_rate, momentum)
    elif solver_type == "AdaGrad":
        adagrad_update(p, local_rate, delta)
    elif solver_type == "RMSProp":
        rmsprop_update(p, local_rate, delta, F32(solver.rms_decay))
    elif solver_type == "AdaDelta":
        adadelta_update(p, local_rate, delta, momentum)
    elif solver_type == "Adam":
        adam_update(p, local_rate, momentum, F32(solver.momentum2), delta, iteration)
    else:
        raise CaffeCompatError(f'unknown solver type "{solver_type}"; use one of {", ".join(SOLVER_TYPES)}')


def apply_update(
    solver: caffe_pb2.SolverParameter, params: Sequence[Param], rate: float, iteration: int
) -> None:
    """SGDSolver::ApplyUpdate for iteration `iteration` (Caffe's iter_ before it is incremented)."""
    log_iteration_lr(solver, iteration, rate)
    update_values(solver, params, rate, iteration, log=True)


def update_values(solver: caffe_pb2.SolverParameter, params: Sequence[Param], rate: float, iteration: int,
                  log: bool = False) -> float | None:
    """ApplyUpdate's arithmetic: clip, then per parameter normalize, regularize, the rule, data -= update.

    Returns the diffs' L2 norm when clip_gradients is on (the caller logs the clipping line unless `log`).
    """
    solver_type = resolve_solver_type(solver)
    want = HISTORY_BLOBS.get(solver_type)
    for p in params:
        if want is not None and len(p.history) != want:
            raise CaffeCompatError(
                f"parameter {p.name}: {solver_type} needs {want} history blob(s), got {len(p.history)}"
            )
    norm = clip_gradients(params, solver.clip_gradients, log=log)

    def update(piece: Param) -> None:
        for p in _blocks(piece):
            normalize(p, solver.iter_size)
            regularize(p, solver.weight_decay, solver.regularization_type)
            compute_update_value(solver, solver_type, p, rate, iteration)
            # Net::Update: every learnable blob steps by data -= diff (frozen ones by zero).
            np.subtract(p.data, p.grad, out=p.data)

    # Everything after clipping is elementwise per parameter, so large blobs are
    # updated in slices on all cores, each slice block by block, with results
    # identical to one pass.
    pieces = [piece for p in params for piece in _slices(p)]
    if len(pieces) > len(params):
        list(_pool().map(update, pieces))
    else:
        for p in pieces:
            update(p)
    return norm


_SLICE = 1 << 20  # elements per slice: below this, threads cost more than they save
# Elements per block: a rule's steps run on one block of every array while it is in the core's
# cache, so each array crosses the memory bus once per iteration instead of once per step
# (CaffeNet's parameters on 2 cores: 42-48 ms instead of 63-94 ms), and the per-thread
# scratch stays block-sized (1 MB) instead of slice-sized (38 MB for fc6).
_BLOCK = 1 << 18
_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0


def _pool() -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE
    count = providers.threads()  # -threads / OMP_NUM_THREADS / the cores, as ONNX Runtime's sessions
    if _POOL is None or _POOL_SIZE != count:
        if _POOL is not None:
            _POOL.shutdown(wait=False)
        _POOL, _POOL_SIZE = ThreadPoolExecutor(max_workers=count, thread_name_prefix="caffecompat-update"), count
    return _POOL


def update_threads() -> int:
    """How many threads the update runs its slices on (`providers.threads()`, read when it runs)."""
    _pool()
    return _POOL_SIZE


def _slices(p: Param) -> list[Param]:
    """`p` cut into contiguous slices of about _SLICE elements (views of the same buffers)."""
    n = p.data.size
    count = min(n // _SLICE, providers.threads() * 2)
    if count <= 1:
        return [p]
    return _cut(p, [int(b) for b in np.linspace(0, n, count + 1)])


def _blocks(p: Param) -> list[Param]:
    """`p` cut into consecutive blocks of _BLOCK elements (views); `p` itself when it is one block."""
    n = p.data.size
    if n <= _BLOCK:
        return [p]
    return _cut(p, [*range(0, n, _BLOCK), n])


def _cut(p: Param, bounds: list[int]) -> list[Param]:
    """Views of `p` between consecutive `bounds` (flat element offsets); `p` itself if it is not contiguous."""
    flat = [p.data.reshape(-1), p.grad.reshape(-1), *(h.reshape(-1) for h in p.history)]
    if any(not np.may_share_memory(f, a) for f, a in zip(flat, [p.data, p.grad, *p.history])):
        return [p]  # not contiguous: reshape copied, so the pieces would not write back
    return [Param(p.name, flat[0][a:b], flat[1][a:b], p.lr_mult, p.decay_mult, [h[a:b] for h in flat[2:]])
            for a, b in zip(bounds[:-1], bounds[1:])]
