"""One TRAIN net as an ONNX Runtime training Module: forward+backward, parameters and gradients in place.

Parameters with lr_mult 0 are frozen: ORT computes no gradient for them.
`data(name)` and `grad(name)` are numpy views of ORT's live buffers, so the
solver's numpy update works in place with no copies, and gradients of
successive forward/backward passes accumulate until `clear_grads()`
(which is how iter_size works).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime

from caffecompat.errors import CaffeCompatError
from caffecompat.net.export import LOSS_OUTPUT, export
from caffecompat.net.spec import NetSpec
from caffecompat.runtime.ort_training import api, artifacts, native_stderr_quiet
from caffecompat.runtime.providers import ort_call, session_options


class TrainingNet:
    """The TRAIN-phase net on ORT's training API."""

    def __init__(self, spec: NetSpec, params: Mapping[str, np.ndarray], device: str = "cpu") -> None:
        self.spec = spec
        exported = export(spec, params=params, training=True, loss_output=True, outputs=spec.outputs)
        self.params = exported.params
        self.side_outputs = exported.side_outputs
        self.trainable = [p for p in self.params if spec.params[p].lr_mult != 0]
        frozen = [p for p in self.params if spec.params[p].lr_mult == 0]
        self._dir = tempfile.TemporaryDirectory(prefix="caffecompat-train-")
        folder = Path(self._dir.name)
        try:
            with native_stderr_quiet():
                artifacts.generate_artifacts(exported.model, requires_grad=self.trainable, frozen_params=frozen,
                                             loss=None, artifact_directory=folder, ort_format=False)
        except Exception as e:  # ORT raises plain RuntimeErrors for graphs it cannot differentiate
            raise CaffeCompatError(f"net '{spec.name}': ONNX Runtime cannot build its training graph: {e}") from None
        # Keep ORT's default logger at warnings: session creation logs every graph transformer too.
        onnxruntime.set_default_logger_severity(3)
        self.state = api.CheckpointState.load_checkpoint(str(folder / "checkpoint"))
        self.module = api.Module(str(folder / "training_model.onnx"), self.state, None, device=device,
                                 session_options=session_options())
        self.module.train()
        self.input_names = list(self.module.input_names())
        self.output_names = list(self.module.output_names())
        if self.output_names[0] != LOSS_OUTPUT:
            raise CaffeCompatError("internal: the training graph's first output is not the loss")
        self._zero_grads = {p: np.zeros(spec.params[p].shape, np.float32) for p in frozen}

    def data(self, name: str) -> np.ndarray:
        """The live value of parameter `name` (a view: write in place)."""
        return self.state.parameters[name].data

    def grad(self, name: str) -> np.ndarray:
        """The accumulated gradient of parameter `name` (zeros for frozen parameters)."""
        if name in self._zero_grads:
            return self._zero_grads[name]
        return self.state.parameters[name].grad

    def forward_backward(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One forward and backward pass; gradients add to the accumulated ones. Returns outputs by name."""
        feed = [np.ascontiguousarray(inputs[n], dtype=np.float32) for n in self.input_names]
        outs = ort_call(f"net '{self.spec.name}' forward/backward", self.module, *feed)
        if not isinstance(outs, (list, tuple)):
            outs = [outs]
        return dict(zip(self.output_names, outs))

    def clear_grads(self) -> None:
        """Net::ClearParamDiffs: the next forward_backward starts from zero gradients."""
        self.module.lazy_reset_grad()

    def close(self) -> None:
        """Drop the temporary artifact folder."""
        self._dir.cleanup()
