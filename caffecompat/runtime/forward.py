"""Run a NetSpec forward in an ONNX Runtime inference session (deploy nets, TEST nets, convert checks)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from caffecompat.net.export import export
from caffecompat.net.spec import NetSpec
from caffecompat.proto import caffe_pb2
from caffecompat.runtime.fed_inputs import draw_fed_inputs, keep_carried
from caffecompat.runtime.providers import inference_session, ort_call


def scoring_runner(spec: NetSpec, providers: list | None = None, options=None) -> ForwardRunner:
    """A runner whose outputs are the net's outputs plus every loss top (for Net::Forward's loss)."""
    extra = [v for v, _ in spec.loss_tops() if v not in spec.outputs]
    return ForwardRunner(spec, outputs=list(spec.outputs) + extra, providers=providers, options=options)


def forward_loss(spec: NetSpec, outputs: Mapping[str, np.ndarray]) -> np.float32:
    """Net::Forward's loss: the sum over loss tops of loss_weight * sum(top), in float32."""
    loss = np.float32(0)
    for value, weight in spec.loss_tops():
        loss = np.float32(loss + np.float32(weight) * np.float32(np.sum(outputs[value], dtype=np.float32)))
    return loss


class ForwardRunner:
    """An inference session for `spec` whose parameters are graph inputs, fed on every call.

    Feeding parameters lets TEST nets share the solver's live weights without
    rebuilding the session. A TRAIN-phase net runs as Caffe runs it in that
    phase: Dropout masks drawn from `rng`, BatchNorm on batch statistics.
    """

    def __init__(self, spec: NetSpec, outputs: Iterable[str] | None = None, providers: list | None = None,
                 options=None, rng: np.random.Generator | None = None):
        self.spec = spec
        exported = export(spec, params_as_inputs=True, outputs=outputs, training=spec.phase == caffe_pb2.TRAIN,
                          carry_state=True)
        self.params = exported.params
        self.fed_inputs = exported.fed_inputs
        self.carried: dict[str, np.ndarray] = {}  # recurrent states the next pass starts from
        self.rng = rng if rng is not None else np.random.default_rng()
        self.output_names = [o.name for o in exported.model.graph.output]
        # A net with no outputs (data into Silence layers) computes nothing ONNX Runtime could return.
        self.session = inference_session(exported.model.SerializeToString(), providers or ["CPUExecutionProvider"],
                                         options) if self.output_names else None

    def run(self, inputs: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by value name for one forward pass."""
        if self.session is None:
            return {}
        feed = {name: np.ascontiguousarray(inputs[name], dtype=np.float32) for name in self.spec.inputs}
        for p in self.params:
            feed[p] = params[p]
        feed.update(draw_fed_inputs(self.fed_inputs, self.carried, self.rng))
        outs = dict(zip(self.output_names,
                        ort_call(f"net '{self.spec.name}' forward", self.session.run, self.output_names, feed)))
        keep_carried(self.fed_inputs, self.carried, outs)
        return outs
