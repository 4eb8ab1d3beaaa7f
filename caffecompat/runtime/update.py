"""SGDSolver::ApplyUpdate as one ONNX graph, run in place on the runtime's parameter and history buffers.

The graph reads every learnable parameter, its accumulated diff and its
history blobs, and writes the new parameter and history values into the same
buffers (their outputs are bound to their inputs' OrtValues). That is safe
because every rule is elementwise and every node that reads an old value is
an ancestor of the node that writes the new one (the Nesterov rule keeps
momentum * h as a named temporary for that reason). The order of operations
is Caffe's: clip over all diffs, then per parameter normalize, regularize,
the solver type's ComputeUpdateValue, and Net::Update (data -= update).
`caffecompat.solver.updates` keeps the same rules in numpy as the tests' reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from caffecompat.errors import CaffeCompatError
from caffecompat.proto import caffe_pb2
from caffecompat.runtime.providers import inference_session, ort_call
from caffecompat.solver.updates import HISTORY_BLOBS, adam_correction

F32 = np.float32
RATE = "update/rate"  # the iteration's learning rate (scalar)
CORRECTION = "update/adam_correction"  # Adam's bias correction for this iteration (scalar)
L2NORM = "update/l2norm"  # the global L2 norm of the diffs, when clip_gradients is on


@dataclass
class UpdateParam:
    """One learnable blob as ApplyUpdate sees it."""

    name: str
    shape: tuple[int, ...]
    lr_mult: float
    decay_mult: float


def history_name(param: str, k: int) -> str:
    """The update graph's input (and output) name for history blob `k` of `param`."""
    return f"{param}#history{k}"


def diff_name(param: str) -> str:
    """The update graph's input name for `param`'s accumulated diff."""
    return f"{param}#diff"


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def op(self, op_type: str, inputs: list[str], output: str | None = None) -> str:
        self._n += 1
        out = output or f"update/t{self._n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"update/{op_type}#{self._n}"))
        return out

    def scalar(self, value: float) -> str:
        self._n += 1
        name = f"update/c{self._n}"
        self.inits.append(numpy_helper.from_array(F32(value), name))
        return name


def build_update_model(solver: caffe_pb2.SolverParameter, solver_type: str,
                       params: Sequence[UpdateParam]) -> onnx.ModelProto:
    """The ApplyUpdate graph for `params` (every learnable blob, in Net::learnable_params order)."""
    if solver_type not in HISTORY_BLOBS:
        raise CaffeCompatError(f'unknown solver type "{solver_type}"')
    if solver.regularization_type not in ("L1", "L2"):
        raise CaffeCompatError(f'unknown regularization type "{solver.regularization_type}"; use "L2" or "L1"')
    b = _Builder()
    inputs = [helper.make_tensor_value_info(RATE, TensorProto.FLOAT, [])]
    outputs = []
    if solver_type == "Adam":
        inputs.append(helper.make_tensor_value_info(CORRECTION, TensorProto.FLOAT, []))
    diffs = {p.name: diff_name(p.name) for p in params}

    scale = None
    if solver.clip_gradients >= 0 and params:
        # ClipGradients: when the L2 norm of all diffs exceeds clip_gradients, scale them by clip / norm.
        terms = [b.op("ReduceSumSquare", [diffs[p.name]]) for p in params]
        for node in b.nodes[-len(terms):]:
            node.attribute.append(helper.make_attribute("keepdims", 0))
        acc = terms[0]
        for t in terms[1:]:
            acc = b.op("Add", [acc, t])
        norm = b.op("Sqrt", [acc], L2NORM)
        outputs.append(helper.make_tensor_value_info(L2NORM, TensorProto.FLOAT, []))
        clip = b.scalar(solver.clip_gradients)
        scale = b.op("Where", [b.op("Greater", [norm, clip]), b.op("Div", [clip, norm]), b.scalar(1.0)])

    momentum, delta = F32(solver.momentum), F32(solver.delta)
    for p in params:
        w, g = p.name, diffs[p.name]
        hist = [history_name(p.name, k) for k in range(HISTORY_BLOBS[solver_type])]
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(p.shape)) for n in [w, g, *hist]]
        outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(p.shape)) for n in [w, *hist]]
        if scale is not None:
            g = b.op("Mul", [g, scale])
        if solver.iter_size > 1:
            # Normalize: the accumulated diff times 1 / iter_size.
            g = b.op("Mul", [g, b.scalar(F32(1) / F32(solver.iter_size))])
        local_decay = F32(solver.weight_decay) * F32(p.decay_mult)
        if local_decay:
            # Regularize: L2 adds decay * w, L1 adds decay * sign(w).
            reg = w if solver.regularization_type == "L2" else b.op("Sign", [w])
            g = b.op("Add", [g, b.op("Mul", [reg, b.scalar(local_decay)])])
        local_rate = b.op("Mul", [RATE, b.scalar(F32(p.lr_mult))])
        update = _rule(b, solver, solver_type, g, hist, local_rate, momentum, delta)
        # Net::Update: data -= update, written over the parameter's own buffer.
        b.op("Sub", [w, update], f"{w}#new")
        if solver.snapshot_diff:
            # After ApplyUpdate Caffe's diff holds the update, which snapshot_diff writes out.
            b.op("Identity", [update], f"{diffs[p.name]}#new")
            outputs.append(helper.make_tensor_value_info(diffs[p.name], TensorProto.FLOAT, list(p.shape)))
    graph = helper.make_graph(b.nodes, "apply_update", inputs, outputs, b.inits)
    # Outputs carry the names of the buffers they overwrite: w#new -> w, history#k#new -> history#k.
    for o in graph.output:
        if o.name != L2NORM:
            o.name = o.name + "#new"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="caffecompat")
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    return model


