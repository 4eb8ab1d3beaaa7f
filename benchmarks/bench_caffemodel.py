"""Benchmark: loading a VGG-16-sized (~550 MB) caffemodel.

    python benchmarks/bench_caffemodel.py [--keep DIR]

Writes a V1-format caffemodel with VGG-16's layer shapes (legacy
num/channels/height/width dims, as the published VGG-16 weights are stored)
to a temporary folder, then measures in fresh subprocesses:

  bare   NetParameter.ParseFromString(open(f, "rb").read())
  ours   caffecompat.formats.caffemodel.read_weights(f)
  naive  read_caffemodel(f) + blob_to_array for every blob (for comparison)

and prints wall time and peak RSS (getrusage ru_maxrss of the child, which
includes the interpreter and its imports) against the targets:
peak RSS <= 2.5 x file size, time <= 3 x bare parse time.
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

import numpy as np

from caffecompat.formats import protofile
from caffecompat.formats.blob import encode_varint
from caffecompat.proto import caffe_pb2

# VGG-16 (Simonyan & Zisserman, configuration D): (name, outputs, inputs) of its 3x3 convolutions
# and of its fully connected layers.
_CONV = [
    ("conv1_1", 64, 3), ("conv1_2", 64, 64),
    ("conv2_1", 128, 64), ("conv2_2", 128, 128),
    ("conv3_1", 256, 128), ("conv3_2", 256, 256), ("conv3_3", 256, 256),
    ("conv4_1", 512, 256), ("conv4_2", 512, 512), ("conv4_3", 512, 512),
    ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512),
]
_FC = [("fc6", 4096, 25088), ("fc7", 4096, 4096), ("fc8", 1000, 4096)]

_CHILD = r"""
import json, resource, sys, time
mode, path = sys.argv[1], sys.argv[2]
from caffecompat.proto import caffe_pb2
from caffecompat.formats import caffemodel
from caffecompat.formats.blob import blob_to_array
from caffecompat import glog
import io
glog.set_stream(io.StringIO())
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if mode == "bare":
    net = caffe_pb2.NetParameter()
    with open(path, "rb") as f:
        net.ParseFromString(f.read())
    n = len(net.layers) + len(net.layer)
elif mode == "ours":
    w = caffemodel.read_weights(path)
    n = sum(a.size for v in w.blobs.values() for a in v)
else:
    net = caffemodel.read_caffemodel(path)
    arrays = {l.name: [blob_to_array(b) for b in l.blobs] for l in net.layer}
    n = sum(a.size for v in arrays.values() for a in v)
t = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"time": t, "peak_kb": peak, "base_kb": base, "n": n}))
"""


def _v1_layer(net: caffe_pb2.NetParameter, name: str, kind: int, shapes: list[tuple[int, ...]],
              rng: np.random.Generator) -> None:
    layer = net.layers.add(name=name, type=kind, top=[name])
    for shape in shapes:
        legacy = (1,) * (4 - len(shape)) + shape
        blob = layer.blobs.add(num=legacy[0], channels=legacy[1], height=legacy[2], width=legacy[3])
        a = rng.standard_normal(int(np.prod(shape)), dtype=np.float32)
        raw = a.tobytes()
        # Merge the packed `data` field's wire bytes: far faster than extend().
        blob.MergeFromString(encode_varint(5 << 3 | 2) + encode_varint(len(raw)) + raw)


def make_vgg16(path: Path) -> None:
    """A VGG-16-shaped V1 caffemodel with random weights."""
    rng = np.random.default_rng(0)
    net = caffe_pb2.NetParameter(name="VGG_ILSVRC_16_layers")
    V1 = caffe_pb2.V1LayerParameter
    for name, out, inp in _CONV:
        _v1_layer(net, name, V1.CONVOLUTION, [(out, inp, 3, 3), (out,)], rng)
        net.layers.add(name=name.replace("conv", "relu"), type=V1.RELU)
    for name, out, inp in _FC:
        _v1_layer(net, name, V1.INNER_PRODUCT, [(out, inp), (out,)], rng)
    net.layers.add(name="prob", type=V1.SOFTMAX)
    protofile.write_binary(path, net)


def run_child(mode: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, mode, str(path)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="write the caffemodel into this folder and keep it")
    parser.add_argument("--no-naive", action="store_true", help="skip the read_caffemodel comparison")
    parser.add_argument("--generate", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        make_vgg16(Path(args.generate))
        return 0
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_caffemodel."))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        path = tmp / "vgg16.caffemodel"
        if not path.exists():
            t0 = time.perf_counter()
            # In a child: a parent grown to the generator's size would pass its peak RSS on
            # to the measuring children (Linux keeps ru_maxrss across fork and exec).
            subprocess.run([sys.executable, __file__, "--generate", str(path)], check=True)
            print(f"generated {path} in {time.perf_counter() - t0:.1f} s")
        size = path.stat().st_size
        print(f"file size: {size / 1e6:.1f} MB")
        with open(path, "rb") as f:  # warm the page cache so every child reads from memory
            while f.read(1 << 24):
                pass
        modes = ["bare", "ours"] + ([] if args.no_naive else ["naive"])
        results = {m: run_child(m, path) for m in modes}
        bare_t = results["bare"]["time"]
        labels = {"bare": "bare ParseFromString", "ours": "read_weights", "naive": "read_caffemodel+numpy"}
        print(f"{'':24s} {'time s':>8s} {'x bare':>7s} {'peak RSS MB':>12s} {'x file':>7s} "
              f"{'(start MB)':>10s}")
        for m in modes:
            r = results[m]
            peak = r["peak_kb"] * 1024
            print(f"{labels[m]:24s} {r['time']:8.2f} {r['time'] / bare_t:7.2f} {peak / 1e6:12.1f} "
                  f"{peak / size:7.2f} {r['base_kb'] * 1024 / 1e6:10.1f}")
        ours = results["ours"]
        rss_ratio = ours["peak_kb"] * 1024 / size
        time_ratio = ours["time"] / bare_t
        ok_rss, ok_time = rss_ratio <= 2.5, time_ratio <= 3.0
        print(f"read_weights: peak RSS / file size = {rss_ratio:.2f} (target <= 2.5: "
              f"{'ok' if ok_rss else 'MISSED'}); time / bare parse = {time_ratio:.2f} "
              f"(target <= 3: {'ok' if ok_time else 'MISSED'})")
        return 0 if ok_rss and ok_time else 1
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
