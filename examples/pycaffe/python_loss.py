#!/usr/bin/env python3
"""A Python loss layer (shapes_layers.EuclideanLossLayer) next to Caffe's built-in EuclideanLoss.

    python examples/pycaffe/python_loss.py WORK

Two regression nets, identical but for the loss layer, get the same weights and
batches; forward/backward through the Net API gives the same loss and the same
diffs, and plain gradient steps on net.params train both alike.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

import caffecompat as caffe

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

NET = """name: "regression"
layer {{ name: "x" type: "Input" top: "x" top: "y"
  input_param {{ shape {{ dim: 16 dim: 4 }} shape {{ dim: 16 dim: 2 }} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param {{ num_output: 2
  weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
{loss}
"""
PYTHON = ('layer { name: "loss" type: "Python" bottom: "ip" bottom: "y" top: "loss" loss_weight: 1 '
          'python_param { module: "shapes_layers" layer: "EuclideanLossLayer" } }')
BUILTIN = 'layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "y" top: "loss" }'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    nets = {}
    for name, loss in (("python", PYTHON), ("builtin", BUILTIN)):
        path = args.work / f"regression_{name}.prototxt"
        path.write_text(NET.format(loss=loss))
        caffe.set_random_seed(3)  # the same filler values for both
        nets[name] = caffe.Net(str(path), caffe.TRAIN)
    w_true = np.array([[1, -2], [0.5, 1], [-1, 0], [2, 0.25]], np.float32)
    rng = np.random.default_rng(0)
    for step in range(args.steps):
        x = rng.normal(size=(16, 4)).astype(np.float32)
        losses = {}
        for name, net in nets.items():
            losses[name] = float(net.forward(x=x, y=x @ w_true)["loss"].sum())
            net.clear_param_diffs()
            net.backward()
            for blob in net.params["ip"]:
                blob.data[...] -= 0.1 * blob.diff  # plain SGD on the blobs
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step}: python loss {losses['python']:.6f}, built-in loss {losses['builtin']:.6f}")
    gap = np.abs(nets["python"].params["ip"][0].data - nets["builtin"].params["ip"][0].data).max()
    print(f"largest difference between the two nets' weights after {args.steps} steps: {gap:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
