"""Training speed, memory and start-up on the CPU: CaffeNet (batch 32) and ResNet-50 (batch 8).

    python benchmarks/bench_train.py [--nets caffenet,resnet50] [--iterations N] [--rounds R]

For each net, in a child process of its own (so its peak RSS is its own):

1. start-up: seconds from the process's start to the first iteration (the
   Solver built, nets set up, sessions created), the figure Caffe shows as
   the time before "Iteration 0";
2. the full `caffecompat train` loop (data layer with prefetch, display, lr,
   the update on the runtime) in ms/iteration, best of R blocks;
3. the bare step: forward+backward of one fixed batch, no update;
4. peak RSS of the process.

This machine's peak is measured in a child process of its own with
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed from its environment (a forced
core type such as Haswell makes OpenBLAS run narrower kernels than the CPU
has, which understates the peak): numpy float32 matrix products, best of
several, with the OpenBLAS kernel that ran read from threadpoolctl and
printed. Beside it, the theoretical figure from /proc/cpuinfo: cores x clock x
FLOP/cycle/core, where FLOP/cycle = 2 (an FMA) x fp32 lanes of the widest
vector flag (avx512f 16, avx2+fma 8) x FMA units per core; the unit count is
not in /proc/cpuinfo, so 2 is ASSUMED (true of Zen 2-4 and of Xeons with two
AVX-512 ports; some Xeons have one). The loop's FLOP rate is reported as a
fraction of both: FLOPs per iteration = 2 x the multiply-adds of every
Convolution, Deconvolution and InnerProduct layer's forward, weight diff and
bottom diff (the latter two only where Net::Backward computes them). The
benchmark only removes those variables for its peak child; tests and CI
never change them.

Targets (issue: runtime): CaffeNet >= 60% of the measured SGEMM peak, peak RSS <= 1.25 GB,
<= 5 s to the first iteration. Reference figures measured earlier on this kind
of machine: the original Caffe (OpenBLAS) 2030 ms/it, 1041 MB, 3.5 s; ORT
training 1.19.2 1770-1830 ms/it, 1808 MB, 14 s. ResNet-50 b8: Caffe 3.3 s/it, 3062 MB.
CaffeNet reads ../shared/bvlc-models, ResNet-50 ../shared/zoo; data is generated in a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("CAFFECOMPAT_SHARED", ROOT.parent / "shared"))  # as tests/conftest.py
CAFFENET = SHARED / "bvlc-models" / "models" / "bvlc_reference_caffenet" / "train_val.prototxt"
RESNET50 = SHARED / "zoo" / "resnet50" / "ResNet-50-deploy.prototxt"


def sgemm_peak(n: int = 2048, repeats: int = 5) -> float:
    """This process's float32 matrix-product rate in GFLOP/s (numpy's BLAS, best of `repeats`)."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def blas_info() -> list[dict]:
    """threadpoolctl's view of the BLAS libraries loaded in this process (empty without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [i for i in threadpool_info() if i.get("user_api") == "blas"]


# OpenBLAS reads these at load time; forcing the core type (e.g. Haswell) picks narrower kernels than the CPU has.
OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def measured_peak() -> dict:
    """The SGEMM peak measured in a child process whose environment lacks OPENBLAS_OVERRIDES."""
    env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_OVERRIDES}
    out = subprocess.run([sys.executable, __file__, "--child", "peak"], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def theoretical_peak() -> dict | None:
    """cores x clock x FLOP/cycle/core from /proc/cpuinfo (2 FMA units per core assumed), or None where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    blocks = [b for b in text.split("\n\n") if "processor" in b]
    if not blocks:
        return None
    fields = dict(line.split(":", 1) for line in blocks[0].splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    lanes = 16 if "avx512f" in flags else 8 if {"avx2", "fma"} <= flags else 4 if "avx" in flags else None
    mhz = [float(b.split("cpu MHz", 1)[1].split(":", 1)[1].split()[0]) for b in blocks if "cpu MHz" in b]
    if lanes is None or not mhz:
        return None
    fma_units = 2  # an assumption: /proc/cpuinfo does not say how many FMA pipes a core has
    per_cycle = 2 * lanes * fma_units
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else len(blocks)
    ghz = max(mhz) / 1000
    isa = "avx512f" if lanes == 16 else "avx2+fma" if lanes == 8 else "avx"
    return {"gflops": cores * ghz * per_cycle, "cores": cores, "ghz": ghz, "per_cycle": per_cycle, "isa": isa,
            "lanes": lanes, "fma_units": fma_units, "model": fields.get("model name", "?")}


def make_lmdb(folder: Path, records: int, rng: np.random.Generator) -> None:
    """An LMDB of JPEG-encoded 256 x 256 Datum records with labels 0..999, and a flat mean."""
    import cv2
    import lmdb

    from caffecompat.formats.blob import write_binaryproto
    from caffecompat.proto import caffe_pb2

    env = lmdb.open(str(folder / "train_lmdb"), map_size=1 << 30)
    with env.begin(write=True) as txn:
        for i in range(records):
            img = cv2.GaussianBlur(rng.integers(0, 255, size=(256, 256, 3), dtype=np.uint8), (7, 7), 2)
            ok, jpg = cv2.imencode(".jpg", img)
            datum = caffe_pb2.Datum(channels=3, height=256, width=256, data=jpg.tobytes(), encoded=True,
                                    label=int(rng.integers(0, 1000)))
            txn.put(f"{i:08d}_img{i}.jpg".encode(), datum.SerializeToString())
    env.close()
    write_binaryproto(folder / "mean.binaryproto", np.full((1, 3, 256, 256), 110.0, np.float32))


def caffenet_net(folder: Path, batch: int):
    """CaffeNet's TRAIN net on the generated LMDB (its TEST data layer dropped)."""
    from caffecompat.formats.net import read_net_prototxt
    from caffecompat.proto import caffe_pb2

    make_lmdb(folder, 4 * batch, np.random.default_rng(0))
    net = read_net_prototxt(CAFFENET)
    keep = [lp for lp in net.layer if not (lp.type == "Data" and lp.include and lp.include[0].phase == caffe_pb2.TEST)]
    del net.layer[:]
    net.layer.extend(keep)
    for lp in net.layer:
        if lp.type == "Data":
            lp.data_param.source = str(folder / "train_lmdb")
            lp.data_param.batch_size = batch
            lp.transform_param.mean_file = str(folder / "mean.binaryproto")
    return net


def resnet50_net(batch: int):
    """ResNet-50's deploy net made trainable: DummyData in, BatchNorm on batch statistics, SoftmaxWithLoss."""
    from caffecompat.formats.net import read_net_prototxt
    from caffecompat.proto import caffe_pb2

    net = read_net_prototxt(RESNET50)
    del net.input[:]
    del net.input_shape[:]
    del net.input_dim[:]
    layers = [lp for lp in net.layer if lp.type not in ("Input", "Softmax")]
    del net.layer[:]
    data = net.layer.add(name="data", type="DummyData", top=["data", "label"])
    for shape, filler in (((batch, 3, 224, 224), "gaussian"), ((batch,), "constant")):
        data.dummy_data_param.shape.add(dim=list(shape))
        data.dummy_data_param.data_filler.add(type=filler, std=1.0, value=3.0)
    for lp in layers:
        if lp.type == "BatchNorm":
            lp.batch_norm_param.use_global_stats = False
        net.layer.add().CopyFrom(lp)
    last = layers[-1].top[0]
    net.layer.add(name="loss", type="SoftmaxWithLoss", bottom=[last, "label"], top=["loss"])
    net.layer[0].include.add(phase=caffe_pb2.TRAIN)
    return net


def flops_per_iteration(spec) -> float:
    """2 x multiply-adds of Convolution/Deconvolution/InnerProduct forward and the diffs Backward computes."""
    from caffecompat.net.backward import plan

    bplan = plan(spec)
    total = 0.0
    for i, node in enumerate(spec.layers):
        if node.type not in ("Convolution", "Deconvolution", "InnerProduct") or not node.param_shapes:
            continue
        w = node.param_shapes[0]
        big = node.top_shapes[0] if node.type != "Deconvolution" else node.bottom_shapes[0]
        if node.type == "InnerProduct":
            macs = float(np.prod(w)) * float(np.prod(node.top_shapes[0][:-1]))
        else:
            # Each output position of the larger side does (weights / out or in channels) multiply-adds.
            macs = float(np.prod(big)) * float(np.prod(w[1:]))
        need = bplan.layer_need[i]
        passes = 1 + (need and bplan.param_need[i][0]) + (need and bplan.bottom_need[i][0])
        total += 2 * macs * passes
    return total


def child(args: argparse.Namespace) -> None:
    """Build and time one net; print one JSON line."""
    start = float(args.start)
    from caffecompat import glog
    from caffecompat.proto import caffe_pb2
    from caffecompat.solver.loop import Solver

    imported = time.time()
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        net = caffenet_net(folder, args.batch) if args.child == "caffenet" else resnet50_net(args.batch)
        setup_start = time.time()
        param = caffe_pb2.SolverParameter(base_lr=0.001, lr_policy="step", gamma=0.1, stepsize=100000, momentum=0.9,
                                          weight_decay=0.0005, display=1, max_iter=args.iterations, random_seed=1,
                                          snapshot_after_train=False)
        param.net_param.CopyFrom(net)
        glog.set_stream(io.StringIO())
        with contextlib.redirect_stderr(io.StringIO()):
            solver = Solver(param, "bench solver")
            ready = time.time()
            solver.step(1)  # warm-up
            inputs = solver.train.next_inputs()
            bare = loop = float("inf")
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                for _ in range(args.iterations):
                    solver.net.clear_grads()
                    solver.net.forward_backward(inputs)
                bare = min(bare, (time.perf_counter() - t0) / args.iterations)
                solver.param.max_iter = solver.iter + args.iterations
                t0 = time.perf_counter()
                solver.step(args.iterations)
                loop = min(loop, (time.perf_counter() - t0) / args.iterations)
            flops = flops_per_iteration(solver.spec)
            solver.close()
        glog.set_stream(None)
    # Start-up: interpreter and imports, then the Solver's set-up; generating the data does not count.
    print(json.dumps({"startup_s": (imported - start) + (ready - setup_start),
                      "setup_s": ready - setup_start, "bare_s": bare, "loop_s": loop, "flops": flops,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default="caffenet,resnet50", help="comma-separated: caffenet, resnet50")
    ap.add_argument("--iterations", type=int, default=3, help="iterations per timed block")
    ap.add_argument("--rounds", type=int, default=2, help="alternating bare/loop blocks; the best of each counts")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--start", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "peak":
        print(json.dumps({"gflops": sgemm_peak(), "blas": blas_info(),
                          "env": {k: os.environ.get(k) for k in OPENBLAS_OVERRIDES}}))
        return 0
    if args.child:
        child(args)
        return 0
    batches = {"caffenet": 32, "resnet50": 8}
    needs = {"caffenet": CAFFENET, "resnet50": RESNET50}
    for name in args.nets.split(","):
        if name not in needs:
            print(f"--nets {name}: unknown; use caffenet and/or resnet50", file=sys.stderr)
            return 1
        if not needs[name].exists():
            print(f"{name}: needs {needs[name]} (../shared beside the checkout, or set CAFFECOMPAT_SHARED)",
                  file=sys.stderr)
            return 1
    inherited = {k: os.environ[k] for k in OPENBLAS_OVERRIDES if k in os.environ}
    here = sgemm_peak()
    print(f"SGEMM in this process (environment as given: {inherited or 'no OpenBLAS overrides'}): "
          f"{here:.1f} GFLOP/s")
    m = measured_peak()
    peak = m["gflops"]
    kernels = ", ".join(f"{i.get('internal_api')} {i.get('version')} kernel {i.get('architecture')} "
                        f"{i.get('num_threads')} threads" for i in m["blas"]) or "unknown (pip install threadpoolctl)"
    print(f"SGEMM peak, child without {'/'.join(OPENBLAS_OVERRIDES)} (numpy float32 2048^3, best of 5): "
          f"{peak:.1f} GFLOP/s; BLAS: {kernels}")
    theory = theoretical_peak()
    if theory:
        print(f"Theoretical fp32 peak from /proc/cpuinfo ({theory['model']}): {theory['cores']} cores x "
              f"{theory['ghz']:.3f} GHz x {theory['per_cycle']} FLOP/cycle (2 per FMA x {theory['lanes']} "
              f"{theory['isa']} lanes x {theory['fma_units']} FMA units, the unit count ASSUMED) = "
              f"{theory['gflops']:.1f} GFLOP/s")
        if peak > theory["gflops"]:
            print("  (the measured rate exceeds it: the cores run above /proc/cpuinfo's 'cpu MHz', which a hypervisor "
                  f"reports as the nominal clock; {peak / theory['per_cycle'] / theory['cores']:.2f} GHz would "
                  "account for the measurement, so this figure is a floor here)")
    else:
        print("Theoretical fp32 peak: /proc/cpuinfo has no readable flags and clock here")
    for name in args.nets.split(","):
        cmd = [sys.executable, __file__, "--child", name, "--batch", str(batches[name]), "--iterations",
               str(args.iterations), "--rounds", str(args.rounds), "--start", repr(time.time())]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if out.returncode:
            print(f"{name}: child failed:\n{out.stderr[-2000:]}", file=sys.stderr)
            return 1
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rate = r["flops"] / r["loop_s"] / 1e9
        print(f"{name}, batch {batches[name]}, CPU, best of {args.rounds} blocks of {args.iterations} iterations:")
        print(f"  start-up to the first iteration: {r['startup_s']:.1f} s (net setup and sessions {r['setup_s']:.1f} s;"
              " target <= 5 s)")
        print(f"  caffecompat train loop:  {r['loop_s'] * 1000:.0f} ms/it")
        print(f"  bare forward+backward:   {r['bare_s'] * 1000:.0f} ms/it "
              f"(loop / bare = {r['loop_s'] / r['bare_s']:.3f})")
        print(f"  work per iteration:      {r['flops'] / 1e9:.1f} GFLOP -> {rate:.1f} GFLOP/s = "
              f"{rate / peak * 100:.0f}% of the measured SGEMM peak (target >= 60% for CaffeNet)"
              + (f", {rate / theory['gflops'] * 100:.0f}% of the theoretical peak" if theory else ""))
        print(f"  peak RSS:                {r['peak_mb']:.0f} MB (target <= 1250 MB for CaffeNet)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
