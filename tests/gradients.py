"""Test helper: gradients of an exported training graph, from ONNX Runtime and by finite differences."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from caffecompat.runtime.ort_training import api, artifacts


def ort_gradients(model: onnx.ModelProto, inputs: list[np.ndarray], trainable: list[str]) -> tuple[float, dict]:
    """(loss, {param: gradient}) for one forward/backward of `model`, whose first output is the loss."""
    with tempfile.TemporaryDirectory() as d:
        artifacts.generate_artifacts(model, requires_grad=trainable, frozen_params=[], loss=None,
                                     artifact_directory=d, ort_format=False)
        state = api.CheckpointState.load_checkpoint(str(Path(d) / "checkpoint"))
        module = api.Module(str(Path(d) / "training_model.onnx"), state, None)
        module.train()
        outputs = module(*inputs)
        loss = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
        return float(loss), {p: np.array(state.parameters[p].grad) for p in trainable}


def numeric_gradient(loss_fn, values: Mapping[str, np.ndarray], name: str, eps: float = 1e-3,
                     samples: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Central differences of loss_fn(values) at `samples` random entries of values[name] (float64)."""
    rng = np.random.default_rng(seed)
    flat = values[name].reshape(-1)
    idx = rng.choice(flat.size, size=min(samples, flat.size), replace=False)
    grads = []
    for i in idx:
        old = flat[i]
        flat[i] = old + eps
        up = loss_fn(values)
        flat[i] = old - eps
        down = loss_fn(values)
        flat[i] = old
        grads.append((up - down) / (2 * eps))
    return idx, np.array(grads)
