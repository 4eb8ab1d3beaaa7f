"""Training loop overhead: `caffecompat train`'s loop against the bare ORT forward+backward.

    python benchmarks/bench_train.py [--iterations N] [--batch B]

CaffeNet's architecture (read from ../shared/bvlc-models, the real
train_val.prototxt; its Data layer pointed at a generated LMDB of 256 x 256
JPEG records, crop 227, mirror, batch 32) trained on the CPU:

1. the full Solver loop (data from the prefetching Data layer, display, lr,
   the numpy SGD update in place on ORT's buffers);
2. the bare ORT training Module on the same graph, fed one fixed batch, no
   update: the floor the loop cannot beat.

Prints iterations/s of both, the loop's overhead (target <= 10%), the share
of the loop spent waiting for data, the data pipeline's own rate against the
rate training consumes batches, and the process's peak RSS. Everything is generated in a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import resource
import sys
import tempfile
import time
from pathlib import Path

import cv2
import lmdb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from caffecompat import glog  # noqa: E402
from caffecompat.formats.blob import write_binaryproto  # noqa: E402
from caffecompat.formats.net import read_net_prototxt  # noqa: E402
from caffecompat.proto import caffe_pb2  # noqa: E402
from caffecompat.solver.loop import Solver  # noqa: E402

CAFFENET = (Path(__file__).resolve().parent.parent.parent / "shared" / "bvlc-models" / "models"
            / "bvlc_reference_caffenet" / "train_val.prototxt")


def make_lmdb(folder: Path, records: int, rng: np.random.Generator) -> Path:
    """An LMDB of JPEG-encoded 256 x 256 Datum records with labels 0..999."""
    path = folder / "train_lmdb"
    env = lmdb.open(str(path), map_size=1 << 30)
    with env.begin(write=True) as txn:
        for i in range(records):
            img = rng.integers(0, 255, size=(256, 256, 3), dtype=np.uint8)
            img = cv2.GaussianBlur(img, (7, 7), 2)
            ok, jpg = cv2.imencode(".jpg", img)
            datum = caffe_pb2.Datum(channels=3, height=256, width=256, data=jpg.tobytes(), encoded=True,
                                    label=int(rng.integers(0, 1000)))
            txn.put(f"{i:08d}_img{i}.jpg".encode(), datum.SerializeToString())
    env.close()
    write_binaryproto(folder / "mean.binaryproto", np.full((1, 3, 256, 256), 110.0, np.float32))
    return path


def solver_param(folder: Path, batch: int, iterations: int) -> caffe_pb2.SolverParameter:
    """CaffeNet's training net on the generated data, no test nets, no snapshots."""
    net = read_net_prototxt(CAFFENET)
    keep = [lp for lp in net.layer if not (lp.type == "Data" and lp.include and lp.include[0].phase == caffe_pb2.TEST)]
    del net.layer[:]
    net.layer.extend(keep)
    for lp in net.layer:
        if lp.type == "Data":
            lp.data_param.source = str(folder / "train_lmdb")
            lp.data_param.batch_size = batch
            lp.transform_param.mean_file = str(folder / "mean.binaryproto")
    param = caffe_pb2.SolverParameter(base_lr=0.001, lr_policy="step", gamma=0.1, stepsize=100000, momentum=0.9,
                                      weight_decay=0.0005, display=1, max_iter=iterations, random_seed=1,
                                      snapshot_after_train=False)
    param.net_param.CopyFrom(net)
    return param


def pipeline_rate(solver: Solver, batches: int) -> float:
    """Batches/s of a fresh Data layer source for the training net, drained as fast as possible."""
    from caffecompat.data import make_source

    layer = next(n.param for n in solver.spec.layers if n.type == "Data")
    source = make_source(layer, caffe_pb2.TRAIN, np.random.default_rng(1))
    try:
        source.next_batch()
        t0 = time.perf_counter()
        for _ in range(batches):
            source.next_batch()
        return batches / (time.perf_counter() - t0)
    finally:
        source.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=3, help="iterations per timed block")
    ap.add_argument("--rounds", type=int, default=3, help="alternating bare/loop blocks; the best of each counts")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    if not CAFFENET.exists():
        print(f"needs CaffeNet's definition at {CAFFENET} (../shared beside the checkout)", file=sys.stderr)
        return 1
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        make_lmdb(folder, 4 * args.batch, rng)
        param = solver_param(folder, args.batch, args.iterations)
        log = io.StringIO()
        glog.set_stream(log)
        with contextlib.redirect_stderr(io.StringIO()):
            solver = Solver(param, "bench solver")
            # Warm-up: one iteration of each, so both sides run on built, warm sessions.
            solver.step(1)
            inputs = solver.train.next_inputs()
            solver.net.forward_backward(inputs)

            # Time the loop's waits for data (steady state: they should be ~0).
            waited = [0.0]
            feed = solver.train.next_inputs

            def timed_feed():
                t = time.perf_counter()
                batch = feed()
                waited[0] += time.perf_counter() - t
                return batch

            solver.train.next_inputs = timed_feed
            loop_total = 0.0
            # Alternate the two, best of --rounds each: the machine is shared and noisy.
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
                loop_total += time.perf_counter() - t0
                loop = min(loop, (time.perf_counter() - t0) / args.iterations)
            pipeline = pipeline_rate(solver, batches=8)
            solver.close()
        glog.set_stream(None)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    overhead = loop / bare - 1
    print(f"CaffeNet, batch {args.batch}, best of {args.rounds} blocks of {args.iterations} iterations, CPU")
    print(f"  bare ORT forward+backward: {1 / bare:.3f} it/s ({bare * 1000:.0f} ms/it)")
    print(f"  caffecompat train loop:    {1 / loop:.3f} it/s ({loop * 1000:.0f} ms/it)")
    print(f"  loop / bare time ratio:    {loop / bare:.3f}  (overhead {overhead * 100:+.1f}%, target <= +10%)")
    print(f"  waiting for data:          {waited[0] / loop_total * 100:.1f}% of the loop's time")
    print(f"  data pipeline alone:       {pipeline:.2f} batches/s = {pipeline * loop:.1f}x what training consumes")
    print(f"  peak RSS:                  {peak_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