def _rule(b: _Builder, solver: caffe_pb2.SolverParameter, solver_type: str, g: str, hist: list[str],
          local_rate: str, momentum: np.float32, delta: np.float32) -> str:
    """The solver type's ComputeUpdateValue: new history values (written to `<h>#new`) and the update."""
    if solver_type == "SGD":
        # SGD: h = lr * g + momentum * h; the update is h.
        return b.op("Add", [b.op("Mul", [g, local_rate]), b.op("Mul", [hist[0], b.scalar(momentum)])],
                    f"{hist[0]}#new")
    if solver_type == "Nesterov":
        # Nesterov: h' = lr * g + momentum * h; the update is (1 + momentum) h' - momentum h.
        old = b.op("Mul", [hist[0], b.scalar(momentum)])
        new = b.op("Add", [b.op("Mul", [g, local_rate]), old], f"{hist[0]}#new")
        return b.op("Sub", [b.op("Mul", [new, b.scalar(F32(1) + momentum)]), old])
    if solver_type in ("AdaGrad", "RMSProp"):
        square = b.op("Mul", [g, g])
        if solver_type == "AdaGrad":
            # AdaGrad: h += g^2.
            new = b.op("Add", [hist[0], square], f"{hist[0]}#new")
        else:
            # RMSProp: h = rms_decay * h + (1 - rms_decay) * g^2.
            decay = F32(solver.rms_decay)
            kept = b.op("Mul", [hist[0], b.scalar(decay)])
            new = b.op("Add", [kept, b.op("Mul", [square, b.scalar(F32(1) - decay)])], f"{hist[0]}#new")
        # The update is lr * g / (sqrt(h) + delta).
        denom = b.op("Add", [b.op("Sqrt", [new]), b.scalar(delta)])
        return b.op("Mul", [b.op("Div", [g, denom]), local_rate])
    if solver_type == "AdaDelta":
        one_minus = b.scalar(F32(1) - momentum)
        mom = b.scalar(momentum)
        g2 = b.op("Add", [b.op("Mul", [hist[0], mom]), b.op("Mul", [b.op("Mul", [g, g]), one_minus])],
                  f"{hist[0]}#new")
        # AdaDelta: u = g * sqrt((u2 + delta) / (g2 + delta)); u2 = m * u2 + (1 - m) * u^2; update lr * u.
        num, den = b.op("Add", [b.scalar(delta), hist[1]]), b.op("Add", [b.scalar(delta), g2])
        ratio = b.op("Sqrt", [b.op("Div", [num, den])])
        u = b.op("Mul", [g, ratio])
        b.op("Add", [b.op("Mul", [hist[1], mom]), b.op("Mul", [b.op("Mul", [u, u]), one_minus])], f"{hist[1]}#new")
        return b.op("Mul", [u, local_rate])
    if solver_type == "Adam":
        beta1, beta2 = momentum, F32(solver.momentum2)
        m = b.op("Add", [b.op("Mul", [hist[0], b.scalar(beta1)]), b.op("Mul", [g, b.scalar(F32(1) - beta1)])],
                 f"{hist[0]}#new")
        v = b.op("Add", [b.op("Mul", [hist[1], b.scalar(beta2)]),
                         b.op("Mul", [b.op("Mul", [g, g]), b.scalar(F32(1) - beta2)])], f"{hist[1]}#new")
        # Adam: (lr * correction) * m / (sqrt(v) + eps).
        denom = b.op("Add", [b.op("Sqrt", [v]), b.scalar(delta)])
        return b.op("Mul", [b.op("Div", [m, denom]), b.op("Mul", [local_rate, CORRECTION])])
    raise CaffeCompatError(f'unknown solver type "{solver_type}"')


class Updater:
    """Runs the ApplyUpdate graph in place on OrtValues (parameters, diffs, history) of one device."""

    def __init__(self, solver: caffe_pb2.SolverParameter, solver_type: str, params: Sequence[UpdateParam],
                 providers: list, build: bool = True) -> None:
        self.solver = solver
        self.solver_type = solver_type
        self.params = list(params)
        self.clips = solver.clip_gradients >= 0 and bool(self.params)
        self.session = None
        if build:
            model = build_update_model(solver, solver_type, self.params)
            self.session = inference_session(model.SerializeToString(), providers,
                                             what="creating the update session")

    def run(self, values: dict[str, ort.OrtValue], diffs: dict[str, ort.OrtValue],
            history: dict[str, list[ort.OrtValue]], rate: float, iteration: int) -> float | None:
        """One update; returns the diffs' global L2 norm when clip_gradients is on."""
        io = self.session.io_binding()
        if self.clips:
            io.bind_output(L2NORM, "cpu")
        io.bind_cpu_input(RATE, np.asarray(rate, dtype=F32))
        if self.solver_type == "Adam":
            corr = adam_correction(F32(self.solver.momentum), F32(self.solver.momentum2), iteration)
            io.bind_cpu_input(CORRECTION, np.asarray(corr, dtype=F32))
        for p in self.params:
            io.bind_ortvalue_input(p.name, values[p.name])
            io.bind_ortvalue_output(p.name + "#new", values[p.name])
            io.bind_ortvalue_input(diff_name(p.name), diffs[p.name])
            if self.solver.snapshot_diff:
                io.bind_ortvalue_output(diff_name(p.name) + "#new", diffs[p.name])
            for k, h in enumerate(history[p.name]):
                io.bind_ortvalue_input(history_name(p.name, k), h)
                io.bind_ortvalue_output(history_name(p.name, k) + "#new", h)
        ort_call("the solver update", self.session.run_with_iobinding, io)
        if self.clips:
            return float(io.get_outputs()[0].numpy())
        return None
