"""A second, independent reference: OpenCV's Caffe importer on Caffe's own BVLC deploy nets.

The real model definitions from ../shared/bvlc-models (read there, never copied)
get random weights of our own (normal with std 1/sqrt(fan_in), so activations
stay of order 1 through the whole net rather than fading to a uniform
softmax), written as a .caffemodel. `caffecompat.convert` turns net + weights
into an ONNX model run by ONNX Runtime; `cv2.dnn.readNetFromCaffe` reads the
same two files. Every layer whose output is the final value of a Caffe blob
(so not a layer that an in-place layer rewrites afterwards, which OpenCV may
fuse or compute in place) is compared, and the final prob, within 1e-4
relative. The batch is rewritten to 1 (in a temporary copy) to keep it fast.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from caffecompat import convert as conv
from caffecompat.formats.blob import array_to_blob
from caffecompat.formats.caffemodel import write_caffemodel
from caffecompat.formats.net import read_net_prototxt, write_net_prototxt
from caffecompat.net import spec as netspec
from caffecompat.proto import caffe_pb2
from tests.golden_forward import TOLERANCE, relative_error

cv2 = pytest.importorskip("cv2")

NETS = {
    # net: layers that must be among the compared ones (a check that the comparison is not vacuous)
    "bvlc_reference_caffenet": ["relu1", "pool1", "norm1", "norm2", "relu5", "pool5", "drop6", "drop7", "fc8",
                                "prob"],
    "bvlc_alexnet": ["relu1", "norm1", "pool1", "relu2", "norm2", "pool5", "drop7", "fc8", "prob"],
    "bvlc_googlenet": ["pool1/norm1", "conv2/norm2", "inception_3a/output", "inception_4e/output",
                       "pool5/drop_7x7_s1", "loss3/classifier", "prob"],
    "finetune_flickr_style": ["norm2", "pool5", "drop7", "fc8_flickr", "prob"],
}


def _deploy_batch_1(bvlc, name: str, tmp_path):
    """The upgraded deploy net with batch size 1, written to tmp_path."""
    net = read_net_prototxt(bvlc / "models" / name / "deploy.prototxt")
    inputs = [lp for lp in net.layer if lp.type == "Input"]
    assert inputs, f"{name}: expected Input layers"
    for lp in inputs:
        for shape in lp.input_param.shape:
            shape.dim[0] = 1
    path = tmp_path / "deploy.prototxt"
    write_net_prototxt(path, net)
    return path, net


def _random_weights(net: caffe_pb2.NetParameter, path, seed: int = 0) -> None:
    """A .caffemodel with N(0, 1/fan_in) weights and N(0, 0.1^2) biases for every parameter blob."""
    spec = netspec.build(net, caffe_pb2.TEST)
    rng = np.random.default_rng(seed)
    model = caffe_pb2.NetParameter(name=net.name)
    for node in spec.layers:
        if not node.param_shapes:
            continue
        lp = model.layer.add(name=node.name, type=node.type)
        for shape in node.param_shapes:
            std = 1.0 / np.sqrt(np.prod(shape[1:])) if len(shape) > 1 else 0.1
            a = rng.standard_normal(shape, dtype=np.float32)
            a *= np.float32(std)
            array_to_blob(a, lp.blobs.add())
    write_caffemodel(path, model)


@pytest.mark.parametrize("name", list(NETS))
def test_bvlc_deploy_net_matches_opencv(bvlc, tmp_path, name):
    prototxt, net = _deploy_batch_1(bvlc, name, tmp_path)
    weights = tmp_path / "weights.caffemodel"
    _random_weights(net, weights)

    result = conv.convert_net(prototxt, weights, keep_blobs=True)
    spec = result.spec
    assert not result.filled_layers and not result.ignored_layers
    (input_name,) = spec.inputs
    x = np.random.default_rng(1).standard_normal(spec.shapes[input_name], dtype=np.float32)
    sess = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    ours = dict(zip(out_names, sess.run(out_names, {input_name: x})))
    del sess, result

    cv_net = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv_net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    cv_net.enableFusion(False)
    cv_layers = set(cv_net.getLayerNames())
    # A layer's output is unambiguous when it writes its blob's final value: our value name is the blob's.
    compared = [n for n in spec.layers
                if n.name in cv_layers and n.tops and n.tops[0] == n.top_blobs[0] and n.tops[0] in ours]
    cv_net.setInput(x)
    cv_outs = dict(zip([n.name for n in compared], cv_net.forward([n.name for n in compared])))

    names = {n.name for n in compared}
    assert set(NETS[name]) <= names, f"{name}: not compared: {set(NETS[name]) - names}"
    bad = {}
    for node in compared:
        mine, ref = ours[node.tops[0]], cv_outs[node.name]
        assert mine.size == ref.size, f"{name}/{node.name}: {mine.shape} vs OpenCV's {ref.shape}"
        err = relative_error(mine.reshape(ref.shape), ref)
        if err > TOLERANCE:
            bad[node.name] = err
    assert not bad, f"{name}: layers off OpenCV's by more than {TOLERANCE}: {bad}"

    # prob is small everywhere (1000 classes): also relative to its own largest value, and the same top-5.
    prob, ref = ours["prob"].reshape(-1), cv_outs["prob"].reshape(-1)
    assert np.abs(prob - ref).max() / np.abs(ref).max() <= TOLERANCE
    assert abs(float(prob.sum()) - 1.0) < 1e-4
    assert list(np.argsort(-prob)[:5]) == list(np.argsort(-ref)[:5])
