"""The solver's arithmetic, as Caffe's SGDSolver family does it on the CPU.

- `lr_policy`: the learning-rate schedules (SGDSolver::GetLearningRate) and the
  checks Caffe makes on a SolverParameter before and while solving.
- `updates`: one iteration's parameter update (SGDSolver::ApplyUpdate): gradient
  clipping, iter_size normalization, L1/L2 regularization, then the update rule
  of SGD, Nesterov, AdaGrad, RMSProp, AdaDelta or Adam, all in float32.
- `solverstate`: the .solverstate snapshot (iteration, learned net, history blobs,
  current step) read and written in Caffe's binary format.
- `fmt`: numbers printed the way C++ iostreams print them, for log lines.

Each function reproduces one Caffe rule; the training loop composes them.
"""

from caffecompat.solver.fmt import caffe_float
from caffecompat.solver.lr_policy import LrSchedule, learning_rate, resolve_solver_type, validate_solver
from caffecompat.solver.solverstate import (
    SolverStateData,
    check_history,
    flatten_history,
    read_solverstate,
    split_history,
    write_solverstate,
)
from caffecompat.solver.updates import Param, apply_update, make_history

__all__ = [
    "LrSchedule",
    "Param",
    "SolverStateData",
    "apply_update",
    "caffe_float",
    "check_history",
    "flatten_history",
    "learning_rate",
    "make_history",
    "read_solverstate",
    "resolve_solver_type",
    "split_history",
    "validate_solver",
    "write_solverstate",
]
