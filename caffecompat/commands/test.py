"""`caffecompat test`: what `caffe test` does (tools/caffe.cpp test()): score a model on its TEST data."""

from __future__ import annotations

import argparse

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
from caffecompat.runtime.segments import scoring
from caffecompat.solver import debug_info
from caffecompat.solver.fmt import caffe_float
from caffecompat.solver.loop import loss_weight_of

F32 = np.float32


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `test` subcommand."""
    p = sub.add_parser("test", help="score a trained model on its TEST-phase data (caffe test)",
                       description="Run the TEST phase of a net for -iterations batches and print each batch's "
                                   "outputs and their means, as `caffe test` does.")
    flag(p, "model", required=True, metavar="FILE", help="the net prototxt (train_val or test net)")
    flag(p, "weights", required=True, metavar="FILE", help="the .caffemodel to score")
    flag(p, "iterations", type=int, default=50, metavar="N", help="number of batches (default 50)")
    flag(p, "phase", default="TEST", choices=["TRAIN", "TEST"],
         help="the net's phase (default TEST); BVLC's caffe test accepts -phase but always scores in TEST")
    add_gpu_flags(p)
    add_threads_flag(p)
    add_proto_flag(p)
    flag(p, "level", type=int, default=0, help="the net's level (default 0)")
    flag(p, "stage", default="", metavar="STAGES", help="comma-separated stages")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Score the model."""
    if args.iterations < 1:
        raise CaffeCompatError(f"-iterations {args.iterations}: must be at least 1")
    apply_threads(args)
    providers, device = providers_and_device(gpu_id(args.gpu), args.allow_cpu_fallback)
    glog.info("caffe.cpp:275", "Use CPU." if device == "cpu" else f"Use GPU with device ID {args.gpu}")
    log_threads()
    net = read_net_prototxt(args.model)
    state = make_state(net, caffe_pb2.TRAIN if args.phase == "TRAIN" else caffe_pb2.TEST, args.level,
                       stages(args.stage))
    rng = np.random.default_rng(0)
    feeder = build_with_data(net, state, rng, args.model)
    try:
        spec = feeder.spec
        params = init_params(spec, rng)
        load_caffemodel(spec, params, args.weights)
        # Net::Init: the net prototxt's debug_info logs each layer's blobs after every Forward.
        debug = net.debug_info
        runner = (debug_info.debug_runner(feeder, providers, rng, f"debug_info: true ({args.model})") if debug
                  else scoring(feeder, providers, rng=rng))
        glog.info("caffe.cpp:281", f"Running for {args.iterations} iterations.")
        totals: list[F32] = []
        names: list[str] = []
        loss = F32(0)
        for i in range(args.iterations):
            inputs = feeder.next_inputs()
            out = runner.run(inputs, params)
            if debug:
                debug_info.test_forward_lines(spec, out, inputs, params.__getitem__)
            loss = F32(loss + forward_loss(spec, out))
            idx = 0
            for name in spec.outputs:
                for score in np.asarray(out[name], np.float32).reshape(-1):
                    if i == 0:
                        totals.append(F32(score))
                        names.append(name)
                    else:
                        totals[idx] = F32(totals[idx] + score)
                    glog.info("caffe.cpp:304", f"Batch {i}, {name} = {caffe_float(score)}")
                    idx += 1
        loss = F32(loss / F32(args.iterations))
        glog.info("caffe.cpp:309", f"Loss: {caffe_float(loss)}")
        for name, total in zip(names, totals):
            mean = F32(total / F32(args.iterations))
            weight = loss_weight_of(spec, name)
            extra_msg = f" (* {caffe_float(weight)} = {caffe_float(F32(weight) * mean)} loss)" if weight else ""
            glog.info("caffe.cpp:321", f"{name} = {caffe_float(mean)}{extra_msg}")
    finally:
        feeder.close()
    return 0
