"""`caffecompat time`: what `caffe time` does (tools/caffe.cpp time()): benchmark a net's passes."""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from caffecompat import glog
from caffecompat.commands.common import add_gpu_flags, flag, gpu_id, providers_and_device, stages
from caffecompat.errors import CaffeCompatError
from caffecompat.formats.net import read_net_prototxt
from caffecompat.net.state import make_state
from caffecompat.net.weights import init_params, load_caffemodel
from caffecompat.proto import caffe_pb2
from caffecompat.runtime.feeder import build_with_data
from caffecompat.runtime.forward import forward_loss, scoring_runner
from caffecompat.runtime.profile import layer_forward_times
from caffecompat.runtime.training import TrainingNet
from caffecompat.solver.fmt import caffe_float


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `time` subcommand."""
    p = sub.add_parser("time", help="benchmark a net's forward and backward passes (caffe time)",
                       description="Time -iterations forward, backward and forward-backward passes of a net, "
                                   "with per-layer forward times from ONNX Runtime's profiler.")
    flag(p, "model", required=True, metavar="FILE", help="the net prototxt")
    flag(p, "weights", default="", metavar="FILE", help="optional .caffemodel (default: filler values)")
    flag(p, "iterations", type=int, default=50, metavar="N", help="number of timed iterations (default 50)")
    flag(p, "phase", default="TRAIN", choices=["TRAIN", "TEST"], help="the net's phase (default TRAIN)")
    add_gpu_flags(p)
    flag(p, "level", type=int, default=0, help="the net's level (default 0)")
    flag(p, "stage", default="", metavar="STAGES", help="comma-separated stages")
    p.set_defaults(func=run)


def _ms(seconds: float) -> str:
    return caffe_float(seconds * 1000.0)


def run(args: argparse.Namespace) -> int:
    """Time the net."""
    if args.iterations < 1:
        raise CaffeCompatError(f"-iterations {args.iterations}: must be at least 1")
    providers, device = providers_and_device(gpu_id(args.gpu), args.allow_cpu_fallback)
    glog.info("caffe.cpp:343", "Use CPU." if device == "cpu" else f"Use GPU with device ID {args.gpu}")
    net = read_net_prototxt(args.model)
    phase = caffe_pb2.TRAIN if args.phase == "TRAIN" else caffe_pb2.TEST
    rng = np.random.default_rng(0)
    feeder = build_with_data(net, make_state(net, phase, args.level, stages(args.stage)), rng, args.model)
    try:
        spec = feeder.spec
        params = init_params(spec, rng)
        if args.weights:
            load_caffemodel(spec, params, args.weights)
        inputs = feeder.next_inputs()
        forward = scoring_runner(spec, providers)
        trainer = TrainingNet(spec, params, device=device) if spec.loss_tops() else None
        glog.info("caffe.cpp:351", "Performing Forward")
        out = forward.run(inputs, params)
        glog.info("caffe.cpp:356", f"Initial loss: {caffe_float(forward_loss(spec, out))}")
        if trainer is None:
            glog.info("caffe.cpp:357", "The net has no loss: backward passes are not timed")
        glog.info("caffe.cpp:365", "*** Benchmark begins ***")
        glog.info("caffe.cpp:366", f"Testing for {args.iterations} iterations.")
        forward_total = backward_total = 0.0
        start = time.perf_counter()
        for j in range(args.iterations):
            t0 = time.perf_counter()
            forward.run(inputs, params)
            t1 = time.perf_counter()
            forward_total += t1 - t0
            if trainer is not None:
                trainer.clear_grads()
                trainer.forward_backward(inputs)
                # Backward time: a forward+backward pass less the forward pass just measured.
                backward_total += max(time.perf_counter() - t1 - (t1 - t0), 0.0)
            glog.info("caffe.cpp:394", f"Iteration: {j + 1} forward-backward time: "
                      f"{_ms(time.perf_counter() - t0 - (t1 - t0 if trainer else 0.0))} ms.")
        total = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as d:
            per_layer = layer_forward_times(spec, inputs, params, min(args.iterations, 10), providers, d)
        glog.info("caffe.cpp:397", "Average time per layer: ")
        for node in spec.layers:
            if node.name in per_layer:
                glog.info("caffe.cpp:400", f"{node.name:>10}\tforward: {caffe_float(per_layer[node.name])} ms.")
        n = args.iterations
        glog.info("caffe.cpp:408", f"Average Forward pass: {_ms(forward_total / n)} ms.")
        if trainer is not None:
            glog.info("caffe.cpp:410", f"Average Backward pass: {_ms(backward_total / n)} ms.")
            glog.info("caffe.cpp:412", f"Average Forward-Backward: {_ms((forward_total + backward_total) / n)} ms.")
        glog.info("caffe.cpp:414", f"Total Time: {_ms(total)} ms.")
        glog.info("caffe.cpp:415", "*** Benchmark ends ***")
        if trainer is not None:
            trainer.close()
    finally:
        feeder.close()
    return 0
