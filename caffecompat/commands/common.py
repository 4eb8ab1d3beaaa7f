"""Flag handling shared by the Caffe-tool subcommands: single-dash flags, -gpu, -stage, -proto, -threads, and the
command line a -processes launch hands its processes."""

from __future__ import annotations

import argparse

from caffecompat import glog
from caffecompat.errors import NotSupportedError
from caffecompat.runtime import providers
from caffecompat.runtime.providers import resolve


def flag(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """Add a flag spelled Caffe's way (-name) that also accepts --name."""
    parser.add_argument(f"-{name}", f"--{name}", dest=name, **kwargs)


def add_proto_flag(parser: argparse.ArgumentParser) -> None:
    """-proto: read the text files (and, for upgrade, binary nets) with a Caffe fork's own caffe.proto."""
    flag(parser, "proto", default=None, metavar="FILE",
         help="a Caffe fork's caffe.proto: read the prototxt files with that schema (compiled on the fly; "
              "needs grpcio-tools, `pip install 'caffecompat[proto]'`). Files of SSD, DeepLab/PSPNet, SegNet, "
              "ShuffleNet and ceil_mode forks need no -proto")


def add_gpu_flags(parser: argparse.ArgumentParser, several: bool = False) -> None:
    """-gpu and -allow_cpu_fallback (`several`: train's -gpu 0,1,... and -gpu all)."""
    flag(parser, "gpu", default="", metavar="IDS" if several else "ID",
         help="run on CUDA device ID with the CUDA execution provider (needs onnxruntime-gpu, the CUDA build); "
              + ("several (0,1,2,3 or all) train data-parallel, one process per device (see -processes)" if several
                 else "one device only"))
    flag(parser, "allow_cpu_fallback", action="store_true",
         help="when -gpu is given but CUDA is not available, warn and run on the CPU instead of stopping")


def gpu_id(value: str) -> int | None:
    """The one device id of a -gpu flag, or None for the CPU."""
    value = value.strip()
    if not value:
        return None
    if value == "all" or "," in value:
        raise NotSupportedError(f"-gpu {value}: multi-GPU training; give one device id, e.g. -gpu 0")
    try:
        return int(value)
    except ValueError:
        raise NotSupportedError(f"-gpu {value}: expected a device id such as 0") from None


def providers_and_device(gpu: int | None, allow_cpu_fallback: bool,
                         asked_by: str | None = None) -> tuple[list, str]:
    """ORT providers for inference sessions and the device string for training Modules."""
    providers = resolve(gpu, allow_cpu_fallback, asked_by)
    uses_cuda = any((p[0] if isinstance(p, tuple) else p) == "CUDAExecutionProvider" for p in providers)
    return providers, (f"cuda:{gpu}" if uses_cuda else "cpu")


def stages(value: str) -> list[str]:
    """-stage "a,b" -> ["a", "b"]; no -stage -> [""] (tools/caffe.cpp splits the empty flag into one empty stage)."""
    return value.split(",")


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    """-threads N: the threads of ONNX Runtime's sessions and of the solver's update."""
    flag(parser, "threads", type=int, default=0, metavar="N",
         help="caffecompat extension: threads per process for ONNX Runtime (intra-op) and the solver's update "
              "(default, or 0: OMP_NUM_THREADS when set, else the cores this process may use, divided between "
              "the processes of a multi-process run on this machine)")


def apply_threads(args: argparse.Namespace) -> None:
    """Use -threads' count from now on (before a multi-process group divides the cores)."""
    count = getattr(args, "threads", 0)
    if count:
        providers.set_threads(count)


def log_threads(where: str = "common.py:1") -> None:
    """The set-up log's one line saying how many threads this process uses, and why."""
    count = providers.threads()
    glog.info(where, f"Using {count} thread{'s' if count != 1 else ''} per process (from "
                     f"{providers.threads_from()}) for ONNX Runtime and the solver's update")


def command_line(parser: argparse.ArgumentParser, args: argparse.Namespace, command: str) -> list[str]:
    """`command` with the arguments given and the flags not at their defaults, for the processes that a
    -processes launch starts."""
    line = [command]
    positional: list[str] = []
    for action in parser._actions:
        value = getattr(args, action.dest, action.default)
        if not action.option_strings:
            if action.dest != "help" and value is not None:
                positional += [str(v) for v in value] if isinstance(value, list) else [str(value)]
            continue
        # Hidden actions (gflags' -noFLAG spellings) repeat a flag already passed on.
        if action.dest == "help" or action.help == argparse.SUPPRESS or value == action.default:
            continue
        line += [action.option_strings[0]] if action.nargs == 0 else [f"{action.option_strings[0]}={value}"]
    return line + positional


def add_processes_flag(parser: argparse.ArgumentParser, how: str) -> None:
    """-processes N: run the command on N processes of this machine through mpiexec; -mpi_timeout."""
    flag(parser, "processes", type=int, default=0, metavar="N",
         help=f"caffecompat extension: run on N processes of this machine, started through mpiexec ({how}; one "
              f"result, as one process writes it). Under mpiexec -n N give nothing (needs pip install "
              f"'caffecompat[mpi]')")
    flag(parser, "mpi_timeout", type=float, default=300.0, metavar="SECONDS",
         help="in a multi-process run, stop the job when a process has not been heard from for this long "
              "(default 300)")
