"""A net run layer range by layer range, every blob's data and diff kept in numpy: pycaffe's Net, Python layers.

`SegmentedNet` runs Net::ForwardFromTo and Net::BackwardFromTo for any range
of layers. Consecutive layers that lower to ONNX form a *segment*, compiled on
first use and cached: a forward segment reads the values its layers take from
earlier layers (from the blobs, whatever they hold now, as Caffe's layers read
their bottoms' memory) plus the parameters, and writes the last value of every
blob it touches back into the blob. A backward segment recomputes its layers'
forward from the same inputs, takes the diff of every top no layer of the range
consumes from the blob's diff (as Caffe's layers read top diffs, so a loss top
starts from its loss weight and pycaffe's `backward(**diffs)` works), and
writes the bottom diffs back and adds the parameter diffs to the parameters'
(they accumulate until cleared, Net::ClearParamDiffs). Data layers fill their
tops from their sources; Input tops keep what the user wrote; Python layers run
their own forward/backward on the Blobs. A Python layer whose tops change shape
(or an Input blob the user reshaped) makes the net resolve its shapes again.
A range of top-less layers (Silence) computes nothing and makes no session.
A value a range reads that a later in-place layer overwrites is kept from the
forward for that range's backward, as Caffe's in-place layers keep their own
copy. With Net callbacks (`hooks`: pycaffe's before_forward & co) every layer
runs as a range of its own, the callbacks around it. `lock` serializes callers.

`SegmentedTrainingNet` and `SegmentedRunner` put this behind the interfaces
the solver and the tools use (runtime.training.TrainingNet, runtime.forward
.ForwardRunner), for nets with Python layers and for pycaffe's solvers.
`forward_backward` of a net without Python layers runs one fused graph, the
same the solver's TrainingNet runs, so the numbers are the same.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from caffecompat.errors import CaffeCompatError
from caffecompat.layers import registry
from caffecompat.layers.labels import LabelRule, check_labels, label_rules
from caffecompat.layers.registry import LayerNode
from caffecompat.net.backward import BackwardPlan, plan, seed_input_name
from caffecompat.net.export import LOSS_OUTPUT, export
from caffecompat.net.spec import NetSpec
from caffecompat.proto import caffe_pb2
from caffecompat.runtime.blob import Blob
from caffecompat.runtime.fed_inputs import fed_value, keep_carried
from caffecompat.runtime.feeder import Feeder
from caffecompat.runtime.forward import ForwardRunner, forward_loss, scoring_runner
from caffecompat.runtime.providers import inference_session, ort_call, session_options
from caffecompat.runtime.python_layers import is_host_layer
from caffecompat.runtime.training import TrainingNet

F32 = np.float32
_CACHE_SIZE = 32  # compiled segments kept per net (shapes that change, e.g. per image, each compile anew)


@dataclass
class _Segment:
    """A compiled range: its session, what it reads and what its outputs mean."""

    session: ort.InferenceSession | None  # None: the range computes nothing (top-less layers such as Silence)
    inputs: list[str]  # values fed from the blobs' data
    params: list[str]
    fed: dict  # Dropout masks and the like: input name -> FedInput
    outputs: list[str]
    data_out: dict[str, str]  # output -> Caffe blob whose data it is
    seeds: dict[str, str]  # seed graph input -> Caffe blob whose diff it is
    diff_out: list[tuple[str, str]]  # (output, Caffe blob whose diff it is): blobs may share one output
    param_diff_out: list[tuple[str, str]]  # (output, parameter whose diff it adds to)
    side_outputs: dict[str, tuple[int, str]]
    loss_out: str | None = None


class SegmentedNet:
    """One net's blobs and parameters, run forward and backward over any layer range (module docstring)."""

    def __init__(self, feeder: Feeder, params: Mapping[str, Blob], providers: list | None = None,
                 rng: np.random.Generator | None = None, options: ort.SessionOptions | None = None) -> None:
        self.feeder = feeder
        self.host = feeder.python
        self.blobs: dict[str, Blob] = self.host.blobs if self.host is not None else {}
        self._label_rules: list[LabelRule] = []
        self._label_rules_of: NetSpec | None = None
        self.params: dict[str, Blob] = dict(params)
        self.providers = providers or ["CPUExecutionProvider"]
        self.options = options
        self.rng = rng if rng is not None else np.random.default_rng()
        self.training = feeder.spec.phase == caffe_pb2.TRAIN
        self.update_statistics = True  # BatchNorm's running averages after each TRAIN-phase forward
        self._segments: OrderedDict[tuple, _Segment] = OrderedDict()
        self._fed: dict[str, np.ndarray] = {}  # the Dropout masks of the last forward, for its backward
        self.carried: dict[str, np.ndarray] = {}  # recurrent states the next forward starts from
        self.python_times: dict[tuple[str, str], float] = {}  # (layer, direction) -> seconds, for `time`
        self._profiled: list[ort.SessionOptions] = []
        self._saved: dict[str, np.ndarray] = {}  # inputs a later in-place layer overwrote, for the backward
        # One call at a time: every pass reads and writes the same blobs (pycaffe's Net and solvers take it).
        self.lock = threading.RLock()
        # Net::add_before_forward & co: callbacks called with the layer index around each layer's pass.
        self.hooks: dict[str, list[Callable[[int], object]]] = {
            "before_forward": [], "after_forward": [], "before_backward": [], "after_backward": []}
        self._adopt(feeder.spec, first=True)

    # -- the resolved net --------------------------------------------------------
    def _adopt(self, spec: NetSpec, first: bool = False) -> None:
        """Take `spec` (first build or a rebuild): blobs shaped as it says, its backward plan."""
        old = None if first else self.spec
        self.spec = spec
        self.plan: BackwardPlan = plan(spec)
        self.value_blob: dict[str, str] = {}
        self.blob_names: list[str] = []
        for node in spec.layers:
            for blob, value in zip(node.top_blobs, node.tops):
                self.value_blob[value] = blob
                if blob not in self.blob_names:
                    self.blob_names.append(blob)
        fresh = []
        for name in self.blob_names:
            shape = spec.shapes[spec.blob_values[name]]
            blob = self.blobs.get(name)
            if blob is None:
                self.blobs[name] = Blob(shape)
                fresh.append(name)
            elif blob.shape != shape:
                count = blob.count
                blob.reshape(*shape)
                if blob.count != count:
                    fresh.append(name)
        for node in spec.layers:
            for blob, weight in zip(node.top_blobs, node.loss_weights):
                if weight and (first or blob in fresh):
                    # Layer::SetLossWeights: a loss top's diff holds its loss weight, Backward's seed.
                    self.blobs[blob].diff.fill(weight)
        for name, info in spec.params.items():
            blob = self.params.get(name)
            if blob is not None and blob.shape != info.shape:
                if old is not None and old.params.get(name) and old.params[name].shape == blob.shape:
                    raise CaffeCompatError(f"net '{spec.name}': reshaping the net changes the shape of parameter "
                                           f"{name} of layer '{info.layer}' from {list(blob.shape)} to "
                                           f"{list(info.shape)}; a layer's parameters keep their shape")
                raise CaffeCompatError(f"internal: parameter {name} has shape {list(blob.shape)}, the net needs "
                                       f"{list(info.shape)}")

    def rebuild(self, call_reshape: bool = False) -> None:
        """Resolve the shapes again from the Input blobs' shapes (Net::Reshape with call_reshape)."""
        inputs = {b: self.blobs[b].shape for node in self.spec.layers if node.type == "Input"
                  for b in node.top_blobs}
        self._adopt(self.feeder.rebuild(inputs, call_reshape))

    def _inputs_reshaped(self) -> bool:
        return any(self.blobs[b].shape != shape for node in self.spec.layers if node.type == "Input"
                   for b, shape in zip(node.top_blobs, node.top_shapes))

    @staticmethod
    def kind(node: LayerNode) -> str:
        """"python", "source" (data and Input layers) or "graph" (lowered to ONNX)."""
        if is_host_layer(node.type):
            return "python"
        return "source" if registry.get(node).source else "graph"

    def set_providers(self, providers: list) -> None:
        """Run on these execution providers from the next pass (pycaffe's set_mode_*): sessions made anew."""
        if providers != self.providers:
            self.providers = providers
            self._segments.clear()

    def _hooked(self, direction: str) -> bool:
        return bool(self.hooks[f"before_{direction}"] or self.hooks[f"after_{direction}"])

    def _call_hooks(self, when: str, index: int) -> None:
        for callback in self.hooks[when]:
            callback(index)

    def _runs(self, start: int, end: int, split: bool = False) -> list[tuple[str, int, int]]:
        """(kind, first, last) for maximal runs of graph layers and single other layers in start..end
        (with `split`, every layer a run of its own: hooks see the blobs after each layer)."""
        runs: list[tuple[str, int, int]] = []
        for i in range(start, end + 1):
            k = self.kind(self.spec.layers[i])
            if not split and k == "graph" and runs and runs[-1][0] == "graph" and runs[-1][2] == i - 1:
                runs[-1] = ("graph", runs[-1][1], i)
            else:
                runs.append((k, i, i))
        return runs

    def blob_of(self, value: str) -> Blob:
        """The Blob that holds `value` (a value name of the resolved net)."""
        return self.blobs[self.value_blob[value]]

    # -- compiling segments --------------------------------------------------------
    def _range(self, first: int, last: int) -> tuple[list[LayerNode], list[str], list[str]]:
        """The layers, their boundary inputs (values produced before `first`) and their unconsumed tops."""
        layers = self.spec.layers[first:last + 1]
        produced = {v for n in layers for v in n.tops}
        consumed = {v for n in layers for v in n.bottoms}
        inputs = list(dict.fromkeys(v for n in layers for v in n.bottoms if v not in produced))
        loose = list(dict.fromkeys(v for n in layers for v in n.tops if v not in consumed))
        return layers, inputs, loose

    def _signature(self, layers: list[LayerNode]) -> tuple:
        return tuple(self.spec.shapes[v] for n in layers for v in (*n.bottoms, *n.tops))

    def _session(self, model, backward: bool = False) -> ort.InferenceSession | None:
        if not model.graph.output:
            return None  # layers with no tops and nothing to give back (Silence, a top-less Python-free range)
        options = self.options
        if options is not None and options.enable_profiling:
            # One profile file per segment session (ONNX Runtime names them by the second they start).
            options = session_options()
            options.enable_profiling = True
            options.profile_file_prefix = f"{self.options.profile_file_prefix}_segment{len(self._profiled)}"
            self._profiled.append(options)
        return inference_session(model.SerializeToString(), self.providers, options, fold_constants=not backward)

    def _cached(self, key: tuple, make) -> _Segment:
        seg = self._segments.get(key)
        if seg is None:
            seg = self._segments[key] = make()
            # With callbacks every layer is a segment of its own: keep one forward and one backward per layer.
            while len(self._segments) > max(_CACHE_SIZE, 2 * len(self.spec.layers) + 1):
                self._segments.popitem(last=False)
        else:
            self._segments.move_to_end(key)
        return seg

    def _last_values(self, layers: list[LayerNode]) -> dict[str, str]:
        """Value -> blob for the last value each blob gets in `layers` (what the blob holds afterwards)."""
        last: dict[str, str] = {}
        for n in layers:
            for blob, value in zip(n.top_blobs, n.tops):
                last[blob] = value
        return {v: b for b, v in last.items()}

    def _sub(self, layers: list[LayerNode], inputs: list[str], outputs: list[str]) -> NetSpec:
        s = self.spec
        return NetSpec(name=s.name, phase=s.phase, layers=layers, inputs=inputs, outputs=outputs, shapes=s.shapes,
                       params=s.params, blob_values=s.blob_values, force_backward=s.force_backward)

    def _forward_segment(self, first: int, last: int) -> _Segment:
        def make() -> _Segment:
            layers, inputs, _ = self._range(first, last)
            data_out = self._last_values(layers)
            outs = list(data_out)
            ex = export(self._sub(layers, inputs, outs), params_as_inputs=True, outputs=outs, training=self.training,
                        carry_state=True)
            names = [o.name for o in ex.model.graph.output]
            return _Segment(self._session(ex.model), inputs, ex.params, ex.fed_inputs, names,
                            {v: data_out[v] for v in names if v in data_out}, {}, [], [], ex.side_outputs)

        layers = self.spec.layers[first:last + 1]
        return self._cached(("forward", first, last, self._signature(layers)), make)

    def _backward_segment(self, first: int, last: int) -> _Segment:
        def make() -> _Segment:
            layers, inputs, loose = self._range(first, last)
            # The values read from before the range look, to Net::Backward's composer, like tops of an Input
            # layer: their diffs are what the range's layers write into those blobs.
            boundary = LayerNode(param=caffe_pb2.LayerParameter(name="(segment inputs)", type="Input"), index=-1,
                                 phase=self.spec.phase, bottom_blobs=[],
                                 top_blobs=[self.value_blob[v] for v in inputs], tops=list(inputs),
                                 top_shapes=[self.spec.shapes[v] for v in inputs])
            p = self.plan
            sub_plan = BackwardPlan([False] + [p.layer_need[n.index] for n in layers],
                                    [[]] + [list(p.bottom_need[n.index]) for n in layers],
                                    [[]] + [list(p.param_need[n.index]) for n in layers])
            params = list(dict.fromkeys(name for n in layers for k, name in enumerate(n.param_names)
                                        if p.layer_need[n.index] and p.param_need[n.index][k]))
            ex = export(self._sub([boundary, *layers], inputs, []), params_as_inputs=True, outputs=[],
                        training=self.training, backward=sub_plan, blob_diffs=True, diff_params=params,
                        seeds=loose, carry_state=True)
            names = [o.name for o in ex.model.graph.output]
            diff_out = [(out, blob) for blob, out in ex.blob_diffs.items() if self._writes_diff(blob, inputs, layers)]
            return _Segment(self._session(ex.model, backward=True), inputs, ex.params, ex.fed_inputs, names, {},
                            {seed_input_name(v): self.value_blob[v] for v in loose}, diff_out,
                            [(out, prm) for prm, out in ex.param_diffs.items()], {})

        layers = self.spec.layers[first:last + 1]
        return self._cached(("backward", first, last, self._signature(layers)), make)

    def _writes_diff(self, blob: str, inputs: list[str], layers: list[LayerNode]) -> bool:
        """Whether Caffe's layers of the range write `blob`'s diff (else it keeps what it holds)."""
        first = next((v for v in inputs if self.value_blob[v] == blob), None)
        if first is None:
            return True  # a blob first written inside the range: its diff is the range's to give
        for n in layers:
            for j, v in enumerate(n.bottoms):
                if v == first:
                    in_place = j < len(n.top_blobs) and n.top_blobs[j] == blob
                    # Backward writes a bottom's diff where propagate_down; in place it is the top's diff.
                    return in_place or (self.plan.layer_need[n.index] and self.plan.bottom_need[n.index][j])
        return False

    def _fused_segment(self) -> _Segment:
        def make() -> _Segment:
            spec = self.spec
            data_out = self._last_values(spec.layers)
            outs = [v for v in data_out if v not in spec.inputs]
            ex = export(spec, params_as_inputs=True, outputs=outs, training=self.training, loss_output=True,
                        backward=self.plan, blob_diffs=True, diff_params=self._learned(), carry_state=True)
            names = [o.name for o in ex.model.graph.output]
            return _Segment(self._session(ex.model, backward=True), list(spec.inputs), ex.params, ex.fed_inputs,
                            names, {v: data_out[v] for v in names if v in data_out}, {},
                            [(out, blob) for blob, out in ex.blob_diffs.items()],
                            [(out, prm) for prm, out in ex.param_diffs.items()], ex.side_outputs, LOSS_OUTPUT)

        return self._cached(("fused", self._signature(self.spec.layers)), make)

    def _learned(self) -> list[str]:
        p = self.plan
        return list(dict.fromkeys(name for n in self.spec.layers for k, name in enumerate(n.param_names)
                                  if p.layer_need[n.index] and p.param_need[n.index][k]))

    # -- running segments -----------------------------------------------------------
    def _overwritten(self, value: str) -> bool:
        """Whether a later in-place layer overwrites `value` in its blob (it is not the blob's last value)."""
        return self.spec.blob_values.get(self.value_blob[value]) != value

    def _run(self, seg: _Segment, what: str) -> dict[str, np.ndarray]:
        if seg.session is None:
            return {}
        feed: dict[str, np.ndarray] = {v: self.blob_of(v).data for v in seg.inputs}
        for v in seg.inputs:
            if not self._overwritten(v):
                continue
            # Caffe's in-place layers keep what their Backward needs of a bottom that a later layer overwrites;
            # a range run alone keeps the value it read instead.
            if what == "forward":
                self._saved[v] = feed[v].copy()
            elif what == "backward" and v in self._saved and self._saved[v].shape == feed[v].shape:
                feed[v] = self._saved[v]
        for name in seg.params:
            feed[name] = self.params[name].data
        for name in seg.seeds:
            feed[name] = self.blobs[seg.seeds[name]].diff
        for name, fed in seg.fed.items():
            if what == "backward" and name in self._fed:
                feed[name] = self._fed[name]  # the mask the forward drew (Dropout's backward reuses it)
            else:
                feed[name] = self._fed[name] = fed_value(name, fed, self.carried, self.rng)
        out = dict(zip(seg.outputs, ort_call(f"net '{self.spec.name}' {what}", seg.session.run, seg.outputs, feed)))
        if what != "backward":
            keep_carried(seg.fed, self.carried, out)
        return out

    def _store(self, seg: _Segment, out: dict[str, np.ndarray]) -> None:
        for name, blob in seg.data_out.items():
            _copy(self.blobs[blob], "data", out[name])
        for name, blob in seg.diff_out:
            _copy(self.blobs[blob], "diff", out[name])
        for name, param in seg.param_diff_out:
            diff = self.params[param].diff
            # Caffe's layers add their parameter diffs to what the blob's diff holds (Net::ClearParamDiffs zeroes).
            np.add(diff, out[name].reshape(diff.shape), out=diff)
        if self.training and self.update_statistics and seg.side_outputs:
            self._update_batchnorm(seg, out)

    def _update_batchnorm(self, seg: _Segment, out: dict[str, np.ndarray]) -> None:
        from caffecompat.layers.batch_norm import batchnorm_update

        stats: dict[int, dict[str, np.ndarray]] = {}
        for value, (layer, what) in seg.side_outputs.items():
            stats.setdefault(layer, {})[what] = out[value]
        for layer, s in stats.items():
            node = self.spec.layers[layer]
            shape = node.bottom_shapes[0]
            blobs = [self.params[n].data for n in node.param_names]
            if node.type == "BN":
                from caffecompat.layers.bn import bn_update

                bn_update(blobs, s["mean"], s["variance"], node.param.bn_param.momentum)
                continue
            batchnorm_update(blobs, s["mean"], s["variance"], int(np.prod(shape)) // shape[1],
                             node.param.batch_norm_param.moving_average_fraction)

    # -- Net::ForwardFromTo / BackwardFromTo ------------------------------------------
    def forward(self, start: int = 0, end: int | None = None,
                inputs: Mapping[str, np.ndarray] | None = None) -> F32:
        """Layers start..end forward; data layers read `inputs` (value -> array) when given. Returns the loss."""
        end = len(self.spec.layers) - 1 if end is None else end
        if self._inputs_reshaped():
            self.rebuild()
        loss = F32(0)
        checked = False
        split = self._hooked("forward")
        for kind, first, last in self._runs(start, end, split):
            if split:
                # Net::ForwardFromTo: before_forward callbacks, the layer's Forward, after_forward callbacks.
                self._call_hooks("before_forward", first)
            if kind == "source":
                self._forward_source(self.spec.layers[first], inputs)
            elif kind == "python":
                self._forward_python(self.spec.layers[first])
            else:
                if not checked:
                    self._check_labels()
                    checked = True
                seg = self._forward_segment(first, last)
                self._store(seg, self._run(seg, "forward"))
            for node in self.spec.layers[first:last + 1]:
                for blob, weight in zip(node.top_blobs, node.loss_weights):
                    if weight:
                        # Net::ForwardFromTo adds each layer's loss: loss_weight * sum(top), in float32.
                        data = self.blobs[blob].data
                        loss = F32(loss + F32(weight) * F32(np.sum(data, dtype=F32)))
            if split:
                self._call_hooks("after_forward", first)
        return loss

    def _check_labels(self) -> None:
        # Labels reach SoftmaxWithLoss, Accuracy, ... only as integers in [0, C) (caffecompat.layers.labels).
        if self._label_rules_of is not self.spec:
            self._label_rules, self._label_rules_of = label_rules(self.spec), self.spec
        check_labels(self._label_rules, lambda rule: self.blobs[rule.blob].data if rule.blob in self.blobs else None)

    def _forward_source(self, node: LayerNode, inputs: Mapping[str, np.ndarray] | None) -> None:
        if node.type == "Input":
            # InputLayer::Forward_cpu does nothing: the tops keep what the user wrote (a feeder's zeros for an
            # Input layer are for the fused runtimes, whose graphs need a value).
            return
        if inputs is not None and all(v in inputs for v in node.tops):
            arrays = [inputs[v] for v in node.tops]
        else:
            source = self.feeder.source_of(node)
            if source is None:
                raise CaffeCompatError(f"layer '{node.name}' ({node.type}): this net has no data source for it")
            arrays = source.next_batch()
        for blob, array in zip(node.top_blobs, arrays):
            _copy(self.blobs[blob], "data", array)

    def _forward_python(self, node: LayerNode) -> None:
        t0 = time.perf_counter()
        # Layer::Forward reshapes first, then runs Forward.
        self.host.reshape(node)
        self.host.forward(node)
        self._time(node, "forward", t0)
        if any(t.shape != s for t, s in zip(self.host.tops[node.index], node.top_shapes)):
            self.rebuild()

    def _time(self, node: LayerNode, direction: str, t0: float) -> None:
        key = (node.label, direction)
        self.python_times[key] = self.python_times.get(key, 0.0) + time.perf_counter() - t0

    def backward(self, start: int | None = None, end: int = 0) -> None:
        """Layers start..end (start >= end) backward, as Net::BackwardFromTo."""
        start = len(self.spec.layers) - 1 if start is None else start
        split = self._hooked("backward")
        for kind, first, last in reversed(self._runs(end, start, split)):
            if split:
                # Net::BackwardFromTo: the callbacks run for every layer, needing backward or not.
                self._call_hooks("before_backward", first)
            if kind == "python":
                node = self.spec.layers[first]
                if self.plan.layer_need[first]:
                    t0 = time.perf_counter()
                    self.host.backward(node, self.plan.bottom_need[first])
                    self._time(node, "backward", t0)
            elif kind == "graph" and any(self.plan.layer_need[first:last + 1]):
                seg = self._backward_segment(first, last)
                self._store(seg, self._run(seg, "backward"))
            if split:
                self._call_hooks("after_backward", first)

    def forward_backward(self, inputs: Mapping[str, np.ndarray] | None = None) -> F32:
        """Net::ForwardBackward: Forward then Backward of the whole net; returns the loss.

        Without Python layers and reshaped inputs, one fused graph (the one TrainingNet runs) does both."""
        if (self.host is not None or self._inputs_reshaped() or not self.spec.loss_tops()
                or any(self.hooks.values())):
            loss = self.forward(inputs=inputs)
            self.backward()
            return loss
        for node in self.spec.layers:
            if self.kind(node) == "source":
                self._forward_source(node, inputs)
        self._check_labels()
        seg = self._fused_segment()
        out = self._run(seg, "forward/backward")
        self._store(seg, out)
        return F32(out[LOSS_OUTPUT])

    def clear_param_diffs(self) -> None:
        """Net::ClearParamDiffs: every parameter's diff to zero."""
        for blob in self.params.values():
            blob.diff.fill(0)

    def layer_times(self, runs: int) -> dict[tuple[str, str], float]:
        """Mean ms per run of each (layer, direction): ONNX Runtime's profiles of every segment (when the
        options profile) and the Python layers' own times."""
        from caffecompat.runtime.profile import layer_times

        times: dict[tuple[str, str], float] = {}
        if self.options is not None and self.options.enable_profiling:
            for seg in self._segments.values():
                for key, ms in layer_times(seg.session, runs).items():
                    times[key] = times.get(key, 0.0) + ms
        for key, seconds in self.python_times.items():
            times[key] = times.get(key, 0.0) + seconds * 1000.0 / runs
        return times


