"""The Caffe training loop (Solver::Solve / Step / Test / Snapshot / Restore) on ONNX Runtime.

The TRAIN net runs Net::Forward + Net::Backward as one ONNX graph on plain
ONNX Runtime, and the update is an ONNX graph run in place on the same device
buffers (caffecompat.runtime.training and .update). TEST nets are inference
sessions fed the live parameters, shared by layer name as Caffe's
ShareTrainedLayersWith does. Log lines are Caffe's, in glog format.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caffecompat import glog, outfiles, parallel
from caffecompat.errors import CaffeCompatError, DamagedDataError
from caffecompat.net.export import LOSS_OUTPUT
from caffecompat.net.setup_log import debug_string
from caffecompat.net.spec import NetSpec, check_net_types
from caffecompat.net.weights import init_params, load_caffemodel
from caffecompat.proto import caffe_pb2
from caffecompat.runtime.feeder import Feeder, build_with_data
from caffecompat.runtime.forward import ForwardRunner, forward_loss
from caffecompat.runtime.training import TrainingNet
from caffecompat.solver import debug_info, nets
from caffecompat.solver.fmt import caffe_float
from caffecompat.solver.lr_policy import LrSchedule, resolve_solver_type, validate_solver
from caffecompat.solver.signals import Signals
from caffecompat.solver.snapshot import learned_net_of, snapshot_failed, write_snapshot
from caffecompat.solver.solverstate import (
    check_history,
    flatten_history,
    read_solverstate,
    split_history,
)
from caffecompat.solver.updates import log_clip, log_iteration_lr, make_history

F32 = np.float32


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
                 level: int | None = None, stages: Iterable[str] = (), providers: list | None = None,
                 signals: Signals | None = None) -> None:
        # Signal effects apply from the start: net building polls them between stages.
        self.signals = signals if signals is not None else Signals()
        # Solver::add_callback: objects with on_start() and on_gradients_ready(), called in every Step.
        self.callbacks: list = []
        # Under mpiexec, one of several solvers training together (caffecompat.parallel).
        self.parallel = parallel.activate()
        self.parallel.adopt(self.signals)
        self.last_snapshot: str | None = None
        validate_solver(param, solver_file)
        self.param = param
        self.solver_file = solver_file
        self.solver_type = resolve_solver_type(param, solver_file)
        # Solver::Init / Step: debug_info logs every TEST pass and the TRAIN passes of displayed iterations.
        self.debug_info = param.debug_info
        self._net_debug = False
        weights = [w.strip() for w in weights if w.strip()]
        # Solver::CheckSnapshotWritePermissions, before the parameters are logged so the error is what shows.
        self._check_snapshot_prefix()
        glog.info("solver.cpp:45", "Initializing solver from parameters: \n" + debug_string(param))
        # Solver::Solver: each rank seeds its random numbers with random_seed + solver_rank.
        seed = param.random_seed + self.parallel.rank if param.random_seed >= 0 else None
        self.rng = np.random.default_rng(seed)

        train = nets.train_net(param, solver_file, level, stages)
        tests = nets.test_nets(param, solver_file)
        # Every net's layer types are known before any data layer opens its database.
        for source in (train, *tests):
            check_net_types(source.net, source.state, source.source)
        self.signals.check_startup()
        self.train = build_with_data(train.net, train.state, self.rng, train.source)
        self.spec = self.train.spec
        self.tests: list[TestNet] = []
        try:
            values = init_params(self.spec, self.rng)
            for w in weights:
                glog.info("solver.cpp:72", f"Finetuning from {w}")
                load_caffemodel(self.spec, values, w)
            self.signals.check_startup()
            # Solver::Init: only the root solver has test nets.
            self._init_tests_and_runtime(param, solver_file, tests if self.parallel.root else [], values, weights,
                                         providers)
            self.parallel.startup(self.net, self.signals)
            self.signals.check_startup()
        except BaseException:
            self.train.close()
            for t in self.tests:
                t.feeder.close()
            raise
        self.iter = 0
        self.smoothed_loss = F32(0)
        self.losses: list[F32] = []
        self.requested_early_exit = False
        glog.info("solver.cpp:57", "Solver scaffolding done.")

    def _init_tests_and_runtime(self, param: caffe_pb2.SolverParameter, solver_file: str,
                                tests: list[nets.NetSource], values: dict[str, np.ndarray], weights: list[str],
                                providers: list | None) -> None:
        for i, test in enumerate(tests):
            glog.info("solver.cpp:190", f"Creating test net (#{i}) specified by {test.source}")
            feeder = build_with_data(test.net, test.state, self.rng, test.source)
            own = {k: v for k, v in init_params(feeder.spec, self.rng).items() if k not in values}
            for w in weights:
                glog.info("solver.cpp:72", f"Finetuning from {w}")
                merged = dict(own)
                load_caffemodel(feeder.spec, merged, w)
                own = {k: v for k, v in merged.items() if k not in values}
            self.tests.append(TestNet(feeder, self._test_runner(feeder, providers), own))
            self.signals.check_startup()

        self.net = self._training_net(values, providers)
        self.param_names = list(self.spec.params)
        history = make_history(self.solver_type, [self.spec.params[p].shape for p in self.param_names])
        self.net.setup_update(param, self.solver_type, dict(zip(self.param_names, history)))
        self.schedule = LrSchedule(param, where=solver_file)

    def _training_net(self, values: dict[str, np.ndarray], providers: list | None) -> TrainingNet:
        # One fused graph; segments around Python layers (runtime.segments).
        from caffecompat.runtime.segments import training_net

        if self.debug_info:
            debug_info.check_debuggable(self.train, f"debug_info: true ({self.solver_file})")
            return TrainingNet(self.train.spec, values, providers, rng=self.rng, debug=True)
        return training_net(self.train, values, providers, rng=self.rng)

    def _test_runner(self, feeder: Feeder, providers: list | None) -> ForwardRunner:
        from caffecompat.runtime.segments import scoring

        if self.debug_info:
            return debug_info.debug_runner(feeder, providers, self.rng, f"debug_info: true ({self.solver_file})")
        return scoring(feeder, providers, rng=self.rng)

    # -- parameters ------------------------------------------------------------
    def value(self, name: str) -> np.ndarray:
        """The live value of parameter `name` (on the CPU a view of the runtime's buffer)."""
        return self.net.data(name)

    def live_values(self) -> dict[str, np.ndarray]:
        """Every parameter's live value by tensor name."""
        return {p: self.value(p) for p in self.param_names}

    @property
    def history(self) -> list[list[np.ndarray]]:
        """The solver's history blobs, per parameter in Net::learnable_params order."""
        return [self.net.history_arrays(n) for n in self.param_names]

    # -- signals ---------------------------------------------------------------
    def handle_signals(self, sigint_effect: str = "stop", sighup_effect: str = "snapshot") -> None:
        """Caffe's -sigint_effect / -sighup_effect: stop, snapshot or none, checked once per iteration.

        `caffecompat train` installs them before building the solver (solver.signals.Signals)."""
        self.signals.set_effects(sigint_effect, sighup_effect)
        self.signals.install()

    def _take_action(self) -> str | None:
        self.parallel.alive(self.iter)
        return self.signals.take()

    # -- the loop --------------------------------------------------------------
    def solve(self, resume_file: str | None = None) -> None:
        """Solver::Solve: optionally restore, run to max_iter, snapshot, final display and test."""
        glog.info("solver.cpp:289", f"Solving {self.spec.name}")
        glog.info("solver.cpp:290", f"Learning Rate Policy: {self.param.lr_policy}")
        self.requested_early_exit = False
        if resume_file:
            glog.info("solver.cpp:296", f"Restoring previous solver status from {resume_file}")
            self.restore(resume_file)
        self.signals.check_startup()
        start_iter = self.iter
        try:
            self.step(self.param.max_iter - self.iter)
        except DamagedDataError:
            # As a SIGINT stop does: what was learned so far is snapshotted before the run ends.
            if self.param.snapshot or self.param.snapshot_after_train:
                self.snapshot()
            raise
        p = self.param
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            glog.info("solver.cpp:311", "Optimization stopped early.")
            self.parallel.finish()
            return
        if p.display and self.iter % p.display == 0 and self.parallel.root:  # only rank 0 displays
            outputs = self._final_forward()
            self._update_smoothed_loss(outputs, start_iter)
            glog.info("solver.cpp:327", f"Iteration {self.iter}, loss = {caffe_float(self.smoothed_loss)}")
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        glog.info("solver.cpp:332", "Optimization Done.")
        self.parallel.finish()

    def _final_forward(self) -> F32:
        """Net::Forward of the TRAIN net for Solve's last display line: the loss; no update follows."""
        inputs = self.train.next_inputs()
        outputs = self.net.forward_backward(inputs)
        self._update_batchnorm(outputs)
        if self._net_debug:  # Net::Forward keeps the debug_info the last Step iteration set
            debug_info.train_forward_lines(self.spec, self.net.debug_outputs, outputs, inputs, self.value)
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
                self.requested_early_exit = self.parallel.any(self.requested_early_exit, "rank 0's test", self.iter)
                if self.requested_early_exit:
                    break
            for callback in self.callbacks:
                callback.on_start()
            display = p.display and self.iter % p.display == 0
            # Solver::Step: net_->set_debug_info(display && param_.debug_info()).
            self._net_debug = bool(display and self.debug_info)
            loss = F32(0)
            outputs: dict[str, np.ndarray] = {}
            for _ in range(p.iter_size):
                inputs = self.train.next_inputs()
                if self._net_debug:
                    prior = {n: np.array(self.net.grad(n)) for n in self.param_names}
                outputs = self.net.forward_backward(inputs)
                # BatchNorm's Forward updates its statistics before ForwardDebugInfo reads its blobs.
                self._update_batchnorm(outputs)
                if self._net_debug:
                    self._log_debug(outputs, inputs, prior)
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
            for callback in self.callbacks:
                callback.on_gradients_ready()
            rate = self.schedule.rate(self.iter)
            log_iteration_lr(p, self.iter, rate)
            self.parallel.reduce_gradients(self.net, self.iter)
            norm = self.net.apply_update(rate, self.iter)
            if norm is not None:
                log_clip(norm, p.clip_gradients)
            self.iter += 1
            action = self.parallel.agree(self._take_action(), self.iter)
            if (p.snapshot and self.iter % p.snapshot == 0) or action == "snapshot":
                self.snapshot()
            if action == "stop":
                self.requested_early_exit = True
                break

    def _log_debug(self, outputs: dict[str, np.ndarray], inputs: dict[str, np.ndarray],
                   prior: dict[str, np.ndarray]) -> None:
        if not self.parallel.root:
            return  # LOG_IF(INFO, Caffe::root_solver())
        debug = self.net.debug_outputs
        debug_info.train_forward_lines(self.spec, debug, outputs, inputs, self.value)
        debug_info.backward_lines(self.spec, self.net.backward_plan, debug, outputs, prior, self.value,
                                  self.net.grad)

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
        from caffecompat.layers.batch_norm import batchnorm_update

        stats: dict[int, dict[str, np.ndarray]] = {}
        for value, (layer, what) in self.net.side_outputs.items():
            stats.setdefault(layer, {})[what] = outputs[value]
        for layer, s in stats.items():
            node = self.spec.layers[layer]
            shape = node.bottom_shapes[0]
            count = int(np.prod(shape)) // shape[1]
            blobs = [self.net.data(n) for n in node.param_names]
            if node.type == "BN":
                from caffecompat.layers.bn import bn_update

                bn_update(blobs, s["mean"], s["variance"], node.param.bn_param.momentum)
            else:
                batchnorm_update(blobs, s["mean"], s["variance"], count,
                                 node.param.batch_norm_param.moving_average_fraction)
            if self.net.device != "cpu":
                for n, blob in zip(node.param_names, blobs):
                    self.net.set_data(n, blob)

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
            inputs = t.feeder.next_inputs()
            out = t.runner.run(inputs, params)
            if self.debug_info:
                debug_info.test_forward_lines(spec, out, inputs, lambda n: params[n] if n in params else self.value(n))
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
        # Solver::CheckSnapshotWritePermissions: snapshot needs a prefix in a writable folder (rank 0's).
        p = self.param
        if not (p.snapshot or p.snapshot_after_train) or not self.parallel.root:
            return
        if p.snapshot and not p.HasField("snapshot_prefix"):
            raise CaffeCompatError(f"{self.solver_file}: snapshot is set but snapshot_prefix is not; "
                                   'add snapshot_prefix: "path/to/name"')
        folder = Path(p.snapshot_prefix).parent
        if not folder.is_dir():
            raise CaffeCompatError(f"{self.solver_file}: cannot write snapshots to prefix '{p.snapshot_prefix}': "
                                   f"folder '{folder}' does not exist; create it first")
        reason = outfiles.unwritable_reason(f"{p.snapshot_prefix}_iter_0.caffemodel")
        if reason:
            raise CaffeCompatError(f"{self.solver_file}: cannot write snapshots to prefix '{p.snapshot_prefix}': "
                                   f"{reason}")

    def snapshot_filename(self, extension: str) -> str:
        """Solver::SnapshotFilename: <prefix>_iter_<N><ext>."""
        return f"{self.param.snapshot_prefix}_iter_{self.iter}{extension}"

    def snapshot(self) -> None:
        """Write <prefix>_iter_N.caffemodel and .solverstate, both or neither.

        A write that fails (no space, read-only disk) stops the run with an error naming the
        last complete snapshot; Caffe aborts there too."""
        if not self.parallel.root:
            return  # Solver::Snapshot: only the root solver writes snapshots
        values = self.live_values()
        diffs = None
        if self.param.snapshot_diff:
            diffs = {n: self.net.grad(n) for n in self.param_names}
        # Solver::Snapshot / SnapshotSolverState: HDF5 snapshots are <prefix>_iter_N.caffemodel.h5 / .solverstate.h5.
        hdf5 = self.param.snapshot_format == caffe_pb2.SolverParameter.HDF5
        suffix = ".h5" if hdf5 else ""
        model = self.snapshot_filename(".caffemodel" + suffix)
        state = self.snapshot_filename(".solverstate" + suffix)
        try:
            write_snapshot(model, state, self.spec, values, diffs, self.iter, flatten_history(self.history),
                           self.schedule.current_step, hdf5=hdf5)
        except CaffeCompatError as e:
            raise snapshot_failed(e, self.iter, self.last_snapshot) from None
        self.last_snapshot = state

    def restore(self, path: str) -> None:
        """SGDSolver::RestoreSolverStateFromBinaryProto / FromHDF5: iteration, learned_net's weights, history, step."""
        state = read_solverstate(path)
        if state.learned_net:
            values = {n: np.array(v) for n, v in self.live_values().items()}
            load_caffemodel(self.spec, values, learned_net_of(path, state.learned_net))
            for name, array in values.items():
                self.net.set_data(name, array)
        history = self.history
        shapes = flatten_history([[h.shape for h in hist] for hist in history])
        names = flatten_history([[f"{n} history {k}" for k in range(len(hist))]
                                 for n, hist in zip(self.param_names, history)])
        # SGDSolver::RestoreSolverStateFromBinaryProto: history_[i] and history_[i + N] (AdaDelta, Adam) are
        # the first and second blobs of parameter i.
        restored = split_history(check_history(state, shapes, path, names), len(self.param_names))
        for name, arrays in zip(self.param_names, restored):
            self.net.set_history(name, arrays)
        self.iter = state.iteration
        self.schedule.current_step = state.current_step
        self.last_snapshot = path

    def close(self) -> None:
        """Stop data threads and drop temporary files."""
        self.train.close()
        for t in self.tests:
            t.feeder.close()
        self.net.close()
