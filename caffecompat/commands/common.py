"""Flag handling shared by the Caffe-tool subcommands: single-dash flags, -gpu, -stage, -proto."""

from __future__ import annotations

import argparse

from caffecompat.errors import NotSupportedError
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
