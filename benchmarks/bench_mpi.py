"""Data-parallel training over MPI: CaffeNet images/s on one process against several, and the reduction's cost.

    python benchmarks/bench_mpi.py [--batch 32] [--iterations 4] [--processes 2] [--gpu-step-ms 200]

Trains CaffeNet (../shared/bvlc-models, generated JPEG data) for a few
iterations at the same global batch two ways on this machine:

1. one process with every core as ONNX Runtime threads (`caffecompat train`);
2. N processes under mpiexec with batch/N each and cores/N threads each
   (`mpiexec -n N caffecompat train`), the gradients summed by one in-place
   Allreduce of the flat diff buffer per iteration.

It reports images/s of each, and per iteration of the MPI run: the time in
the Allreduce itself, the time ranks wait for each other before it, and the
bare forward+backward.

Scaling model (printed with this run's numbers). Each iteration every rank
sends and receives the gradient buffer once through a ring Allreduce: with S
bytes of parameters (CaffeNet: 61.0 M floats, S = 244 MB), each rank moves
2 (N-1)/N S bytes over its slowest link, so the reduction takes

    t_reduce = 2 (N-1)/N * S / B                 (B: the slowest link's bandwidth per rank)

plus, on GPUs reduced through host memory, one device-to-host and one
host-to-device copy of S per iteration: 2 S / B_pcie (~20 ms for CaffeNet on
PCIe 4.0 x16 at ~25 GB/s). The reduction runs after the backward (the step
graph is one run, so it cannot overlap), so with t_step the time of one
forward+backward+update, efficiency is t_step / (t_step + t_reduce), and 90%
needs t_reduce <= t_step / 9, i.e.

    B >= 9 * 2 (N-1)/N * S / t_step.

For 8 GPUs in one machine (host-memory Allreduce, N = 8) and for 4 machines
(one process each, N = 4, B the network), the run prints B for the measured
CPU step and for a GPU step of --gpu-step-ms (default 200 ms: CaffeNet at
batch 256 on one current GPU is of that order; pass your own).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def child(args: argparse.Namespace) -> None:
    """One training run (a rank, under mpiexec); rank 0 prints one JSON line."""
    import contextlib
    import io

    from caffecompat import glog, parallel
    from caffecompat.proto import caffe_pb2
    from caffecompat.solver.loop import Solver

    group = parallel.activate()
    param = caffe_pb2.SolverParameter(base_lr=0.001, lr_policy="fixed", momentum=0.9, weight_decay=0.0005,
                                      display=0, max_iter=10**6, random_seed=1, snapshot_after_train=False)
    param.net = args.net
    glog.set_stream(io.StringIO())
    with contextlib.redirect_stderr(io.StringIO()):
        solver = Solver(param, "bench solver")
        solver.step(1)  # warm-up
        inputs = solver.train.next_inputs()
        t0 = time.perf_counter()
        for _ in range(args.iterations):
            solver.net.clear_grads()
            solver.net.forward_backward(inputs)
        bare = (time.perf_counter() - t0) / args.iterations
        group.reduce_seconds = group.wait_seconds = 0.0
        group.reductions = 0
        t0 = time.perf_counter()
        solver.step(args.iterations)
        loop = (time.perf_counter() - t0) / args.iterations
        params = int(solver.net.flat_diff.size)
        solver.close()
    glog.set_stream(None)
    if group.root:
        from caffecompat.runtime import providers

        print(json.dumps({"loop_s": loop, "bare_s": bare, "params": params, "processes": group.size,
                          "threads": providers.INTRA_OP_THREADS or os.cpu_count(),
                          "reduce_s": group.reduce_seconds / max(1, group.reductions),
                          "wait_s": group.wait_seconds / max(1, group.reductions)}), flush=True)


def run(command: list[str]) -> dict:
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if out.returncode:
        raise SystemExit(f"failed: {' '.join(command)}\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32, help="global batch (each of N processes takes batch/N)")
    ap.add_argument("--iterations", type=int, default=4, help="timed iterations per run")
    ap.add_argument("--processes", type=int, default=2, help="processes of the MPI run")
    ap.add_argument("--gpu-step-ms", type=float, default=200.0, help="a GPU's step time, for the scaling model")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--net", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    import bench_train
    from google.protobuf import text_format

    from caffecompat.parallel.launch import find_mpiexec

    if not bench_train.CAFFENET.exists():
        print(f"needs {bench_train.CAFFENET} (../shared beside the checkout)", file=sys.stderr)
        return 1
    mpiexec = find_mpiexec()
    n = args.processes
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        nets = {}
        for name, batch in (("one", args.batch), ("mpi", args.batch // n)):
            sub = folder / name
            sub.mkdir()
            net = bench_train.caffenet_net(sub, batch)
            nets[name] = sub / "net.prototxt"
            nets[name].write_text(text_format.MessageToString(net))
        me = [sys.executable, __file__, "--child", "--iterations", str(args.iterations)]
        one = run([*me, "--net", str(nets["one"])])
        many = run([mpiexec, "-n", str(n), *me, "--net", str(nets["mpi"])])
    cores = os.cpu_count()
    size = one["params"] * 4
    print(f"CaffeNet, global batch {args.batch}, this machine: {cores} cores, {args.iterations} timed iterations")
    print(f"  1 process x {one['threads']} threads, batch {args.batch}:   {one['loop_s'] * 1000:7.0f} ms/it = "
          f"{args.batch / one['loop_s']:6.1f} images/s (bare forward+backward {one['bare_s'] * 1000:.0f} ms)")
    print(f"  {n} processes x {many['threads']} thread(s), batch {args.batch // n} each: "
          f"{many['loop_s'] * 1000:7.0f} ms/it = {args.batch / many['loop_s']:6.1f} images/s "
          f"(bare forward+backward {many['bare_s'] * 1000:.0f} ms); {n}-process / 1-process speed = "
          f"{one['loop_s'] / many['loop_s']:.2f}")
    print(f"  reduction per iteration: Allreduce of {size / 1e6:.0f} MB {many['reduce_s'] * 1000:.0f} ms "
          f"({size / many['reduce_s'] / 1e9:.2f} GB/s through shared memory), waiting for the other ranks "
          f"before it {many['wait_s'] * 1000:.0f} ms; {many['reduce_s'] / many['loop_s'] * 100:.0f}% of the "
          "iteration")
    print(f"Scaling model (S = {size / 1e6:.0f} MB of gradients; 90% efficiency needs "
          "B >= 9 x 2(N-1)/N x S / t_step):")
    step = many["loop_s"] - many["reduce_s"]
    cases = ((f"4 machines, one process each like these (N = 4, B = the network), this run's {step * 1000:.0f} ms "
              "step", 4, step),
             (f"8 GPUs in one machine (N = 8, B = host memory per GPU), a {args.gpu_step_ms:.0f} ms GPU step", 8,
              args.gpu_step_ms / 1000),
             (f"4 machines with one GPU each (N = 4, B = the network), a {args.gpu_step_ms:.0f} ms GPU step", 4,
              args.gpu_step_ms / 1000))
    for label, ranks, seconds in cases:
        moved = 2 * (ranks - 1) / ranks * size
        need = 9 * moved / seconds
        print(f"  {label}: {moved / 1e6:.0f} MB per rank per iteration, needs B >= {need / 1e9:.2f} GB/s "
              f"({need * 8 / 1e9:.1f} Gbit/s)")
    print(f"  GPUs reduce through host memory: + 2 x {size / 1e6:.0f} MB over PCIe per iteration "
          f"(~{2 * size / 25e9 * 1000:.0f} ms at 25 GB/s), which alone costs "
          f"{2 * size / 25e9 / (args.gpu_step_ms / 1000) * 100:.0f}% of a {args.gpu_step_ms:.0f} ms step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
