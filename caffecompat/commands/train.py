"""`caffecompat train`: what `caffe train` does (tools/caffe.cpp train())."""

from __future__ import annotations

import argparse

from caffecompat import glog
from caffecompat.commands.common import add_gpu_flags, flag, gpu_id, providers_and_device, stages
from caffecompat.errors import CaffeCompatError
from caffecompat.formats.solver import read_solver_prototxt
from caffecompat.proto import caffe_pb2


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `train` subcommand."""
    p = sub.add_parser(
        "train", help="train or fine-tune a model from a solver prototxt (caffe train)",
        description="Train a Caffe model as `caffe train` does: same solver semantics, snapshots and log lines.",
    )
    flag(p, "solver", required=True, metavar="FILE", help="the solver prototxt")
    flag(p, "weights", default="", metavar="FILES",
         help="comma-separated .caffemodel files to initialize from, copied by layer name (fine-tuning)")
    flag(p, "snapshot", default="", metavar="FILE", help="a .solverstate to resume training from")
    add_gpu_flags(p)
    flag(p, "iterations", type=int, default=None, metavar="N",
         help="caffecompat extension: stop at iteration N instead of the solver's max_iter")
    flag(p, "level", type=int, default=0, help="the net's level, for include/exclude rules (default 0)")
    flag(p, "stage", default="", metavar="STAGES", help="comma-separated stages, for include/exclude rules")
    flag(p, "sigint_effect", default="stop", choices=["stop", "snapshot", "none"],
         help="what Ctrl-C does: stop (after a snapshot, as snapshot_after_train), snapshot, or none")
    flag(p, "sighup_effect", default="snapshot", choices=["stop", "snapshot", "none"],
         help="what SIGHUP does (default snapshot)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the solver and solve."""
    from caffecompat.solver.loop import Solver

    if args.snapshot and args.weights:
        raise CaffeCompatError("give -snapshot to resume training or -weights to fine-tune, not both")
    param = read_solver_prototxt(args.solver)
    gpu = gpu_id(args.gpu)
    asked_by = None
    # caffe train: solver_mode GPU in the file (with its device_id) stands in for a missing -gpu flag.
    if gpu is None and param.HasField("solver_mode") and param.solver_mode == caffe_pb2.SolverParameter.GPU:
        gpu = param.device_id
        asked_by = f"{args.solver}: solver_mode: GPU (device_id {gpu})"
    providers, device = providers_and_device(gpu, args.allow_cpu_fallback, asked_by)
    glog.info("caffe.cpp:197", "Use CPU." if device == "cpu" else f"Use GPU with device ID {gpu}")
    if args.iterations is not None:
        if args.iterations < 0:
            raise CaffeCompatError(f"-iterations {args.iterations}: must be >= 0")
        param.max_iter = args.iterations
    # caffe train: -weights replaces the solver's own `weights`; -snapshot clears them.
    weights = list(param.weights)
    if args.snapshot:
        weights = []
    elif args.weights:
        weights = [w for w in args.weights.split(",") if w.strip()]
    del param.weights[:]
    param.weights.extend(weights)
    solver = Solver(param, args.solver, weights=weights, level=args.level, stages=stages(args.stage),
                    device=device, providers=providers)
    try:
        solver.handle_signals(args.sigint_effect, args.sighup_effect)
        if args.snapshot:
            glog.info("caffe.cpp:235", f"Resuming from {args.snapshot}")
        glog.info("caffe.cpp:239", "Starting Optimization")
        solver.solve(args.snapshot or None)
        glog.info("caffe.cpp:250", "Optimization Done.")
    finally:
        solver.close()
    return 0
