"""caffecompat against PyTorch on the CPU: the same nets, batch and solver, side by side.

    python benchmarks/bench_peer.py [--tasks train,infer] [--nets caffenet,resnet50] [--iterations N] [--rounds R]

Training: CaffeNet batch 32 (its train_val TRAIN net, data from DummyData so
that neither side reads images) and ResNet-50 batch 8 (the Kaiming deploy net
made trainable as in bench_train.py: DummyData, BatchNorm on batch statistics,
SoftmaxWithLoss); SGD, momentum 0.9, weight decay 5e-4, lr 0.001, on both.
Ours is `Solver.step(1)` (forward, backward and the update); PyTorch's is
zero_grad, forward, backward and torch.optim.SGD.step, eager and with
channels_last tensors. Inference: batch 32 of the converted ONNX model (TEST
phase, caffecompat.convert) in ONNX Runtime against the same net in PyTorch
eval mode under torch.inference_mode.

The PyTorch nets are built from the same NetSpec (benchmarks/torch_net.py).
Each system runs in a fresh process of its own, the systems alternate within
each round, and every iteration is timed: min and median over all rounds are
printed, with ratios ours / PyTorch (below 1: we are faster). The machine may be
shared, so the figures are noisy; the minimum is the least disturbed.

PyTorch comes from the optional extra: pip install 'caffecompat[bench]'. Without
it, the PyTorch side is skipped, saying so, and only ours is timed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import CAFFENET, RESNET50, resnet50_net  # noqa: E402

BATCH = {("train", "caffenet"): 32, ("train", "resnet50"): 8, ("infer", "caffenet"): 32, ("infer", "resnet50"): 32}
DEPLOY = {"caffenet": CAFFENET.parent / "deploy.prototxt", "resnet50": RESNET50}
SIZE = {"caffenet": 227, "resnet50": 224}


def caffenet_dummy_net(batch: int):
    """CaffeNet's train_val with both Data layers replaced by one TRAIN DummyData (data 227 x 227, label)."""
    from caffecompat.formats.net import read_net_prototxt
    from caffecompat.proto import caffe_pb2

    net = read_net_prototxt(CAFFENET)
    layers = [lp for lp in net.layer if lp.type != "Data"]
    del net.layer[:]
    data = net.layer.add(name="data", type="DummyData", top=["data", "label"])
    for shape, filler in (((batch, 3, 227, 227), "gaussian"), ((batch,), "constant")):
        data.dummy_data_param.shape.add(dim=list(shape))
        data.dummy_data_param.data_filler.add(type=filler, std=50.0, value=3.0)
    data.include.add(phase=caffe_pb2.TRAIN)
    for lp in layers:
        net.layer.add().CopyFrom(lp)
    return net


def train_net(name: str, batch: int):
    return caffenet_dummy_net(batch) if name == "caffenet" else resnet50_net(batch)


def solver_param(net, iterations: int):
    from caffecompat.proto import caffe_pb2

    param = caffe_pb2.SolverParameter(base_lr=0.001, lr_policy="fixed", momentum=0.9, weight_decay=0.0005,
                                      display=0, max_iter=iterations + 1, random_seed=1,
                                      snapshot_after_train=False)
    param.net_param.CopyFrom(net)
    return param


def ours_train(name: str, iterations: int) -> list[float]:
    from caffecompat import glog
    from caffecompat.solver.loop import Solver

    glog.set_stream(io.StringIO())
    times = []
    with contextlib.redirect_stderr(io.StringIO()):
        solver = Solver(solver_param(train_net(name, BATCH["train", name]), iterations), "bench_peer solver")
        solver.step(1)  # warm-up
        for _ in range(iterations):
            t0 = time.perf_counter()
            solver.step(1)
            times.append(time.perf_counter() - t0)
        solver.close()
    return times


def torch_spec(name: str, task: str):
    """The NetSpec PyTorch's net is built from: the TRAIN net of the solver, or the TEST deploy net."""
    from caffecompat.net import spec as netspec
    from caffecompat.proto import caffe_pb2

    if task == "train":
        def dummy_shapes(lp: caffe_pb2.LayerParameter) -> list[tuple[int, ...]]:
            return [tuple(sh.dim) for sh in lp.dummy_data_param.shape]

        return netspec.build(train_net(name, BATCH["train", name]), caffe_pb2.TRAIN, source=name,
                             source_shapes=dummy_shapes)
    from caffecompat.convert import convert_net

    b = BATCH["infer", name]
    return convert_net(DEPLOY[name], None, input_shapes={"data": (b, 3, SIZE[name], SIZE[name])}).spec


