"""Test helpers for layer tests: tiny nets from prototxt text, run by ORT and OpenCV, and checked gradients.

Nets get one Input layer per named input (`make_net`); `make_data_net` is the
single-input shorthand (one input `data`, filler-initialized parameters).
Two forwards: `run` exports with the parameters as initializers and returns
ONNX outputs by value name; `forward` uses the runtime's ForwardRunner and
returns values by Caffe blob name. Two gradient checks of our Backward against
central differences: `check_gradients` (the named parameters) and
`check_all_gradients` (every input and every parameter).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from caffecompat.formats.blob import array_to_blob
from caffecompat.formats.protofile import parse_text
from caffecompat.net.export import export
from caffecompat.net.spec import NetSpec, build
from caffecompat.net.weights import init_params
from caffecompat.proto import caffe_pb2
from caffecompat.runtime.forward import ForwardRunner
from tests.gradients import check_layer_gradients


def net_text(layers: str, inputs: dict[str, tuple[int, ...]]) -> str:
    """Prototxt text: one Input layer per entry of `inputs`, then `layers`."""
    head = "".join(
        f'layer {{ name: "in_{n}" type: "Input" top: "{n}" input_param {{ shape {{ '
        + " ".join(f"dim: {d}" for d in s) + " } } }\n"
        for n, s in inputs.items()
    )
    return head + layers


def make_net(layers: str, inputs: dict[str, tuple[int, ...]], phase: int = caffe_pb2.TEST) -> NetSpec:
    """The NetSpec of `net_text(layers, inputs)` for `phase`."""
    return build(parse_text(net_text(layers, inputs), caffe_pb2.NetParameter, "test.prototxt", "net"), phase)


def make_data_net(layers: str, shape: tuple[int, ...], seed: int = 0) -> tuple[NetSpec, dict[str, np.ndarray]]:
    """The TEST-phase NetSpec of `layers` after one input `data` of `shape`, and its filler-initialized
    parameters."""
    spec = make_net(layers, {"data": shape})
    return spec, init_params(spec, np.random.default_rng(seed))


def random_params(spec: NetSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Every parameter blob, filled with random values in [0.5, 1.5) (positive: safe for scales/variances)."""
    rng = np.random.default_rng(seed)
    values = init_params(spec, rng)
    return {k: rng.uniform(0.5, 1.5, size=v.shape).astype(np.float32) for k, v in values.items()}


def run(spec: NetSpec, params: dict[str, np.ndarray], feeds: dict[str, np.ndarray], outputs: list[str] | None,
        training: bool = False, loss_output: bool = False) -> dict[str, np.ndarray]:
    """One forward in an ORT inference session; returns every graph output by name.

    outputs: value names (None: the net's outputs); loss_output: also output the summed loss.
    """
    model = export(spec, params=params, outputs=outputs, training=training, loss_output=loss_output).model
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {k: v.astype(np.float32) for k, v in feeds.items()})))


def run_layers(layers: str, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    """`run` on the TRAIN net of `layers` with inputs shaped like `feeds` and no parameters: every net
    output (or `outputs`), plus the summed loss when the net has one."""
    spec = make_net(layers, {k: v.shape for k, v in feeds.items()}, caffe_pb2.TRAIN)
    return run(spec, {}, feeds, outputs, loss_output=bool(spec.loss_tops()))


def forward(spec: NetSpec, params: dict[str, np.ndarray], feeds: dict[str, np.ndarray],
            blobs: list[str]) -> dict[str, np.ndarray]:
    """The runtime's forward pass (ForwardRunner, parameters fed as inputs): {Caffe blob name: value}."""
    values = [spec.blob_values[b] for b in blobs]
    out = ForwardRunner(spec, outputs=values).run(feeds, params)
    return {b: out[v] for b, v in zip(blobs, values)}


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max(1, max |ref|), the golden tests' measure."""
    return float(np.abs(ours - ref).max() / max(1.0, float(np.abs(ref).max())))


def opencv_forward(tmp_path: Path, layers: str, inputs: dict[str, tuple[int, ...]],
                   blobs: dict[str, list[np.ndarray]], feeds: dict[str, np.ndarray],
                   outputs: list[str]) -> list[np.ndarray]:
    """OpenCV's Caffe importer on the same net: `blobs` maps layer name -> its parameter blobs."""
    import cv2

    text = net_text(layers, inputs)
    (tmp_path / "net.prototxt").write_text(text)
    net = parse_text(text, caffe_pb2.NetParameter, "test.prototxt", "net")
    weights = caffe_pb2.NetParameter()
    for lp in net.layer:
        if lp.name in blobs:
            layer = weights.layer.add(name=lp.name, type=lp.type)
            for a in blobs[lp.name]:
                array_to_blob(a, layer.blobs.add())
    (tmp_path / "w.caffemodel").write_bytes(weights.SerializeToString())
    cvnet = cv2.dnn.readNetFromCaffe(str(tmp_path / "net.prototxt"), str(tmp_path / "w.caffemodel"))
    for k, v in feeds.items():
        cvnet.setInput(v.astype(np.float32), k)
    # OpenCV names outputs by the layer that writes them (the last writer for in-place tops).
    producer = {t: lp.name for lp in net.layer for t in lp.top}
    return [np.asarray(o) for o in cvnet.forward([producer[b] for b in outputs])]


def layer_blobs(spec: NetSpec, params: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Parameter values grouped per layer, in blob order (for a .caffemodel)."""
    return {n.name: [params[p] for p in n.param_names] for n in spec.layers if n.param_names}


def _blob_of(spec: NetSpec, value: str) -> str:
    """The Caffe blob whose value is `value` (a blob name is its own)."""
    if value in spec.blob_values:
        return value
    return value.split("@")[0]


def check_gradients(spec: NetSpec, params: dict[str, np.ndarray], feeds: dict[str, np.ndarray], top: str,
                    trainable: list[str], training: bool = True, samples: int = 12) -> dict[str, np.ndarray]:
    """Our Backward's diffs of sum(top * R) w.r.t. the named parameters agree with central differences."""
    return check_layer_gradients(spec, params, feeds, [_blob_of(spec, top)], wrt=trainable, training=training,
                                 samples=samples)


def check_all_gradients(spec: NetSpec, params: dict[str, np.ndarray], feeds: dict[str, np.ndarray], top: str,
                        samples: int = 10, training: bool = True) -> dict[str, np.ndarray]:
    """Our Backward's diffs of loss = sum(top * R) w.r.t. every net input and every parameter, checked
    against central differences of the forward graph. Returns our diffs (`top` is a blob name)."""
    return check_layer_gradients(spec, params, feeds, [top], samples=samples, training=training)
