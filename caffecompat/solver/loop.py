"""The Caffe training loop (Solver::Solve / Step / Test / Snapshot / Restore) on ONNX Runtime.

The TRAIN net runs forward+backward in an ORT training Module; the update is
numpy, in place on ORT's parameter buffers (caffecompat.solver.updates). TEST
nets are inference sessions fed the live parameters, shared by layer name as
Caffe's ShareTrainedLayersWith does. Log lines are Caffe's, in glog format.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from caffecompat import glog
from caffecompat.errors import CaffeCompatError, NotSupportedError
from caffecompat.net.export import LOSS_OUTPUT
from caffecompat.net.spec import NetSpec
from caffecompat.net.weights import init_params, load_caffemodel
from caffecompat.proto import caffe_pb2
from caffecompat.runtime.feeder import Feeder, build_with_data
from caffecompat.runtime.forward import ForwardRunner, forward_loss, scoring_runner
from caffecompat.runtime.training import TrainingNet
from caffecompat.solver import nets
from caffecompat.solver.fmt import caffe_float
from caffecompat.solver.lr_policy import LrSchedule, resolve_solver_type, validate_solver
from caffecompat.solver.snapshot import write_snapshot_model
from caffecompat.solver.solverstate import (
    check_history,
    flatten_history,
    read_solverstate,
    write_solverstate,
)
from caffecompat.solver.updates import Param, apply_update, make_history

F32 = np.float32
SIGNAL_EFFECTS = ("stop", "snapshot", "none")


@dataclass
class TestNet:
    """One TEST net: its data, its inference session and the parameters it does not share."""

    feeder: Feeder
    runner: ForwardRunner
    own_values: dict[str, np.ndarray]


def loss_weight_of(spec: NetSpec, value: str) -> float:
    """The loss weight Caffe attaches to blob value `value` (0 when it is not a loss)."""
    for node in spec.layers:
        for top, weight in zip(node.tops, node.loss_weights):
            if top == value:
                return weight
    return 0.0


class Solver:
    """A Caffe solver over its TRAIN net and TEST nets."""

    def __init__(self, param: caffe_pb2.SolverParameter, solver_file: str, *, weights: Iterable[str] = (),
                 level: int | None = None, stages: Iterable[str] = (), device: str = "cpu",
                 providers: list | None = None) -> None:
        validate_solver(param, solver_file)
        if param.snapshot_format == caffe_pb2.SolverParameter.HDF5:
            raise NotSupportedError(f"snapshot_format: HDF5 ({solver_file}); use BINARYPROTO")
        self.param = param
        self.solver_file = solver_file
        self.solver_type = resolve_solver_type(param, solver_file)
        weights = [w.strip() for w in weights if w.strip()]
        glog.info("solver.cpp:45", "Initializing solver from parameters: \n" + text_format.MessageToString(param))
        self._check_snapshot_prefix()
        seed = param.random_seed if param.random_seed >= 0 else None
        self.rng = np.random.default_rng(seed)

        train = nets.train_net(param, solver_file, level, stages)
        self.train = build_with_data(train.net, train.state, self.rng, train.source)
        self.spec = self.train.spec
        values = init_params(self.spec, self.rng)
        for w in weights:
            glog.info("solver.cpp:72", f"Finetuning from {w}")
            load_caffemodel(self.spec, values, w)

        self.tests: list[TestNet] = []
        try:
            self._init_tests_and_runtime(param, solver_file, values, weights, device, providers)
        except BaseException:
            self.train.close()
            for t in self.tests:
                t.feeder.close()
            raise
        self.iter = 0
        self.smoothed_loss = F32(0)
        self.losses: list[F32] = []
        self.requested_early_exit = False
        self.pending_action: str | None = None
        self.sigint_effect = "stop"
        self.sighup_effect = "snapshot"
        glog.info("solver.cpp:57", "Solver scaffolding done.")

    def _init_tests_and_runtime(self, param: caffe_pb2.SolverParameter, solver_file: str,
                                values: dict[str, np.ndarray], weights: list[str], device: str,
                                providers: list | None) -> None:
        for i, test in enumerate(nets.test_nets(param, solver_file)):
            glog.info("solver.cpp:190", f"Creating test net (#{i}) specified by {test.source}")
            feeder = build_with_data(test.net, test.state, self.rng, test.source)
            own = {k: v for k, v in init_params(feeder.spec, self.rng).items() if k not in values}
            for w in weights:
                glog.info("solver.cpp:72", f"Finetuning from {w}")
                merged = dict(own)
                load_caffemodel(feeder.spec, merged, w)
                own = {k: v for k, v in merged.items() if k not in values}
            self.tests.append(TestNet(feeder, scoring_runner(feeder.spec, providers), own))

        self.net = TrainingNet(self.spec, values, device=device)
        # Parameters the training graph does not hold (e.g. BatchNorm statistics) stay here.
        self.values = {k: v for k, v in values.items() if k not in self.net.params}
        self.param_names = list(self.spec.params)
        self.history = make_history(self.solver_type, [self.spec.params[p].shape for p in self.param_names])
        self.schedule = LrSchedule(param, where=solver_file)

    # -- parameters ------------------------------------------------------------
    def value(self, name: str) -> np.ndarray:
        """The live value of parameter `name`."""
        return self.net.data(name) if name in self.net.params else self.values[name]

    def live_values(self) -> dict[str, np.ndarray]:
        """Every parameter's live value by tensor name."""
        return {p: self.value(p) for p in self.param_names}

    def _params_for_update(self) -> list[Param]:
        out = []
        for name, hist in zip(self.param_names, self.history):
            info = self.spec.params[name]
            grad = self.net.grad(name) if name in self.net.params else np.zeros(info.shape, np.float32)
            out.append(Param(name, self.value(name), grad, info.lr_mult, info.decay_mult, hist))
        return out

    # -- signals ---------------------------------------------------------------
    def handle_signals(self, sigint_effect: str = "stop", sighup_effect: str = "snapshot") -> None:
        """Caffe's -sigint_effect / -sighup_effect: stop, snapshot or none, checked once per iteration."""
        for flag, effect in (("sigint_effect", sigint_effect), ("sighup_effect", sighup_effect)):
            if effect not in SIGNAL_EFFECTS:
                raise CaffeCompatError(f'-{flag} "{effect}" is not valid; use one of {", ".join(SIGNAL_EFFECTS)}')
        self.sigint_effect, self.sighup_effect = sigint_effect, sighup_effect
        signal.signal(signal.SIGINT, lambda *_: self._request(self.sigint_effect))
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: self._request(self.sighup_effect))

    def _request(self, effect: str) -> None:
        if effect != "none":
            self.pending_action = effect

    def _take_action(self) -> str | None:
        action, self.pending_action = self.pending_action, None
        return action

    # -- the loop --------------------------------------------------------------
    def solve(self, resume_file: str | None = None) -> None:
        """Solver::Solve: optionally restore, run to max_iter, snapshot, final display and test."""
        glog.info("solver.cpp:289", f"Solving {self.spec.name}")
        glog.info("solver.cpp:290", f"Learning Rate Policy: {self.param.lr_policy}")
        self.requested_early_exit = False
        if resume_file:
            glog.info("solver.cpp:296", f"Restoring previous solver status from {resume_file}")
            self.restore(resume_file)
        start_iter = self.iter
        self.step(self.param.max_iter - self.iter)
        p = self.param
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            glog.info("solver.cpp:311", "Optimization stopped early.")
            return
        if p.display and self.iter % p.display == 0:
            outputs = self._final_forward()
            self._update_smoothed_loss(outputs, start_iter)
            glog.info("solver.cpp:327", f"Iteration {self.iter}, loss = {caffe_float(self.smoothed_loss)}")
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        glog.info("solver.cpp:332", "Optimization Done.")

    def _final_forward(self) -> F32:
        """Net::Forward of the TRAIN net for Solve's last display line: the loss; no update follows."""
        outputs = self.net.forward_backward(self.train.next_inputs())
        self._update_batchnorm(outputs)
        self.net.clear_grads()
        return F32(outputs[LOSS_OUTPUT])

    def _update_smoothed_loss(self, loss: F32, start_iter: int) -> None:
        # Solver::UpdateSmoothedLoss: running mean over the last average_loss iterations.
        average = self.param.average_loss
        if len(self.losses) < average:
            self.losses.append(loss)
            size = len(self.losses)
            self.smoothed_loss = F32((self.smoothed_loss * F32(size - 1) + loss) / F32(size))
        else:
            idx = (self.iter - start_iter) % average
            self.smoothed_loss = F32(self.smoothed_loss + (loss - self.losses[idx]) / F32(average))
            self.losses[idx] = loss

    def step(self, iters: int) -> None:
        """Solver::Step: `iters` iterations of test, forward/backward, display, update and snapshot."""
        p = self.param
        start_iter = self.iter
        stop_iter = self.iter + iters
        self.losses, self.smoothed_loss = [], F32(0)
        timer = time.monotonic()
        iterations_last = self.iter
        while self.iter < stop_iter:
            self.net.clear_grads()
            if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                self.test_all()
                if self.requested_early_exit:
                    break
            display = p.display and self.iter % p.display == 0
            loss = F32(0)
            outputs: dict[str, np.ndarray] = {}
            for _ in range(p.iter_size):
                outputs = self.net.forward_backward(self.train.next_inputs())
                self._update_batchnorm(outputs)
                loss = F32(loss + F32(outputs[LOSS_OUTPUT]))
            loss = F32(loss / F32(p.iter_size))
            self._update_smoothed_loss(loss, start_iter)
            if display:
                lapse = time.monotonic() - timer
                per_s = (self.iter - iterations_last) / (lapse if lapse else 1)
                glog.info("solver.cpp:239", f"Iteration {self.iter} ({caffe_float(per_s)} iter/s, "
                          f"{caffe_float(lapse)}s/{p.display} iters), loss = {caffe_float(self.smoothed_loss)}")
                timer = time.monotonic()
                iterations_last = self.iter
                self._log_outputs("solver.cpp:258", "Train", self.spec, outputs)
            rate = self.schedule.rate(self.iter)
            apply_update(p, self._params_for_update(), rate, self.iter)
            self.iter += 1
            action = self._take_action()
            if (p.snapshot and self.iter % p.snapshot == 0) or action == "snapshot":
                self.snapshot()
            if action == "stop":
                self.requested_early_exit = True
                break

    def _log_outputs(self, where: str, kind: str, spec: NetSpec, outputs: dict[str, np.ndarray]) -> None:
        index = 0
        for name in spec.outputs:
            weight = loss_weight_of(spec, name)
            for v in np.asarray(outputs[name], dtype=np.float32).reshape(-1):
                extra = f" (* {caffe_float(weight)} = {caffe_float(F32(weight) * v)} loss)" if weight else ""
                glog.info(where, f"    {kind} net output #{index}: {name} = {caffe_float(v)}{extra}")
                index += 1

    def _update_batchnorm(self, outputs: dict[str, np.ndarray]) -> None:
        if not self.net.side_outputs:
            return
        from caffecompat.layers.normalization import batchnorm_update

        stats: dict[str, dict[str, np.ndarray]] = {}
        for value, (layer, what) in self.net.side_outputs.items():
            stats.setdefault(layer, {})[what] = outputs[value]
        for layer, s in stats.items():
            node = self.spec.layer(layer)
            shape = node.bottom_shapes[0]
            count = int(np.prod(shape)) // shape[1]
            blobs = [self.values[n] for n in node.param_names]
            batchnorm_update(blobs, s["mean"], s["variance"], count,
                             node.param.batch_norm_param.moving_average_fraction)

    # -- testing ---------------------------------------------------------------
    def test_all(self) -> None:
        """Solver::TestAll."""
        for i in range(len(self.tests)):
            if self.requested_early_exit:
                break
            self.test(i)

    def test(self, index: int) -> None:
        """Solver::Test: test_iter forward passes, the mean of each output, optionally the loss."""
        glog.info("solver.cpp:347", f"Iteration {self.iter}, Testing net (#{index})")
        t = self.tests[index]
        spec = t.feeder.spec
        live = {n: self.value(n) for n in t.runner.params if n in self.spec.params}
        params = {**t.own_values, **live}
        scores: np.ndarray | None = None
        loss = F32(0)
        iters = self.param.test_iter[index]
        for _ in range(iters):
            action = self._take_action()
            if action == "snapshot":
                self.snapshot()
            elif action == "stop":
                self.requested_early_exit = True
                break
            out = t.runner.run(t.feeder.next_inputs(), params)
            if self.param.test_compute_loss:
                loss = F32(loss + forward_loss(spec, out))
            flat = np.concatenate([np.asarray(out[n], np.float32).reshape(-1) for n in spec.outputs]) \
                if spec.outputs else np.zeros(0, np.float32)
            scores = flat if scores is None else (scores + flat).astype(np.float32)
        if self.requested_early_exit:
            glog.info("solver.cpp:396", "Test interrupted.")
            return
        if self.param.test_compute_loss:
            glog.info("solver.cpp:401", f"Test loss: {caffe_float(loss / F32(iters))}")
        if scores is None:
            return
        means = {}
        offset = 0
        for name in spec.outputs:
            n = int(np.prod(spec.shapes[name]))
            means[name] = (scores[offset:offset + n] / F32(iters)).astype(np.float32)
            offset += n
        self._log_outputs("solver.cpp:414", "Test", spec, means)

    # -- snapshots -------------------------------------------------------------
    def _check_snapshot_prefix(self) -> None:
        # Solver::CheckSnapshotWritePermissions: snapshot needs a prefix in a writable folder.
        p = self.param
        if not (p.snapshot or p.snapshot_after_train):
            return
        if p.snapshot and not p.HasField("snapshot_prefix"):
            raise CaffeCompatError(f"{self.solver_file}: snapshot is set but snapshot_prefix is not; "
                                   'add snapshot_prefix: "path/to/name"')
        folder = Path(p.snapshot_prefix).parent
        if p.snapshot and not folder.is_dir():
            raise CaffeCompatError(f"{self.solver_file}: cannot write snapshots to prefix '{p.snapshot_prefix}': "
                                   f"folder '{folder}' does not exist; create it first")

    def snapshot_filename(self, extension: str) -> str:
        """Solver::SnapshotFilename: <prefix>_iter_<N><ext>."""
        return f"{self.param.snapshot_prefix}_iter_{self.iter}{extension}"

    def snapshot(self) -> None:
        """Write <prefix>_iter_N.caffemodel and .solverstate (each atomically)."""
        values = self.live_values()
        diffs = None
        if self.param.snapshot_diff:
            diffs = {n: p.grad for n, p in zip(self.param_names, self._params_for_update())}
        model = self.snapshot_filename(".caffemodel")
        write_snapshot_model(model, self.spec, values, diffs)
        write_solverstate(self.snapshot_filename(".solverstate"), self.iter, model,
                          flatten_history(self.history), self.schedule.current_step)

    def restore(self, path: str) -> None:
        """SGDSolver::RestoreSolverStateFromBinaryProto: iteration, weights of learned_net, history, step."""
        state = read_solverstate(path)
        if state.learned_net:
            values = self.live_values()
            load_caffemodel(self.spec, values, state.learned_net)
            for name, array in values.items():
                np.copyto(self.value(name), array)
        shapes = flatten_history([[h.shape for h in hist] for hist in self.history])
        names = flatten_history([[n] * len(hist) for n, hist in zip(self.param_names, self.history)])
        restored = check_history(state, shapes, path, names)
        for mine, theirs in zip(flatten_history(self.history), restored):
            np.copyto(mine, theirs)
        self.iter = state.iteration
        self.schedule.current_step = state.current_step

    def close(self) -> None:
        """Stop data threads and drop temporary files."""
        self.train.close()
        for t in self.tests:
            t.feeder.close()
        self.net.close()