def torch_run(name: str, task: str, iterations: int, channels_last: bool) -> list[float]:
    import torch
    from torch_net import TorchNet

    torch.manual_seed(0)
    spec = torch_spec(name, task)
    model = TorchNet(spec)
    b = BATCH[task, name]
    data = torch.randn(b, 3, SIZE[name], SIZE[name])
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    data = data.contiguous(memory_format=fmt)
    feeds = {model.inputs[0]: data}
    if len(model.inputs) > 1:
        feeds[model.inputs[1]] = torch.randint(0, 1000, (b,))
    times = []
    if task == "train":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=0.0005)
        for i in range(iterations + 1):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=False)
            loss, _ = model(feeds)
            loss.backward()
            opt.step()
            if i:  # the first is the warm-up
                times.append(time.perf_counter() - t0)
    else:
        model.eval()
        with torch.inference_mode():
            for i in range(iterations + 1):
                t0 = time.perf_counter()
                model(feeds)
                if i:
                    times.append(time.perf_counter() - t0)
    return times


def ours_infer(name: str, iterations: int) -> list[float]:
    import onnxruntime as ort

    from caffecompat.convert import convert_net

    b = BATCH["infer", name]
    conv = convert_net(DEPLOY[name], None, input_shapes={"data": (b, 3, SIZE[name], SIZE[name])})
    session = ort.InferenceSession(conv.model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"data": np.random.default_rng(0).standard_normal((b, 3, SIZE[name], SIZE[name]), dtype=np.float32)}
    times = []
    for i in range(iterations + 1):
        t0 = time.perf_counter()
        session.run(None, feeds)
        if i:
            times.append(time.perf_counter() - t0)
    return times


def child(system: str, task: str, name: str, iterations: int) -> None:
    if system == "ours":
        times = ours_train(name, iterations) if task == "train" else ours_infer(name, iterations)
    else:
        times = torch_run(name, task, iterations, channels_last=system == "torch-cl")
    print(json.dumps({"times": times}))


def torch_version() -> str | None:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__, torch.get_num_threads())"],
                         capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="train,infer", help="comma-separated: train, infer")
    ap.add_argument("--nets", default="caffenet,resnet50", help="comma-separated: caffenet, resnet50")
    ap.add_argument("--iterations", type=int, default=4, help="timed iterations per process (after a warm-up)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds; each runs every system once, alternating")
    ap.add_argument("--child", nargs=3, metavar=("SYSTEM", "TASK", "NET"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, args.iterations)
        return 0
    for name in args.nets.split(","):
        if name not in DEPLOY:
            print(f"--nets {name}: unknown; use caffenet and/or resnet50", file=sys.stderr)
            return 1
        if not DEPLOY[name].exists():
            print(f"{name}: needs {DEPLOY[name]} (../shared beside the checkout, or set CAFFECOMPAT_SHARED)",
                  file=sys.stderr)
            return 1
    for task in args.tasks.split(","):
        if task not in ("train", "infer"):
            print(f"--tasks {task}: unknown; use train and/or infer", file=sys.stderr)
            return 1
    version = torch_version()
    systems = ["ours"]
    if version is None:
        print("PyTorch: skipped, not installed (pip install 'caffecompat[bench]'); timing ours only")
    else:
        torch_ver, threads = version.split()
        systems += ["torch", "torch-cl"]
        print(f"PyTorch {torch_ver} CPU, {threads} threads: torch = eager NCHW, torch-cl = channels_last")
    print(f"Each system in a fresh process, alternating, {args.rounds} rounds x {args.iterations} timed iterations "
          "(after one warm-up); min / median per iteration; the machine may be shared (noisy)")
    for task in args.tasks.split(","):
        for name in args.nets.split(","):
            times: dict[str, list[float]] = {s: [] for s in systems}
            for r in range(args.rounds):
                order = systems if r % 2 == 0 else systems[::-1]
                for system in order:
                    cmd = [sys.executable, __file__, "--child", system, task, name, "--iterations",
                           str(args.iterations)]
                    out = subprocess.run(cmd, capture_output=True, text=True)
                    if out.returncode:
                        print(f"{system} {task} {name}: child failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                        return 1
                    times[system] += json.loads(out.stdout.strip().splitlines()[-1])["times"]
            b = BATCH[task, name]
            head = "training (SGD step)" if task == "train" else "inference"
            print(f"{name} {head}, batch {b}:")
            mins = {s: min(t) for s, t in times.items()}
            meds = {s: statistics.median(t) for s, t in times.items()}
            for s in systems:
                rate = f", {b / mins[s]:.0f} / {b / meds[s]:.0f} images/s" if task == "infer" else ""
                ratio = (f"; ours / {s} = {mins['ours'] / mins[s]:.2f} (min), {meds['ours'] / meds[s]:.2f} (median)"
                         if s != "ours" else "")
                print(f"  {s:9s} {mins[s] * 1000:7.0f} / {meds[s] * 1000:7.0f} ms{rate}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
