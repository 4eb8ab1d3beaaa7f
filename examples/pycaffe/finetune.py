#!/usr/bin/env python3
"""Train, or fine-tune from a .caffemodel, from Python with SGDSolver; run in WORK (where netspec.py wrote).

    cd WORK && python path/to/finetune.py [--iters 300] [--weights pretrained.caffemodel]

It copies the weights into the solver's net (by layer name: a renamed layer starts
from its filler, as in Caffe's fine-tuning), steps the solver, reads the training
loss from solver.net.blobs and scores the test net every 100 iterations, then
snapshots shapes_py_iter_N.caffemodel.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

import caffecompat as caffe

sys.path.insert(0, str(Path(__file__).resolve().parent))  # shapes_layers, if not run from this folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--weights", default=None, help="a .caffemodel to fine-tune from")
    args = parser.parse_args(argv)
    caffe.set_mode_cpu()
    solver = caffe.SGDSolver("solver.prototxt")
    if args.weights:
        solver.net.copy_from(args.weights)
    updates = []
    solver.add_callback(lambda: None, lambda: updates.append(solver.iter))
    while solver.iter < args.iters:
        solver.step(min(100, args.iters - solver.iter))
        test = solver.test_nets[0]
        accuracy = np.mean([float(test.forward()["accuracy"]) for _ in range(4)])
        print(f"iteration {solver.iter}: train loss {float(solver.net.blobs['loss'].data):.4f}, "
              f"test accuracy {accuracy:.3f}")
    solver.snapshot()
    print(f"{len(updates)} updates; wrote shapes_py_iter_{solver.iter}.caffemodel")
    return 0


if __name__ == "__main__":
    sys.exit(main())
