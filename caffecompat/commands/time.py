"""`caffecompat time`: what `caffe time` does (tools/caffe.cpp time()): benchmark a net's passes.

A training iteration here is one fused forward+backward ONNX Runtime run; a
forward-only run before it gives the forward figure and is not counted in the
iteration, Average Forward-Backward or Total Time figures, so those are what
training spends per iteration, and Forward + Backward equals Forward-Backward.
Per-layer times come from ONNX Runtime's profiler.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from caffecompat import glog
from caffecompat.commands.common import (
    add_gpu_flags,
    add_proto_flag,
    add_threads_flag,
    apply_threads,
    flag,
    gpu_id,
    log_threads,
    providers_and_device,
    stages,
)
from caffecompat.errors import CaffeCompatError
from caffecompat.formats.net import read_net_prototxt
from caffecompat.net.state import make_state
from caffecompat.net.weights import init_params, load_caffemodel
from caffecompat.proto import caffe_pb2
from caffecompat.runtime.feeder import build_with_data
from caffecompat.runtime.forward import forward_loss
from caffecompat.runtime.profile import layer_times, profiled_options
from caffecompat.runtime.segments import scoring, training_net
from caffecompat.solver.fmt import caffe_float


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `time` subcommand."""
    p = sub.add_parser("time", help="benchmark a net's forward and backward passes (caffe time)",
                       description="Time -iterations forward, backward and forward-backward passes of a net, "
                                   "with per-layer forward and backward times from ONNX Runtime's profiler.")
    flag(p, "model", required=True, metavar="FILE", help="the net prototxt")
    flag(p, "weights", default="", metavar="FILE", help="optional .caffemodel (default: filler values)")
    flag(p, "iterations", type=int, default=50, metavar="N", help="number of timed iterations (default 50)")
    flag(p, "phase", default="TRAIN", choices=["TRAIN", "TEST"], help="the net's phase (default TRAIN)")
    add_gpu_flags(p)
    add_threads_flag(p)
    add_proto_flag(p)
    flag(p, "level", type=int, default=0, help="the net's level (default 0)")
    flag(p, "stage", default="", metavar="STAGES", help="comma-separated stages")
    p.set_defaults(func=run)


def _ms(seconds: float) -> str:
    return caffe_float(seconds * 1000.0)


def run(args: argparse.Namespace) -> int:
    """Time the net."""
    if args.iterations < 1:
        raise CaffeCompatError(f"-iterations {args.iterations}: must be at least 1")
    apply_threads(args)
    providers, device = providers_and_device(gpu_id(args.gpu), args.allow_cpu_fallback)
    glog.info("caffe.cpp:343", "Use CPU." if device == "cpu" else f"Use GPU with device ID {args.gpu}")
    log_threads()
    net = read_net_prototxt(args.model)
    phase = caffe_pb2.TRAIN if args.phase == "TRAIN" else caffe_pb2.TEST
    rng = np.random.default_rng(0)
    feeder = build_with_data(net, make_state(net, phase, args.level, stages(args.stage)), rng, args.model)
    with tempfile.TemporaryDirectory() as profile_dir:
        try:
            _time(args, feeder, providers, rng, profile_dir)
        finally:
            feeder.close()
    return 0


def _time(args: argparse.Namespace, feeder, providers: list, rng: np.random.Generator, profile_dir: str) -> None:
    spec = feeder.spec
    params = init_params(spec, rng)
    if args.weights:
        load_caffemodel(spec, params, args.weights)
    inputs = feeder.next_inputs()
    forward = scoring(feeder, providers, profiled_options(profile_dir), rng)
    trainer = None
    if spec.loss_tops():
        trainer = training_net(feeder, params, providers, rng, options=profiled_options(profile_dir))
    glog.info("caffe.cpp:351", "Performing Forward")
    out = forward.run(inputs, params)
    glog.info("caffe.cpp:356", f"Initial loss: {caffe_float(forward_loss(spec, out))}")
    glog.info("caffe.cpp:357", "Performing Backward")
    if trainer is None:
        glog.info("caffe.cpp:357", "The net has no loss: no layer needs backward, so backward passes are not timed")
    else:
        trainer.forward_backward(inputs)
    glog.info("caffe.cpp:365", "*** Benchmark begins ***")
    glog.info("caffe.cpp:366", f"Testing for {args.iterations} iterations.")
    forward_total = backward_total = 0.0
    # time(): total_timer spans the iterations, each a forward then a backward pass. Here a
    # training iteration is one fused forward+backward run; the forward-only run before it measures
    # the forward pass and is left out of the iteration and total times (it is not part of what
    # Caffe times), so Average Forward-Backward is the fused pass and Backward is its remainder.
    excluded = 0.0
    start = time.perf_counter()
    for j in range(args.iterations):
        t0 = time.perf_counter()
        forward.run(inputs, params)
        forward_time = time.perf_counter() - t0
        forward_total += forward_time
        iteration = forward_time
        if trainer is not None:
            excluded += forward_time
            t1 = time.perf_counter()
            trainer.clear_grads()
            trainer.forward_backward(inputs)
            iteration = time.perf_counter() - t1
            backward_total += max(iteration - forward_time, 0.0)
        glog.info("caffe.cpp:394", f"Iteration: {j + 1} forward-backward time: {_ms(iteration)} ms.")
    total = time.perf_counter() - start - excluded
    runs = args.iterations + 1
    per_layer = _layer_times(forward, runs)
    if trainer is not None:
        # Forward times from the forward-only session; backward times from the training step's profile.
        per_layer.update({k: v for k, v in _layer_times(trainer, runs).items() if k[1] == "backward"})
    glog.info("caffe.cpp:397", "Average time per layer: ")
    for node in spec.layers:
        fwd, bwd = (caffe_float(per_layer.get((node.label, d), 0.0)) for d in ("forward", "backward"))
        glog.info("caffe.cpp:400", f"{node.label:>10}\tforward: {fwd} ms.")
        glog.info("caffe.cpp:403", f"{node.label:>10}\tbackward: {bwd} ms.")
    n = args.iterations
    glog.info("caffe.cpp:408", f"Average Forward pass: {_ms(forward_total / n)} ms.")
    glog.info("caffe.cpp:410", f"Average Backward pass: {_ms(backward_total / n)} ms.")
    glog.info("caffe.cpp:412", f"Average Forward-Backward: {_ms(total / n)} ms.")
    glog.info("caffe.cpp:414", f"Total Time: {_ms(total)} ms.")
    glog.info("caffe.cpp:415", "*** Benchmark ends ***")
    if trainer is not None:
        trainer.close()


def _layer_times(runner, runs: int) -> dict[tuple[str, str], float]:
    # A segmented runner (a net with Python layers) sums its segments' profiles and its Python layers' times.
    engine = getattr(runner, "engine", None)
    return engine.layer_times(runs) if engine is not None else layer_times(runner.session, runs)
