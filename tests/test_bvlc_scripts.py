"""Scripts written as Caffe's python/ and examples/pycaffe/ scripts are, run in a subprocess with `import caffe`
resolving to caffecompat (its alias package): the linreg example (../shared's linreg.prototxt with a Python
Euclidean loss written here, as examples/pycaffe/layers/pyloss.py is), classify.py's Classifier and
detect.py's Detector calls, draw_net.py's calls, and caffenet.py's NetSpec use (BVLC's scripts themselves
cannot be fetched at test time; each call pattern is copied here).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import SHARED

EXAMPLES = SHARED / "bvlc-pycaffe-tests" / "examples"

PYLOSS = '''
import caffe
import numpy as np


class EuclideanLossLayer(caffe.Layer):
    """Half the mean over the batch of the squared distance between two bottoms."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num
'''

TINY = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 }
                      bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@pytest.fixture(scope="module")
def alias(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("alias")
    subprocess.run([sys.executable, "-m", "caffecompat.shim", "install", "--target", str(target)], check=True,
                   capture_output=True)
    return target


def run_script(alias: Path, folder: Path, script: str, *args: str) -> str:
    (folder / "script.py").write_text(textwrap.dedent(script))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(alias), str(folder)]), "GLOG_minloglevel": "2"}
    proc = subprocess.run([sys.executable, "script.py", *args], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_linreg_example_with_python_loss(alias, tmp_path):
    linreg = EXAMPLES / "pycaffe" / "linreg.prototxt"
    if not linreg.exists():
        pytest.skip(f"Caffe's examples/pycaffe/linreg.prototxt not found at {linreg}")
    (tmp_path / "pyloss.py").write_text(PYLOSS)
    (tmp_path / "linreg.prototxt").write_text(linreg.read_text())
    (tmp_path / "solver.prototxt").write_text('net: "linreg.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\n'
                                              'max_iter: 10\ndisplay: 5\n')
    out = run_script(alias, tmp_path, """
        import json
        import caffe
        import numpy as np
        net = caffe.Net('linreg.prototxt', caffe.TRAIN)
        loss = float(net.forward()['loss'][0])
        d = net.blobs['ipx'].data - net.blobs['ipy'].data
        net.backward()
        w = net.params['ipx'][0]
        grad = float(w.diff[3, 1])
        eps = 1e-2
        w.data[3, 1] += eps
        plus = float(net.forward(start='ipx')['loss'][0])
        w.data[3, 1] -= 2 * eps
        minus = float(net.forward(start='ipx')['loss'][0])
        solver = caffe.SGDSolver('solver.prototxt')
        solver.step(10)
        print(json.dumps(dict(loss=loss, by_hand=float((d.astype(np.float64) ** 2).sum() / 10 / 2), grad=grad,
                              fd=(plus - minus) / (2 * eps), iter=solver.iter)))
    """)
    got = json.loads(out.strip().splitlines()[-1])
    assert got["loss"] == pytest.approx(got["by_hand"], rel=1e-5)
    assert got["grad"] == pytest.approx(got["fd"], rel=2e-3, abs=1e-4)  # finite differences
    assert got["iter"] == 10


def _tiny(folder: Path) -> None:
    (folder / "deploy.prototxt").write_text(TINY)
    import caffecompat as caffe

    caffe.Net(str(folder / "deploy.prototxt"), caffe.TEST).save(str(folder / "tiny.caffemodel"))


def test_classify_and_detect_scripts_match_cv2_dnn(alias, tmp_path):
    _tiny(tmp_path)
    rng = np.random.default_rng(11)
    (tmp_path / "imgs").mkdir()
    for i in range(2):
        cv2.imwrite(str(tmp_path / "imgs" / f"im{i}.png"), rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
    np.save(tmp_path / "mean.npy", np.array([104.0, 117.0, 123.0]))
    # classify.py's calls: Classifier with image_dims, mean, raw_scale, channel_swap; center_only predict.
    # detect.py's calls (crop_mode=list): Detector.detect_windows over (file, windows) pairs.
    run_script(alias, tmp_path, """
        import glob
        import caffe
        import numpy as np
        caffe.set_mode_cpu()
        c = caffe.Classifier('deploy.prototxt', 'tiny.caffemodel', image_dims=[12, 12], mean=np.load('mean.npy'),
                             raw_scale=255.0, channel_swap=[2, 1, 0])
        files = sorted(glob.glob('imgs/*.png'))
        inputs = [caffe.io.load_image(f) for f in files]
        np.save('classify.npy', c.predict(inputs, False))
        d = caffe.Detector('deploy.prototxt', 'tiny.caffemodel', mean=np.load('mean.npy'), raw_scale=255.0,
                           channel_swap=[2, 1, 0])
        dets = d.detect_windows([(f, np.array([[0, 0, 12, 12]])) for f in files])
        np.save('detect.npy', np.array([x['prediction'] for x in dets]))
    """)
    dnn = cv2.dnn.readNetFromCaffe(str(tmp_path / "deploy.prototxt"), str(tmp_path / "tiny.caffemodel"))
    files = sorted((tmp_path / "imgs").glob("*.png"))
    blob = np.stack([(cv2.imread(str(f)).astype(np.float32) - [104, 117, 123]).transpose(2, 0, 1) for f in files])
    dnn.setInput(blob.astype(np.float32))
    ref = dnn.forward("prob").reshape(len(files), -1)
    # The project's OpenCV tolerance: pycaffe's load_image / 255 then raw_scale 255 is not exact in float32, and
    # the random weights amplify it (1.75e-5 seen on ONNX Runtime 1.23).
    np.testing.assert_allclose(np.load(tmp_path / "classify.npy"), ref, rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.load(tmp_path / "detect.npy").reshape(len(files), -1), ref, rtol=0, atol=1e-4)


def test_draw_net_and_caffenet_scripts(alias, tmp_path):
    train_val = SHARED / "bvlc-pycaffe-tests" / "models" / "bvlc_reference_caffenet" / "train_val.prototxt"
    if not train_val.exists():
        pytest.skip(f"Caffe's models/bvlc_reference_caffenet/train_val.prototxt not found at {train_val}")
    image = "net.svg" if shutil.which("dot") else "net.dot"  # Graphviz's dot draws images; pydot alone, .dot
    out = run_script(alias, tmp_path, f"""
        import sys
        from google.protobuf import text_format
        import caffe
        import caffe.draw
        from caffe.proto import caffe_pb2
        from caffe import layers as L, params as P, to_proto

        # draw_net.py's calls
        net = caffe_pb2.NetParameter()
        text_format.Merge(open({str(train_val)!r}).read(), net)
        caffe.draw.draw_net_to_file(net, sys.argv[1], 'LR', caffe.TRAIN, True)

        # caffenet.py's calls (its first layers)
        data, label = L.Data(source='/path/to/lmdb', backend=P.Data.LMDB, batch_size=8, ntop=2,
                             transform_param=dict(crop_size=227, mean_value=[104, 117, 123], mirror=True))
        conv1 = L.Convolution(data, kernel_size=11, stride=4, num_output=96)
        relu1 = L.ReLU(conv1, in_place=True)
        pool1 = L.Pooling(relu1, pool=P.Pooling.MAX, kernel_size=3, stride=2)
        fc = L.InnerProduct(pool1, num_output=10)
        print(to_proto(L.SoftmaxWithLoss(fc, label), L.Accuracy(fc, label)))
    """, image)
    drawn = (tmp_path / image).read_text()
    assert "conv1" in drawn and "fc8" in drawn and "drop7" in drawn
    if image == "net.svg":
        assert drawn.lstrip().startswith(("<?xml", "<svg"))
    from google.protobuf import text_format

    from caffecompat.proto import caffe_pb2

    written = text_format.Parse(out, caffe_pb2.NetParameter())
    assert [layer.type for layer in written.layer] == ["Data", "Convolution", "ReLU", "Pooling", "InnerProduct",
                                                       "SoftmaxWithLoss", "Accuracy"]
    assert written.layer[0].transform_param.crop_size == 227 and list(written.layer[2].top) == ["Convolution1"]
