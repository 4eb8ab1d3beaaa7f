"""Benchmark: peak memory of `caffecompat convert` on a VGG-16-sized (~550 MB) caffemodel.

    python benchmarks/bench_convert.py [--keep DIR]

Writes VGG-16's deploy prototxt and a caffemodel of its shapes with random
weights (bench_caffemodel.make_vgg16, V1 format as the published file) to a
temporary folder, then runs, each in a fresh subprocess:

  read   caffecompat.formats.caffemodel.read_weights(f): the weights in memory, nothing else
  ours   caffecompat convert DEPLOY WEIGHTS OUT.onnx, as a user runs it

and prints wall time and peak RSS (getrusage ru_maxrss of the child, the
interpreter and its imports included) against the file size; the target is
peak RSS <= 1.5 x the caffemodel's size for `convert`.
The temporary folder is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = 1.5

_CHILD = r"""
import json, resource, sys, time
mode, deploy, weights, out = sys.argv[1:5]
t0 = time.perf_counter()
if mode == "read":
    from caffecompat.formats.caffemodel import read_weights
    w = read_weights(weights)
    status = 0
else:
    from caffecompat import cli
    status = cli.main(["convert", deploy, weights, out])
t = time.perf_counter() - t0
print(json.dumps({"time": t, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "status": status}))
"""


def vgg16_deploy() -> str:
    """VGG-16's deploy net (configuration D) with an Input layer of 1x3x224x224."""
    lines = ['name: "VGG_ILSVRC_16_layers"',
             'layer { name: "data" type: "Input" top: "data" '
             'input_param { shape { dim: 1 dim: 3 dim: 224 dim: 224 } } }']
    bottom = "data"
    blocks = [(1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512)]
    for b, convs, width in blocks:
        for i in range(1, convs + 1):
            name = f"conv{b}_{i}"
            lines.append(f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
                         f'convolution_param {{ num_output: {width} pad: 1 kernel_size: 3 }} }}')
            lines.append(f'layer {{ name: "relu{b}_{i}" type: "ReLU" bottom: "{name}" top: "{name}" }}')
            bottom = name
        lines.append(f'layer {{ name: "pool{b}" type: "Pooling" bottom: "{bottom}" top: "pool{b}" '
                     'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }')
        bottom = f"pool{b}"
    for name, n in (("fc6", 4096), ("fc7", 4096), ("fc8", 1000)):
        lines.append(f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}" '
                     f'inner_product_param {{ num_output: {n} }} }}')
        bottom = name
        if name != "fc8":
            lines.append(f'layer {{ name: "relu{name[2:]}" type: "ReLU" bottom: "{name}" top: "{name}" }}')
    lines.append('layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }')
    return "\n".join(lines) + "\n"


def run_child(mode: str, deploy: Path, weights: Path, out: Path) -> dict:
    run = subprocess.run([sys.executable, "-c", _CHILD, mode, str(deploy), str(weights), str(out)],
                         check=True, capture_output=True, text=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="write the files into this folder and keep them")
    args = parser.parse_args()
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_convert."))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        deploy, weights, out = tmp / "deploy.prototxt", tmp / "vgg16.caffemodel", tmp / "vgg16.onnx"
        deploy.write_text(vgg16_deploy())
        if not weights.exists():
            t0 = time.perf_counter()
            # bench_caffemodel's generator, in a child so that its memory does not count here.
            subprocess.run([sys.executable, str(HERE / "bench_caffemodel.py"), "--generate", str(weights)], check=True)
            print(f"generated {weights} in {time.perf_counter() - t0:.1f} s")
        size = weights.stat().st_size
        print(f"caffemodel size: {size / 1e6:.1f} MB")
        with open(weights, "rb") as f:  # warm the page cache so every child reads from memory
            while f.read(1 << 24):
                pass
        results = {m: run_child(m, deploy, weights, out) for m in ("read", "ours")}
        if results["ours"]["status"] != 0:
            print("caffecompat convert failed", file=sys.stderr)
            return 1
        print(f"{'':28s} {'time s':>8s} {'peak RSS MB':>12s} {'x file':>7s}")
        labels = {"read": "read_weights only", "ours": "caffecompat convert"}
        for m, r in results.items():
            peak = r["peak_kb"] * 1024
            print(f"{labels[m]:28s} {r['time']:8.2f} {peak / 1e6:12.1f} {peak / size:7.2f}")
        ratio = results["ours"]["peak_kb"] * 1024 / size
        print(f"convert: peak RSS / caffemodel size = {ratio:.2f} (target <= {TARGET}: "
              f"{'ok' if ratio <= TARGET else 'MISSED'}); ONNX written: {out.stat().st_size / 1e6:.1f} MB")
        return 0 if ratio <= TARGET else 1
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
