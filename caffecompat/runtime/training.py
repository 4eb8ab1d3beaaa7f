"""One TRAIN net on plain ONNX Runtime: Net::Forward then Net::Backward as one graph, buffers kept on the device.

The step graph (net.export with a backward plan) reads the data, the
parameters and any drawn inputs (Dropout masks) and outputs the loss, the
net's outputs, BatchNorm's batch statistics and the diff of every learnable
parameter. Parameters, diffs and solver history live in OrtValues on the run
device, bound once through IOBinding; on the CPU they wrap numpy arrays, so
`data()` and `grad()` are views with no copy. Diffs of successive passes add
up until `clear_grads()` (Net::ClearParamDiffs), which is how iter_size works.
The update (runtime.update) runs on the same buffers.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from caffecompat.errors import CaffeCompatError
from caffecompat.net.backward import plan
from caffecompat.net.export import export
from caffecompat.net.spec import NetSpec
from caffecompat.runtime.fed_inputs import draw_fed_inputs, keep_carried
from caffecompat.runtime.providers import device_of, inference_session, ort_call, session_options
from caffecompat.runtime.update import UpdateParam, Updater
from caffecompat.solver.updates import Param
from caffecompat.solver.updates import update_values as numpy_update


class TrainingNet:
    """The TRAIN-phase net: forward+backward passes, parameters, diffs and the update, on one device."""

    def __init__(self, spec: NetSpec, params: Mapping[str, np.ndarray], providers: list | None = None,
                 rng: np.random.Generator | None = None, options: ort.SessionOptions | None = None,
                 debug: bool = False) -> None:
        self.spec = spec
        # debug_info: the step graph also outputs what Net's ForwardDebugInfo / BackwardDebugInfo read.
        self.debug = debug
        self.providers = providers or ["CPUExecutionProvider"]
        self.device, self.device_id = device_of(self.providers)
        self.rng = rng if rng is not None else np.random.default_rng()
        self.carried: dict[str, np.ndarray] = {}  # recurrent states the next pass starts from
        self._build_step(options)
        # Every parameter of the net (BatchNorm statistics too), as device buffers; on the CPU numpy-backed.
        self._host: dict[str, np.ndarray] = {}
        self._values: dict[str, ort.OrtValue] = {}
        for name in spec.params:
            self._values[name] = self._buffer(name, np.asarray(params[name], dtype=np.float32))
        # The diffs of all parameters are views of one flat buffer (Net::learnable_params order), so a
        # data-parallel reduction sums them with a single call.
        sizes = [int(np.prod(info.shape)) for info in spec.params.values()]
        self.flat_diff = np.zeros(sum(sizes), np.float32)
        offsets = np.cumsum([0, *sizes])
        self._diffs = {}
        for (name, info), a, b in zip(spec.params.items(), offsets[:-1], offsets[1:]):
            view = self.flat_diff[a:b].reshape(info.shape)
            if self.device == "cpu":
                self._host[f"{name}#diff"] = view
                self._diffs[name] = ort.OrtValue.ortvalue_from_numpy(view)
            else:
                self._diffs[name] = self._buffer(f"{name}#diff", view)
        self._scratch: dict[str, ort.OrtValue] = {}
        self._fresh = True  # the next pass writes the diffs instead of adding to them
        self.updater: Updater | None = None
        self.history: dict[str, list[ort.OrtValue]] = {}

    def _build_step(self, options: ort.SessionOptions | None) -> None:
        """Export the step graph and open its session (runtime.segments' subclass runs segments instead)."""
        spec = self.spec
        self.backward_plan = plan(spec)
        exported = export(spec, params_as_inputs=True, training=True, loss_output=True, outputs=spec.outputs,
                          backward=self.backward_plan, debug_outputs=self.debug, carry_state=True)
        self.debug_outputs = exported.debug
        self.graph_params = exported.params  # the parameters the step graph reads
        self.side_outputs = exported.side_outputs
        self.fed_inputs = exported.fed_inputs
        self.diff_outputs = exported.param_diffs  # parameter -> output holding its diff
        self.trainable = list(self.diff_outputs)
        self.output_names = [o.name for o in exported.model.graph.output]
        diff_values = set(self.diff_outputs.values())
        self._data_outputs = [n for n in self.output_names if n not in diff_values]
        opts = options or session_options()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No memory pattern: ORT would allocate the pattern's block beside the first run's arena chunks,
        # measured +250 MB peak on CaffeNet (batch 32) for no speed gain.
        opts.enable_mem_pattern = False
        self.session = inference_session(exported.model.SerializeToString(), self.providers, opts,
                                         fold_constants=False,
                                         what=f"net '{spec.name}': creating the training session")

    def _buffer(self, key: str, array: np.ndarray) -> ort.OrtValue:
        """A device buffer holding `array`; on the CPU it wraps (and keeps) the array itself."""
        if self.device == "cpu":
            array = np.ascontiguousarray(array, dtype=np.float32).copy()
            self._host[key] = array
            return ort.OrtValue.ortvalue_from_numpy(array)
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array, np.float32), self.device, self.device_id)

    # -- parameters --------------------------------------------------------------
    @property
    def params(self) -> list[str]:
        """Every parameter tensor the runtime holds."""
        return list(self._values)

    def data(self, name: str) -> np.ndarray:
        """The live value of parameter `name` (on the CPU a view: writes go to the runtime's buffer)."""
        return self._host[name] if self.device == "cpu" else self._values[name].numpy()

    def set_data(self, name: str, array: np.ndarray) -> None:
        """Overwrite parameter `name`."""
        self._write(self._values[name], name, array)

    def grad(self, name: str) -> np.ndarray:
        """The accumulated diff of parameter `name` (zeros where Caffe computes none)."""
        if self._fresh:
            return np.zeros(self.spec.params[name].shape, np.float32)
        return self._host[f"{name}#diff"] if self.device == "cpu" else self._diffs[name].numpy()

    def set_grad(self, name: str, array: np.ndarray) -> None:
        """Overwrite the accumulated diff of parameter `name` (a data-parallel reduction on a GPU)."""
        self._write(self._diffs[name], f"{name}#diff", array)

    def _write(self, value: ort.OrtValue, key: str, array: np.ndarray) -> None:
        array = np.asarray(array, dtype=np.float32).reshape(value.shape())
        if self.device == "cpu":
            np.copyto(self._host[key], array)
        else:
            value.update_inplace(np.ascontiguousarray(array))

    # -- passes ------------------------------------------------------------------
    def forward_backward(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Net::Forward + Net::Backward; parameter diffs add to the accumulated ones. Returns the outputs."""
        io = self.session.io_binding()
        for name in self.spec.inputs:
            io.bind_cpu_input(name, np.ascontiguousarray(inputs[name], dtype=np.float32))
        for name, value in draw_fed_inputs(self.fed_inputs, self.carried, self.rng).items():
            io.bind_cpu_input(name, value)
        for name in self.graph_params:
            io.bind_ortvalue_input(name, self._values[name])
        for name in self._data_outputs:
            io.bind_output(name, "cpu")
        accumulate = not self._fresh
        for name, out in self.diff_outputs.items():
            target = self._scratch_for(name) if accumulate else self._diffs[name]
            io.bind_ortvalue_output(out, target)
        ort_call(f"net '{self.spec.name}' forward/backward", self.session.run_with_iobinding, io)
        if accumulate:
            for name in self.diff_outputs:
                self._accumulate(name)
        # Parameters with no diff output (lr_mult 0) keep the zeros they were made with.
        self._fresh = False
        values = io.get_outputs()
        outs = {n: v.numpy() for n, v in zip(self._data_outputs, values[: len(self._data_outputs)])}
        keep_carried(self.fed_inputs, self.carried, outs)
        return outs

    def _scratch_for(self, name: str) -> ort.OrtValue:
        if name not in self._scratch:
            self._scratch[name] = self._buffer(f"{name}#scratch", np.zeros(self.spec.params[name].shape, np.float32))
        return self._scratch[name]

    def _accumulate(self, name: str) -> None:
        # Caffe's layers add their parameter diffs into the blob's diff until ClearParamDiffs.
        if self.device == "cpu":
            np.add(self._host[f"{name}#diff"], self._host[f"{name}#scratch"], out=self._host[f"{name}#diff"])
        else:
            total = self._diffs[name].numpy() + self._scratch[name].numpy()
            self._diffs[name].update_inplace(total)

    def clear_grads(self) -> None:
        """Net::ClearParamDiffs: the next pass writes the diffs afresh."""
        self._fresh = True

    # -- the update --------------------------------------------------------------
    def setup_update(self, solver, solver_type: str, history: Mapping[str, list[np.ndarray]]) -> None:
        """Hold the solver's history blobs on the device and build the ApplyUpdate graph."""
        specs = [UpdateParam(n, self.spec.params[n].shape, self.spec.params[n].lr_mult, self.spec.params[n].decay_mult)
                 for n in self.spec.params]
        self.history = {n: [self._buffer(f"{n}#history{k}", h) for k, h in enumerate(history[n])] for n in history}
        self.updater = Updater(solver, solver_type, specs, self.providers, build=self.device != "cpu")

    def history_arrays(self, name: str) -> list[np.ndarray]:
        """The history blobs of `name` (on the CPU views of the device buffers)."""
        if self.device == "cpu":
            return [self._host[f"{name}#history{k}"] for k in range(len(self.history[name]))]
        return [h.numpy() for h in self.history[name]]

    def set_history(self, name: str, arrays: list[np.ndarray]) -> None:
        """Overwrite the history blobs of `name` (a restored .solverstate)."""
        for k, (value, array) in enumerate(zip(self.history[name], arrays)):
            self._write(value, f"{name}#history{k}", array)

    def apply_update(self, rate: float, iteration: int) -> float | None:
        """SGDSolver::ApplyUpdate's arithmetic on the device; returns the diffs' L2 norm when clipping.

        On the CPU the buffers are host memory, and Caffe's rules run in place on them with numpy
        (solver.updates: sliced over all cores, a small scratch buffer per thread); measured on
        CaffeNet this is 3-6x faster than the update graph and needs ~700 MB less (the graph's
        elementwise temporaries are parameter-sized). On CUDA the update graph runs on the device.
        """
        if self.updater is None:
            raise CaffeCompatError("internal: setup_update was not called")
        if self._fresh:
            for name in self.diff_outputs:
                self._write(self._diffs[name], f"{name}#diff", np.zeros(self.spec.params[name].shape))
        if self.device != "cpu":
            return self.updater.run(self._values, self._diffs, self.history, rate, iteration)
        params = [Param(n, self._host[n], self._host[f"{n}#diff"], self.spec.params[n].lr_mult,
                        self.spec.params[n].decay_mult, self.history_arrays(n)) for n in self.spec.params]
        return numpy_update(self.updater.solver, params, rate, iteration)

    def close(self) -> None:
        """Release the session and buffers."""
        self.session = None
        self._values.clear()
        self._diffs.clear()
        self._scratch.clear()