def _copy(blob: Blob, what: str, array: np.ndarray) -> None:
    """Write `array` into the blob's data or diff, reshaping the blob when the shape differs (a data layer's
    Reshape)."""
    array = np.asarray(array)
    if blob.shape != array.shape:
        if blob.count == array.size and what == "diff":
            array = array.reshape(blob.shape)
        else:
            blob.reshape(*array.shape)
    np.copyto(getattr(blob, what), array, casting="unsafe")


def param_blobs(spec: NetSpec, arrays: Mapping[str, np.ndarray], diffs: Mapping[str, np.ndarray] | None,
                 host) -> dict[str, Blob]:
    """Blobs over the parameter buffers; a Python layer's own blobs are made to show the same buffers."""
    blobs: dict[str, Blob] = {}
    for name in spec.params:
        data = arrays[name]
        diff = diffs[name] if diffs is not None else np.zeros(data.shape, np.float32)
        blobs[name] = Blob.wrap(data, diff)
    if host is not None:
        for node in spec.layers:
            if node.type != "Python":
                continue
            for name, own in zip(node.param_names, host.param_blobs(node)):
                if spec.owns(node, name):
                    own._bind(blobs[name].data, blobs[name].diff)
                    blobs[name] = own
    return blobs


class SegmentedTrainingNet(TrainingNet):
    """TrainingNet's interface over a SegmentedNet: the solver's TRAIN net when it has Python layers (and
    pycaffe's solvers, whose `solver.net` shows every blob). Parameters, diffs and history stay host arrays."""

    def __init__(self, feeder: Feeder, params: Mapping[str, np.ndarray], providers: list | None = None,
                 rng: np.random.Generator | None = None, options: ort.SessionOptions | None = None) -> None:
        self.feeder = feeder
        super().__init__(feeder.spec, params, providers, rng, options)
        blobs = param_blobs(self.spec, self._host, {n: self._host[f"{n}#diff"] for n in self.spec.params},
                             feeder.python)
        self.engine = SegmentedNet(feeder, blobs, self.providers, self.rng, options)
        # The diffs are the host arrays pycaffe shows (net.params, net.layers[i].blobs): they hold what was
        # computed or written, from the start (zeros), never a "not yet computed" state.
        self._fresh = False

    def clear_grads(self) -> None:
        """Net::ClearParamDiffs: every parameter's diff zeroed now (a script may write them before the update)."""
        self.flat_diff.fill(0)
        self._fresh = False

    def _build_step(self, options: ort.SessionOptions | None) -> None:
        # The segments are compiled on first use; buffers live in host memory, which Python layers read.
        self.device, self.device_id = "cpu", 0
        self.graph_params = list(self.spec.params)
        self.side_outputs = {}  # the runtime updates BatchNorm's statistics itself, after each forward
        self.fed_inputs = {}
        self.diff_outputs = {p: p for p in plan_learned(self.spec)}
        self.trainable = list(self.diff_outputs)
        self.output_names = [LOSS_OUTPUT, *self.spec.outputs]
        self._data_outputs = list(self.output_names)
        self.session = None

    def forward_backward(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Net::Forward + Net::Backward; parameter diffs add to the accumulated ones. Returns the outputs."""
        loss = self.engine.forward_backward(inputs)
        out = {v: self.engine.blob_of(v).data.copy() for v in self.spec.outputs}
        out[LOSS_OUTPUT] = np.asarray(loss, np.float32)
        return out

    def close(self) -> None:
        """Release the sessions and buffers."""
        self.engine._segments.clear()
        super().close()


def plan_learned(spec: NetSpec) -> list[str]:
    """The parameters whose diffs Net::Backward computes (lr_mult != 0, as TrainingNet's diff outputs)."""
    return [p for p, info in spec.params.items() if info.lr_mult != 0]


class SegmentedRunner:
    """ForwardRunner's interface (`run(inputs, params)`, `params`) over a SegmentedNet: TEST nets and
    `caffecompat test`/`time` for nets with Python layers. Parameters are shared, not copied: a run makes
    the net's parameter blobs show the arrays it is given (Caffe's ShareTrainedLayersWith)."""

    def __init__(self, feeder: Feeder, providers: list | None = None, options: ort.SessionOptions | None = None,
                 rng: np.random.Generator | None = None, params: Mapping[str, np.ndarray] | None = None) -> None:
        spec = feeder.spec
        values = {n: np.zeros(info.shape, np.float32) for n, info in spec.params.items()}
        for node in spec.layers:
            if node.type == "Python" and feeder.python is not None:
                # A Python layer's own blobs keep the values its setup gave them.
                values.update({n: b.data for n, b in zip(node.param_names, feeder.python.param_blobs(node))
                               if spec.owns(node, n)})
        if params is not None:
            values.update({n: _f32(a) for n, a in params.items() if n in values})
        self.engine = SegmentedNet(feeder, param_blobs(spec, values, None, feeder.python), providers, rng, options)
        self.spec = spec
        self.params = list(spec.params)
        extra = [v for v, _ in spec.loss_tops() if v not in spec.outputs]
        self.output_names = list(spec.outputs) + extra

    def bind(self, params: Mapping[str, np.ndarray]) -> None:
        """Make the net's parameter blobs show these arrays (no copy where they are float32 and contiguous)."""
        for name, array in params.items():
            blob = self.engine.params.get(name)
            if blob is not None and blob.data is not array:
                blob._bind(_f32(array).reshape(blob.shape), blob.diff)

    def run(self, inputs: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs (and loss tops) by value name for one forward pass."""
        self.bind(params)
        self.engine.forward(inputs=inputs)
        return {v: self.engine.blob_of(v).data.copy() for v in self.output_names}


def _f32(array: np.ndarray) -> np.ndarray:
    a = np.asarray(array)
    return a if a.dtype == np.float32 and a.flags.c_contiguous else np.ascontiguousarray(a, dtype=np.float32)


def training_net(feeder: Feeder, params: Mapping[str, np.ndarray], providers: list | None = None,
                 rng: np.random.Generator | None = None, options: ort.SessionOptions | None = None) -> TrainingNet:
    """The runtime of a TRAIN net: one fused graph, or segments around its Python layers."""
    if feeder.python is None:
        return TrainingNet(feeder.spec, params, providers, rng=rng, options=options)
    return SegmentedTrainingNet(feeder, params, providers, rng, options)


def scoring(feeder: Feeder, providers: list | None = None, options: ort.SessionOptions | None = None,
            rng: np.random.Generator | None = None) -> ForwardRunner | SegmentedRunner:
    """A scoring runner (outputs and loss tops): one inference session, or segments around Python layers."""
    if feeder.python is None:
        return scoring_runner(feeder.spec, providers, options)
    return SegmentedRunner(feeder, providers, options, rng)


__all__ = ["SegmentedNet", "SegmentedRunner", "SegmentedTrainingNet", "forward_loss", "scoring", "training_net"]
