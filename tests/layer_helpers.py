"""Test helpers for layer lowerings: tiny nets from prototxt text, our forward, OpenCV's forward, ORT gradients."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from google.protobuf import text_format
from onnx import helper, numpy_helper

from caffecompat.formats.blob import array_to_blob
from caffecompat.net import spec as netspec
from caffecompat.net.export import export
from caffecompat.net.weights import init_params
from caffecompat.proto import caffe_pb2
from caffecompat.runtime.forward import ForwardRunner
from caffecompat.runtime.providers import inference_session
from tests.gradients import numeric_gradient, ort_gradients


def net_from_text(layers: str, shape: tuple[int, ...]) -> caffe_pb2.NetParameter:
    """A NetParameter: an Input layer `data` of `shape`, then `layers` (prototxt text)."""
    dims = " ".join(f"dim: {d}" for d in shape)
    text = f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n{layers}'
    return text_format.Parse(text, caffe_pb2.NetParameter())


def build(layers: str, shape: tuple[int, ...], seed: int = 0) -> tuple[netspec.NetSpec, dict[str, np.ndarray]]:
    """The TEST-phase NetSpec of net_from_text(...) and its filler-initialized parameters."""
    spec = netspec.build(net_from_text(layers, shape), caffe_pb2.TEST)
    return spec, init_params(spec, np.random.default_rng(seed))


def forward(spec: netspec.NetSpec, params: dict[str, np.ndarray], x: np.ndarray,
            blobs: list[str]) -> dict[str, np.ndarray]:
    """Our forward pass: {Caffe blob name: value}."""
    values = [spec.blob_values[b] for b in blobs]
    out = ForwardRunner(spec, outputs=values).run({"data": x}, params)
    return {b: out[v] for b, v in zip(blobs, values)}


def opencv_forward(tmp_path: Path, spec: netspec.NetSpec, params: dict[str, np.ndarray], layers: str,
                   x: np.ndarray, blobs: list[str]) -> dict[str, np.ndarray]:
    """OpenCV's Caffe importer on the same net and weights: {blob: value}."""
    import cv2

    net = net_from_text(layers, x.shape)
    proto = tmp_path / "net.prototxt"
    proto.write_text(text_format.MessageToString(net))
    weights = caffe_pb2.NetParameter()
    for node in spec.layers:
        if node.param_names:
            lp = weights.layer.add(name=node.name, type=node.type)
            for name in node.param_names:
                array_to_blob(params[name], lp.blobs.add())
    model = tmp_path / "net.caffemodel"
    model.write_bytes(weights.SerializeToString())
    cv = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    cv.setInput(x, "data")
    return dict(zip(blobs, cv.forward(blobs)))


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max(1, max |ref|), the golden tests' measure."""
    return float(np.abs(ours - ref).max() / max(1.0, float(np.abs(ref).max())))


def gradient_check(spec: netspec.NetSpec, params: dict[str, np.ndarray], x: np.ndarray, top: str,
                   eps: float = 1e-2, samples: int = 10, tol: float = 2e-2) -> dict[str, np.ndarray]:
    """ORT training gradients of loss = sum(top * R) w.r.t. the input and every parameter, checked
    against central differences of the forward graph. Returns ORT's gradients."""
    exported = export(spec, params=params, outputs=[spec.blob_values[top]], training=True)
    model = exported.model
    graph = model.graph
    value = spec.blob_values[top]
    weight = np.random.default_rng(1).normal(size=spec.shapes[value]).astype(np.float32)
    # The input becomes a parameter, so ORT computes its gradient too.
    del graph.input[:]
    graph.initializer.append(numpy_helper.from_array(x.astype(np.float32), "data"))
    # The loss weights stay a graph input (ORT's Module returns numpy only when fed numpy).
    graph.input.append(helper.make_tensor_value_info("test/loss_weight", onnx.TensorProto.FLOAT, weight.shape))
    graph.node.append(helper.make_node("Mul", [value, "test/loss_weight"], ["test/weighted"]))
    graph.node.append(helper.make_node("ReduceSum", ["test/weighted"], ["test/loss"], keepdims=0))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("test/loss", onnx.TensorProto.FLOAT, []))
    trainable = ["data", *exported.params]
    _, grads = ort_gradients(model, [weight], trainable)

    def loss_fn(values: dict[str, np.ndarray]) -> float:
        # Rebuild the initializers being varied and run the forward graph.
        g = onnx.ModelProto()
        g.CopyFrom(model)
        for init in g.graph.initializer:
            if init.name in values:
                init.CopyFrom(numpy_helper.from_array(values[init.name].astype(np.float32), init.name))
        s = inference_session(g.SerializeToString(), ["CPUExecutionProvider"])
        return float(s.run(["test/loss"], {"test/loss_weight": weight})[0])

    values = {"data": x.astype(np.float64), **{p: np.asarray(params[p], np.float64) for p in exported.params}}
    for name in trainable:
        idx, numeric = numeric_gradient(loss_fn, values, name, eps=eps, samples=samples)
        ours = grads[name].reshape(-1)[idx]
        scale = max(1.0, float(np.abs(numeric).max()))
        assert np.abs(ours - numeric).max() <= tol * scale, (name, ours, numeric)
    return grads
