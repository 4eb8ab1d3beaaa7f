"""Caffe's Backward for every layer type: ../shared/caffe-golden/train/grad_zoo, one forward+backward each.

Each net's loss, every forward blob, every blob diff (split copies included)
and every parameter diff must match Caffe within 1e-5 relative (the golden
README's measure: max |ours - caffe| / max(1, max |caffe|)).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from caffecompat.formats.blob import blob_to_array
from caffecompat.formats.caffemodel import read_caffemodel
from caffecompat.formats.net import read_net_prototxt
from caffecompat.net import spec as netspec
from caffecompat.net.weights import init_params, load_caffemodel
from caffecompat.proto import caffe_pb2
from tests.gradients import net_backward

NETS = ["activations", "conv_pool", "embed", "losses", "shape_norm"]
TOLERANCE = 1e-5


def _rel(ours: np.ndarray, caffe: np.ndarray) -> float:
    return float(np.abs(ours - caffe).max() / max(1.0, float(np.abs(caffe).max()))) if caffe.size else 0.0


def _vector(path: Path) -> list[np.ndarray]:
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(path.read_bytes())
    return [blob_to_array(b) for b in vec.blobs]


def _diff_vector(path: Path) -> list[np.ndarray]:
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(path.read_bytes())
    return [blob_to_array(b, diff=True) for b in vec.blobs]


def run_grad_zoo(folder: Path) -> dict[str, list[tuple[str, float]]]:
    """Relative errors of one grad_zoo net: {"loss"|"blob"|"diff"|"param": [(name, error), ...]}."""
    net = read_net_prototxt(folder / "net.prototxt")
    spec = netspec.build(net, caffe_pb2.TRAIN, source=str(folder / "net.prototxt"))
    params = init_params(spec, np.random.default_rng(0))
    load_caffemodel(spec, params, str(folder / "weights.caffemodel"))
    inputs = dict(zip((folder / "input_names.txt").read_text().split(), _vector(folder / "inputs.binaryproto")))
    feeds = {spec.blob_values[n]: a.reshape(spec.shapes[spec.blob_values[n]]) for n, a in inputs.items()}
    names = (folder / "blob_names.txt").read_text().split()
    wanted = [spec.blob_values[b] for b in names if spec.blob_values[b] not in spec.inputs]
    spec.outputs = list(dict.fromkeys(spec.outputs + wanted))
    out, pdiffs, bdiffs = net_backward(spec, params, feeds, force_backward=spec.force_backward)
    errors: dict[str, list[tuple[str, float]]] = {"loss": [], "blob": [], "diff": [], "param": []}
    loss = sum(float(np.float32(w) * np.sum(out[v], dtype=np.float32)) for v, w in spec.loss_tops())
    expected = float((folder / "loss.txt").read_text())
    errors["loss"].append(("loss", abs(loss - expected) / max(1.0, abs(expected))))
    blobs, blob_diffs = _vector(folder / "blobs.binaryproto"), _diff_vector(folder / "blob_diffs.binaryproto")
    for b, data, diff in zip(names, blobs, blob_diffs):
        v = spec.blob_values[b]
        ours = feeds[v] if v in feeds else out[v]
        errors["blob"].append((b, _rel(np.asarray(ours).reshape(-1), data.reshape(-1))))
        errors["diff"].append((b, _rel(bdiffs[b].reshape(-1), diff.reshape(-1))))
    caffe = read_caffemodel(folder / "params_with_diff.caffemodel")
    by_name = {n.name: n for n in spec.layers}
    for layer in caffe.layer:
        node = by_name[layer.name]
        for i, blob in enumerate(layer.blobs):
            name = node.param_names[i]
            if node.type == "BatchNorm":
                continue  # running statistics: checked by the BatchNorm statistics tests, diff always 0
            theirs = blob_to_array(blob, diff=True).reshape(-1)
            errors["param"].append((f"{layer.name}#{i}", _rel(pdiffs[name].reshape(-1), theirs)))
    return errors


@pytest.mark.parametrize("name", NETS)
def test_grad_zoo_matches_caffe(golden, monkeypatch, name):
    folder = golden / "train" / "grad_zoo" / name
    monkeypatch.chdir(golden)  # infogain_param.source is relative to the golden folder
    errors = run_grad_zoo(folder)
    bad = [(kind, n, e) for kind, items in errors.items() for n, e in items if not e <= TOLERANCE]
    assert not bad, bad
    assert len(errors["diff"]) >= 5
