"""Run one of ../shared/caffe-golden/forward/<net> through caffecompat and compare every blob."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from caffecompat.formats.blob import read_binaryproto
from caffecompat.formats.net import read_net_prototxt
from caffecompat.net import spec as netspec
from caffecompat.net.weights import init_params, load_caffemodel
from caffecompat.proto import caffe_pb2
from caffecompat.runtime.forward import ForwardRunner

TOLERANCE = 1e-4  # the golden README: max |ours - caffe| / max(1, max |caffe|)


def relative_error(ours: np.ndarray, caffe: np.ndarray) -> float:
    """The golden README's error measure."""
    return float(np.abs(ours - caffe).max() / max(1.0, float(np.abs(caffe).max()))) if caffe.size else 0.0


def run_golden_net(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{blob: (ours, caffe's)} for every blob Caffe recorded."""
    net = read_net_prototxt(folder / "net.prototxt")
    spec = netspec.build(net, caffe_pb2.TEST, source=str(folder / "net.prototxt"))
    weights_file = next(p for p in (folder / "weights.caffemodel", folder / "weights_v1.caffemodel") if p.exists())
    params = init_params(spec, np.random.default_rng(0))
    load_caffemodel(spec, params, str(weights_file))
    names = (folder / "blob_names.txt").read_text().split()
    golden = np.load(folder / "blobs.npz")
    wanted = [spec.blob_values[b] for b in names if spec.blob_values.get(b) not in spec.inputs]
    runner = ForwardRunner(spec, outputs=wanted)
    x = read_binaryproto(folder / "input.binaryproto")
    (input_name,) = spec.inputs
    out = runner.run({input_name: x.reshape(spec.shapes[input_name])}, params)
    out[input_name] = x
    return {b: (out[spec.blob_values[b]], golden[b]) for b in names}
