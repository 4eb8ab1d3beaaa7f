#!/usr/bin/env python3
"""Write the example's nets and solver with NetSpec (pycaffe's net_spec): WORK/train.prototxt, deploy.prototxt,
solver.prototxt.

    python examples/pycaffe/netspec.py WORK [--iters 300]

The training net takes its batches from the Python data layer shapes_layers.ShapesData
(TRAIN and TEST each with their own seed); the deploy net from an Input layer.
"""

import argparse
import json
import sys
from pathlib import Path

import caffecompat as caffe
from caffecompat import layers as L
from caffecompat import params as P


def body(n, data):
    """conv-relu-pool twice, then two inner products: the logits `fc`."""
    filler = dict(type="xavier")
    n.conv1 = L.Convolution(data, num_output=16, kernel_size=5, pad=2, weight_filler=filler)
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.conv2 = L.Convolution(n.pool1, num_output=32, kernel_size=5, pad=2, weight_filler=filler)
    n.relu2 = L.ReLU(n.conv2, in_place=True)
    n.pool2 = L.Pooling(n.relu2, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.ip1 = L.InnerProduct(n.pool2, num_output=64, weight_filler=filler)
    n.relu3 = L.ReLU(n.ip1, in_place=True)
    n.fc = L.InnerProduct(n.relu3, num_output=4, weight_filler=filler)
    return n.fc


def train_net() -> str:
    layers = []
    for phase, seed in ((caffe.TRAIN, 1), (caffe.TEST, 2)):
        n = caffe.NetSpec()
        n.data, n.label = L.Python(ntop=2, include=dict(phase=phase), python_param=dict(
            module="shapes_layers", layer="ShapesData", param_str=json.dumps({"batch_size": 32, "seed": seed})))
        layers.append(n.to_proto().layer[0])
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[32, 3, 32, 32]))  # stands for the data layers while the body is written
    n.label = L.Input(shape=dict(dim=[32]))
    fc = body(n, n.data)
    n.accuracy = L.Accuracy(fc, n.label, include=dict(phase=caffe.TEST))
    n.loss = L.SoftmaxWithLoss(fc, n.label)
    rest = list(n.to_proto().layer)[2:]
    proto = caffe.proto.caffe_pb2.NetParameter(name="ShapesPy")
    proto.layer.extend(layers + rest)
    return str(proto)


def deploy_net() -> str:
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[10, 3, 32, 32]))
    n.prob = L.Softmax(body(n, n.data))
    proto = n.to_proto()
    proto.name = "ShapesPy"
    return str(proto)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--iters", type=int, default=300, help="max_iter of the solver (default 300)")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "train.prototxt").write_text(train_net())
    (args.work / "deploy.prototxt").write_text(deploy_net())
    (args.work / "solver.prototxt").write_text(
        f'net: "train.prototxt"\ntest_iter: 4\ntest_interval: 100\nbase_lr: 0.01\nmomentum: 0.9\n'
        f'weight_decay: 0.0005\nlr_policy: "step"\ngamma: 0.5\nstepsize: 200\ndisplay: 50\nmax_iter: {args.iters}\n'
        'snapshot_prefix: "shapes_py"\nrandom_seed: 1\nsolver_mode: CPU\n')
    print(f"wrote train.prototxt, deploy.prototxt and solver.prototxt to {args.work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
