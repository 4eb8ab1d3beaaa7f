"""Threads against processes for inference: `caffecompat classify` images/s on 1 process x 2 threads, 2
processes x 1 thread (two independent runs at once, each on half the images) and `mpiexec -n 2 classify`
(one sharded run, 1 thread per rank), measured in the same run.

    python benchmarks/bench_threads.py [--images 32] [--batch 4] [--net caffenet|shapes]

CaffeNet (../shared/bvlc-models' deploy.prototxt, 3 x 227 x 227) gets random
weights from pycaffe's fillers (gaussian; the numbers do not matter for time),
the images are random 256 x 256 JPEGs; `--net shapes` uses the bundled
shapes deploy net (caffecompat/examples/shapes, 3 x 32 x 32) instead, for a machine without
../shared. Each configuration's images/s is the number of images over the
seconds classify reports for its classification loop (net building and
process start-up excluded); for the two independent processes it is the
images of both over the longer of the two loops. Ratios are to 1 x 2.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CAFFENET = ROOT.parent / "shared" / "bvlc-models" / "models" / "bvlc_reference_caffenet" / "deploy.prototxt"
_CLASSIFIED = re.compile(r"Classified (\d+) images in ([\d.]+) s")


def _weights(deploy: Path, out: Path) -> None:
    import io

    from google.protobuf import text_format

    import caffecompat as caffe
    from caffecompat import glog
    from caffecompat.proto import caffe_pb2

    net_param = caffe_pb2.NetParameter()
    text_format.Parse(deploy.read_text(), net_param)
    for lp in net_param.layer:  # deploy files have no fillers: give the weights gaussian ones
        for p in (lp.convolution_param, lp.inner_product_param):
            p.weight_filler.type, p.weight_filler.std = "gaussian", 0.01
    filled = out.with_suffix(".prototxt")
    filled.write_text(text_format.MessageToString(net_param))
    glog.set_stream(io.StringIO())  # the net's set-up log is not the benchmark's output
    try:
        caffe.Net(str(filled), caffe.TEST).save(str(out))
    finally:
        glog.set_stream(None)


def _classify(deploy: Path, weights: Path, folder: Path, batch: int, threads: int, ranks: int = 1) -> list[str]:
    command = [sys.executable, "-m", "caffecompat.cli", "classify", "-model", str(deploy), "-weights", str(weights),
               "-mean_value", "110", "-batch_size", str(batch), "-threads", str(threads), "-output",
               str(folder.parent / f"{folder.name}-{ranks}x{threads}.csv"), str(folder)]
    if ranks > 1:
        from caffecompat.parallel import launch

        command = [launch.find_mpiexec(), "-n", str(ranks), *command]
    return command


def _seconds(proc: subprocess.Popen) -> tuple[int, float]:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"classify failed:\n{err[-2000:]}")
    n, s = _CLASSIFIED.findall(err)[-1]
    return int(n), float(s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32, help="images in all (default 32)")
    parser.add_argument("--batch", type=int, default=4, help="images per forward pass (default 4)")
    parser.add_argument("--net", choices=["caffenet", "shapes"], default="caffenet" if CAFFENET.is_file() else "shapes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        work = Path(tmp)
        shapes = ROOT / "caffecompat" / "examples" / "shapes" / "deploy.prototxt"
        deploy = CAFFENET if args.net == "caffenet" else shapes
        weights = work / "random.caffemodel"
        _weights(deploy, weights)
        rng = np.random.default_rng(0)
        for folder in ("a", "b", "all"):
            (work / folder).mkdir()
        for i in range(args.images):
            image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
            cv2.imwrite(str(work / ("a" if i < args.images // 2 else "b") / f"{i:04d}.jpg"), image)
            cv2.imwrite(str(work / "all" / f"{i:04d}.jpg"), image)
        results = {}
        n, s = _seconds(subprocess.Popen(_classify(deploy, weights, work / "all", args.batch, 2), text=True,
                                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL))
        results["1 process x 2 threads"] = n / s
        both = [subprocess.Popen(_classify(deploy, weights, work / half, args.batch, 1), text=True,
                                 stderr=subprocess.PIPE, stdout=subprocess.DEVNULL) for half in ("a", "b")]
        runs = [_seconds(p) for p in both]
        results["2 processes x 1 thread (independent)"] = sum(n for n, _ in runs) / max(s for _, s in runs)
        n, s = _seconds(subprocess.Popen(_classify(deploy, weights, work / "all", args.batch, 1, ranks=2), text=True,
                                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL))
        results["mpiexec -n 2 x 1 thread (sharded)"] = n / s
    base = results["1 process x 2 threads"]
    print(f"{args.net}, {args.images} images, batch {args.batch}:")
    for name, rate in results.items():
        print(f"  {name:<38} {rate:8.2f} images/s  ({rate / base:.2f}x)")


if __name__ == "__main__":
    main()
