"""`caffecompat train`: what `caffe train` does (tools/caffe.cpp train())."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from caffecompat import glog, parallel
from caffecompat.commands.common import (
    add_gpu_flags,
    add_proto_flag,
    add_threads_flag,
    apply_threads,
    command_line,
    flag,
    log_threads,
    providers_and_device,
    stages,
)
from caffecompat.errors import CaffeCompatError
from caffecompat.formats.solver import read_solver_prototxt
from caffecompat.proto import caffe_pb2
from caffecompat.solver.nets import check_net_files
from caffecompat.solver.signals import Signals, StartupStopped


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
    add_gpu_flags(p, several=True)
    add_proto_flag(p)
    add_threads_flag(p)
    flag(p, "iterations", type=int, default=None, metavar="N",
         help="caffecompat extension: stop at iteration N instead of the solver's max_iter")
    flag(p, "level", type=int, default=0, help="the net's level, for include/exclude rules (default 0)")
    flag(p, "stage", default="", metavar="STAGES", help="comma-separated stages, for include/exclude rules")
    flag(p, "sigint_effect", default="stop", choices=["stop", "snapshot", "none"],
         help="what Ctrl-C does: stop (after a snapshot, as snapshot_after_train), snapshot, or none")
    flag(p, "sighup_effect", default="snapshot", choices=["stop", "snapshot", "none"],
         help="what SIGHUP does (default snapshot)")
    flag(p, "processes", type=int, default=0, metavar="N",
         help="caffecompat extension: train on N processes of this machine (data-parallel, as Caffe's multi-GPU "
              "training), started through mpiexec; -gpu 0,1,... starts one per device. Under mpiexec -n N give "
              "nothing (needs pip install 'caffecompat[mpi]')")
    flag(p, "mpi_timeout", type=float, default=300.0, metavar="SECONDS",
         help="in a multi-process run, stop the job when a process has not been heard from for this long "
              "(default 300)")
    flag(p, "plot", default="", metavar="FILE",
         help="caffecompat extension: keep training curves in FILE (.png, .svg or .pdf) up to date while "
              "training, as `caffecompat plot` draws them (needs matplotlib: pip install 'caffecompat[plot]')")
    flag(p, "plot_interval", type=float, default=10.0, metavar="SECONDS",
         help="redraw -plot at most this often (default 10; never more than 5%% of the run's time)")
    p.set_defaults(func=run)
    global _parser
    _parser = p


_parser: argparse.ArgumentParser | None = None


def _command_line(args: argparse.Namespace) -> list[str]:
    """`train` and the flags given (those not at their defaults), for the processes -processes starts."""
    assert _parser is not None
    return command_line(_parser, args, "train")


def run(args: argparse.Namespace) -> int:
    """Build the solver and solve."""
    from caffecompat.parallel import launch
    from caffecompat.solver.loop import Solver

    # -processes N / -gpu 0,1,... outside mpiexec: this process starts the ranks and watches them.
    processes = launch.processes_wanted(args.processes, args.gpu)
    if processes > 1 and parallel.launched_size() in (None, 1):
        launch.check_devices(launch.gpu_list(args.gpu), args.gpu, args.allow_cpu_fallback)
        return launch.supervise(_command_line(args), processes)
    apply_threads(args)
    group = parallel.activate(args.mpi_timeout)
    if args.processes and args.processes != group.size:
        raise CaffeCompatError(f"-processes {args.processes}, but mpiexec started {group.size} process(es); "
                               "give one or the other")
    # caffe train installs its signal handlers before anything else: a signal while the nets
    # are built has its -sigint_effect / -sighup_effect, never the default (death).
    signals = Signals(args.sigint_effect, args.sighup_effect)
    signals.install()
    live = None
    try:
        if args.plot and group.root:  # rank 0 logs the displays and tests the curves are made of
            from caffecompat.commands.plot import LivePlot, Options

            live = LivePlot(args.plot, Options(), Path(args.solver).stem, interval=args.plot_interval)
            live.start()
        return _train(args, Solver, signals)
    except StartupStopped as e:
        glog.info("solver.cpp:311", str(e))
        return 0
    except BaseException as e:
        if group.size > 1 and not isinstance(e, SystemExit):
            group.fail(e)  # one line naming this rank, then every rank ends with status 1
        raise
    finally:
        signals.restore()
        if live is not None:
            live.finish()


def _train(args: argparse.Namespace, solver_class: type, signals: Signals) -> int:
    from caffecompat.parallel import launch
    from caffecompat.solver.snapshot import prefix_lock

    if args.snapshot and args.weights:
        raise CaffeCompatError("give -snapshot to resume training or -weights to fine-tune, not both")
    param = read_solver_prototxt(args.solver)
    # Named files must exist before the solver logs its parameters and starts building.
    check_net_files(param, args.solver)
    inputs = [("-snapshot", args.snapshot, "solverstate")] if args.snapshot else []
    inputs += [("-weights", w.strip(), "caffemodel") for w in args.weights.split(",") if w.strip()]
    for flag_name, path, what in inputs:
        if not Path(path).is_file():
            raise CaffeCompatError(f"{flag_name} {path}: no such {what} file")
    # Caffe's -gpu 0,1,...: one solver per device; this process takes its local rank's entry.
    gpus = launch.gpu_list(args.gpu)
    if len(gpus) > 1:
        glog.info("caffe.cpp:204", "Using GPUs " + ", ".join(map(str, gpus)))
    gpu = launch.device_for(gpus, parallel.current(), args.gpu)
    asked_by = None
    # caffe train: solver_mode GPU in the file (with its device_id) stands in for a missing -gpu flag.
    if gpu is None and param.HasField("solver_mode") and param.solver_mode == caffe_pb2.SolverParameter.GPU:
        gpu = param.device_id
        asked_by = f"{args.solver}: solver_mode: GPU (device_id {gpu})"
    providers, device = providers_and_device(gpu, args.allow_cpu_fallback, asked_by)
    glog.info("caffe.cpp:197", "Use CPU." if device == "cpu" else f"Use GPU with device ID {gpu}")
    log_threads()
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
    # caffe.cpp train: -level and -stage go into the solver's train_state (and so into its logged dump).
    param.train_state.level = args.level
    param.train_state.stage.extend(stages(args.stage))
    # One run per snapshot prefix: the root solver, which writes the snapshots, holds it for the whole run.
    writes = (param.snapshot or param.snapshot_after_train) and param.snapshot_prefix and parallel.root_solver()
    with prefix_lock(param.snapshot_prefix, args.solver) if writes else contextlib.nullcontext():
        solver = solver_class(param, args.solver, weights=weights, providers=providers, signals=signals)
        try:
            if args.snapshot:
                glog.info("caffe.cpp:235", f"Resuming from {args.snapshot}")
            glog.info("caffe.cpp:239", "Starting Optimization")
            solver.solve(args.snapshot or None)
            glog.info("caffe.cpp:250", "Optimization Done.")
        finally:
            solver.close()
    return 0
