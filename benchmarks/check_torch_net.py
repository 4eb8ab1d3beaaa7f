"""Check that bench_peer.py's PyTorch nets compute what ours do: every blob of the TEST nets, same weights.

    python benchmarks/check_torch_net.py

CaffeNet (batch 2) and ResNet-50 (batch 1) deploy nets are converted with
random weights (He-scaled convolutions and InnerProducts, BatchNorm statistics
and Scale factors away from their identity values), the same values are copied
into benchmarks/torch_net.py's module, and every blob both compute is compared:
the largest difference relative to the blob's largest magnitude must stay below
1e-4 (float32 sums in a different order). Exit status 1 otherwise.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_peer import DEPLOY, SIZE  # noqa: E402

TOLERANCE = 1e-4


def randomize(conv, rng: np.random.Generator) -> None:
    """Weights that make every blob informative (deploy fillers leave many of them constant)."""
    for node in conv.spec.layers:
        p = [conv.params[n] for n in node.param_names if n in conv.params]
        if node.type in ("Convolution", "InnerProduct"):
            p[0][...] = rng.standard_normal(p[0].shape) * np.sqrt(2.0 / np.prod(p[0].shape[1:]))
            if len(p) > 1:
                p[1][...] = rng.standard_normal(p[1].shape) * 0.1
        elif node.type == "BatchNorm":
            p[0][...] = rng.standard_normal(p[0].shape) * 0.1
            p[1][...] = rng.uniform(0.5, 2.0, p[1].shape)
            p[2][...] = 2.0  # the scale factor: stored statistics are the blobs / 2
        elif node.type == "Scale":
            p[0][...] = rng.uniform(0.5, 1.5, p[0].shape)
            if len(p) > 1:
                p[1][...] = rng.standard_normal(p[1].shape) * 0.1


def copy_weights(conv, model) -> None:
    import torch

    with torch.no_grad():
        bn = None
        for node in conv.spec.layers:
            key = f"l{node.index}"
            p = [torch.from_numpy(np.asarray(conv.params[n])) for n in node.param_names]
            if node.type in ("Convolution", "InnerProduct"):
                m = model.mods[key]
                m.weight.copy_(p[0].reshape(m.weight.shape))
                if m.bias is not None:
                    m.bias.copy_(p[1])
            elif node.type == "BatchNorm":
                bn = model.mods[key]
                bn.running_mean.copy_(p[0] / p[2][0])
                bn.running_var.copy_(p[1] / p[2][0])
            elif node.type == "Scale" and key in model.mods:
                m = model.mods[key]
                m.weight.copy_(p[0].reshape(m.weight.shape))
                if m.bias is not None:
                    m.bias.copy_(p[1].reshape(m.bias.shape))
            elif node.type == "Scale":  # folded into the BatchNorm2d before it
                bn.weight.copy_(p[0])
                bn.bias.copy_(p[1])


def main() -> int:
    if importlib.util.find_spec("torch") is None:
        print("check_torch_net: skipped, PyTorch is not installed (pip install 'caffecompat[bench]')")
        return 0
    import onnxruntime as ort
    from torch import from_numpy, no_grad
    from torch_net import TorchNet

    from caffecompat.convert import convert_net

    failed = False
    for name, batch in (("caffenet", 2), ("resnet50", 1)):
        shape = (batch, 3, SIZE[name], SIZE[name])
        conv = convert_net(DEPLOY[name], None, input_shapes={"data": shape}, keep_blobs=True)
        randomize(conv, np.random.default_rng(1))
        model = TorchNet(conv.spec).eval()
        copy_weights(conv, model)
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32) * 30
        session = ort.InferenceSession(conv.model.SerializeToString(), providers=["CPUExecutionProvider"])
        ours = dict(zip(conv.outputs, session.run(None, {"data": x})))
        with no_grad():
            _, theirs = model({model.inputs[0]: from_numpy(x)})
        diffs = []
        for blob, value in ours.items():
            other = theirs.get(conv.spec.blob_values.get(blob, blob))
            if other is not None:
                diffs.append((float(np.abs(value - other.numpy()).max() / max(np.abs(value).max(), 1e-30)), blob))
        worst = max(diffs)
        ok = worst[0] < TOLERANCE and len(diffs) > 10
        failed |= not ok
        print(f"{name}: {len(diffs)} blobs compared, worst relative difference {worst[0]:.1e} ({worst[1]}): "
              f"{'ok' if ok else 'FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
