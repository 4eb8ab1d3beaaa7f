"""Where the training time goes, per Caffe layer type: `caffecompat time` against PyTorch's profiler.

    python benchmarks/bench_layers.py [--nets resnet50,caffenet] [--iterations N]

Ours: `caffecompat time` on the same TRAIN net bench_peer.py trains (ONNX
Runtime's profiler: kernel time of each layer's forward nodes in a forward-only
run, and of its backward nodes in the fused forward+backward run), summed per
layer type. PyTorch (eager, NCHW): torch.profiler over the same net built by
benchmarks/torch_net.py; forward per type from a record_function range around
each layer, backward per type from the autograd nodes (ConvolutionBackward0 ->
Convolution, NativeBatchNormBackward0 -> BatchNorm, ...). Both are mean ms per
iteration; the two profilers count differently (ORT: kernel time only; PyTorch:
the op's CPU time with dispatch), so compare ratios between types, not the last
millisecond. Each side runs in its own process, one after the other.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_peer import BATCH, SIZE, torch_spec, train_net  # noqa: E402

# PyTorch autograd node -> the Caffe layer type whose backward it is.
BACKWARD_OF = {"ConvolutionBackward0": "Convolution", "NativeBatchNormBackward0": "BatchNorm",
               "AddcmulBackward0": "Scale", "ReluBackward0": "ReLU",
               # nn.LocalResponseNorm is composed: pad, 3-D average pool, pow, div, mul (only LRN multiplies
               # in these nets once Scale is folded into BatchNorm2d).
               "ConstantPadNdBackward0": "LRN", "AvgPool3DBackward0": "LRN", "PowBackward0": "LRN",
               "DivBackward0": "LRN", "MulBackward0": "LRN", "SqueezeBackward1": "LRN", "UnsqueezeBackward0": "LRN",
               "torch::autograd::AccumulateGrad": "(weight-diff accumulation)",
               "AddBackward0": "Eltwise", "MaxPool2DWithIndicesBackward0": "Pooling",
               "AvgPool2DBackward0": "Pooling", "AddmmBackward0": "InnerProduct", "MmBackward0": "InnerProduct",
               "NllLossBackward0": "SoftmaxWithLoss", "LogSoftmaxBackward0": "SoftmaxWithLoss",
               "NativeDropoutBackward0": "Dropout", "MulBackward1": "Dropout",
               "ViewBackward0": "InnerProduct", "ReshapeAliasBackward0": "InnerProduct"}
# PyTorch runs Caffe's BatchNorm + Scale pair as one affine BatchNorm2d (torch_net.py): one row for both.
MERGED = {"BatchNorm": "BatchNorm+Scale", "Scale": "BatchNorm+Scale"}
LINE = re.compile(r"\]\s+(\S.*?)\tforward: ([0-9.e+-]+) ms\.|\]\s+(\S.*?)\tbackward: ([0-9.e+-]+) ms\.")


def ours(name: str, iterations: int) -> dict[str, list[float]]:
    from google.protobuf import text_format

    net = train_net(name, BATCH["train", name])
    types = {lp.name: lp.type for lp in net.layer}
    with tempfile.TemporaryDirectory() as d:
        model = Path(d) / "train.prototxt"
        model.write_text(text_format.MessageToString(net))
        cli = "import sys; from caffecompat.cli import main; sys.exit(main())"
        out = subprocess.run([sys.executable, "-c", cli, "time", "-model", str(model), "-iterations",
                              str(iterations)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"caffecompat time failed:\n{out.stderr[-2000:]}")
    table: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for line in out.stderr.splitlines() + out.stdout.splitlines():
        m = LINE.search(line)
        if not m:
            continue
        layer, ms, col = (m.group(1), m.group(2), 0) if m.group(1) else (m.group(3), m.group(4), 1)
        layer = layer.strip()
        kind = types.get(layer, "Split" if "split" in layer else "other")
        kind = MERGED.get(kind, kind)
        table[kind][col] += float(ms)
    return dict(table)


def pytorch(name: str, iterations: int) -> dict[str, list[float]]:
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch_net import TorchNet

    torch.manual_seed(0)
    model = TorchNet(torch_spec(name, "train"))
    model.profile_ranges = True
    b = BATCH["train", name]
    feeds = {model.inputs[0]: torch.randn(b, 3, SIZE[name], SIZE[name]), model.inputs[1]: torch.randint(0, 1000, (b,))}
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=0.0005)

    def step() -> None:
        opt.zero_grad(set_to_none=False)
        loss, _ = model(feeds)
        loss.backward()
        opt.step()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iterations):
            step()
    table: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for ev in prof.key_averages():
        key = ev.key
        if key.startswith("caffe::"):
            kind = key[len("caffe::"):]
            table[MERGED.get(kind, kind)][0] += ev.cpu_time_total / 1000 / iterations
        elif key.startswith("autograd::engine::evaluate_function: "):
            node = key.split(": ", 1)[1].strip()
            kind = BACKWARD_OF.get(node, f"other ({node})")
            table[MERGED.get(kind, kind)][1] += ev.cpu_time_total / 1000 / iterations
    return dict(table)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default="resnet50,caffenet")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--child", nargs=2, metavar=("SYSTEM", "NET"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        system, name = args.child
        print(json.dumps((ours if system == "ours" else pytorch)(name, args.iterations)))
        return 0
    for name in args.nets.split(","):
        results = {}
        for system in ("ours", "torch"):
            out = subprocess.run([sys.executable, __file__, "--child", system, name, "--iterations",
                                  str(args.iterations)], capture_output=True, text=True)
            if out.returncode:
                print(f"{system} {name}: failed (PyTorch's side needs the [bench] extra):\n{out.stderr[-1500:]}",
                      file=sys.stderr)
                results[system] = {}
                continue
            results[system] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name} training, batch {BATCH['train', name]}, mean ms per iteration by layer type "
              f"({args.iterations} iterations):")
        cols = ('ours fwd', 'torch fwd', 'ours bwd', 'torch bwd', 'ours/torch')
        print(f"  {'type':16s} " + ' '.join(f'{c:>9s}' for c in cols))
        kinds = sorted(set(results["ours"]) | set(results["torch"]),
                       key=lambda k: -sum(results["ours"].get(k, [0, 0])))
        for k in kinds:
            o = results["ours"].get(k, [0.0, 0.0])
            t = results["torch"].get(k, [0.0, 0.0])
            ratio = f"{sum(o) / sum(t):10.2f}" if sum(t) else f"{'-':>10s}"
            print(f"  {k[:16]:16s} {o[0]:9.1f} {t[0]:9.1f} {o[1]:9.1f} {t[1]:9.1f} {ratio}")
        so = [sum(v[i] for v in results["ours"].values()) for i in (0, 1)]
        st = [sum(v[i] for v in results["torch"].values()) for i in (0, 1)]
        print(f"  {'total':16s} {so[0]:9.1f} {st[0]:9.1f} {so[1]:9.1f} {st[1]:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
