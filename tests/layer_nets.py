"""Test helpers for layer tests: tiny nets from prototxt text, run by ORT, OpenCV, and ORT training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from caffecompat.formats.blob import array_to_blob
from caffecompat.formats.protofile import parse_text
from caffecompat.net.export import export
from caffecompat.net.spec import NetSpec, build
from caffecompat.net.weights import init_params
from caffecompat.proto import caffe_pb2
from tests.gradients import numeric_gradient, ort_gradients


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


def random_params(spec: NetSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Every parameter blob, filled with random values in [0.5, 1.5) (positive: safe for scales/variances)."""
    rng = np.random.default_rng(seed)
    values = init_params(spec, rng)
    return {k: rng.uniform(0.5, 1.5, size=v.shape).astype(np.float32) for k, v in values.items()}


def run(spec: NetSpec, params: dict[str, np.ndarray], feeds: dict[str, np.ndarray], outputs: list[str],
        training: bool = False) -> dict[str, np.ndarray]:
    """One forward in an ORT inference session; returns every graph output by name."""
    model = export(spec, params=params, outputs=outputs, training=training).model
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {k: v.astype(np.float32) for k, v in feeds.items()})))


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


def with_loss(model: onnx.ModelProto, top: str, shape: tuple[int, ...], seed: int = 1) -> onnx.ModelProto:
    """`model` with one output: loss = sum(top * fixed random weights)."""
    w = np.random.default_rng(seed).uniform(-1, 1, size=shape).astype(np.float32)
    g = model.graph
    g.initializer.append(numpy_helper.from_array(w, "loss_w"))
    g.node.append(helper.make_node("Mul", [top, "loss_w"], ["loss_prod"]))
    g.node.append(helper.make_node("ReduceSum", ["loss_prod"], ["loss"], keepdims=0))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("loss", onnx.TensorProto.FLOAT, []))
    return model


def check_gradients(spec: NetSpec, params: dict[str, np.ndarray], feeds: dict[str, np.ndarray], top: str,
                    trainable: list[str], training: bool = True, rtol: float = 2e-2) -> None:
    """ORT training's parameter gradients of sum(top * w) agree with central differences."""
    model = with_loss(export(spec, params=params, outputs=[top], training=training).model, top, spec.shapes[top])
    inputs = [feeds[n].astype(np.float32) for n in spec.inputs]
    _, grads = ort_gradients(model, inputs, trainable)

    probe = with_loss(export(spec, params_as_inputs=True, outputs=[top], training=training).model, top,
                      spec.shapes[top])
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in sess.get_inputs()}

    def loss_fn(values: dict[str, np.ndarray]) -> float:
        feed = {k: v.astype(np.float32) for k, v in values.items() if k in wanted}
        return float(sess.run(["loss"], feed)[0])

    values = {**{k: v.astype(np.float64) for k, v in params.items()}, **feeds}
    for name in trainable:
        idx, numeric = numeric_gradient(loss_fn, values, name, eps=1e-2)
        ours = grads[name].reshape(-1)[idx]
        scale = max(1.0, float(np.abs(numeric).max()))
        assert np.abs(ours - numeric).max() / scale < rtol, (name, ours, numeric)
