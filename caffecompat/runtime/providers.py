"""Execution providers: `-gpu N` means CUDA device N; CPU otherwise."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from caffecompat.errors import CaffeCompatError

T = TypeVar("T")

# The exception types ONNX Runtime raises from its C++ core (none derives from RuntimeError).
ORT_ERRORS: tuple[type[BaseException], ...] = tuple(
    getattr(_ort_state, name) for name in ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError",
                                           "RuntimeException", "InvalidProtobuf", "ModelLoaded",
                                           "NotImplemented", "InvalidGraph", "EPFail")
    if hasattr(_ort_state, name)
)


def ort_call(what: str, fn: Callable[..., T], *args, **kwargs) -> T:
    """Call into ONNX Runtime; its failures become one-line CaffeCompatErrors saying what was running."""
    try:
        return fn(*args, **kwargs)
    except (*ORT_ERRORS, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not isinstance(e, ORT_ERRORS) and "ONNXRuntimeError" not in str(e):
            raise
        detail = " ".join(str(e).split())
        if len(detail) > 400:
            detail = detail[:400] + "..."
        raise CaffeCompatError(f"{what}: ONNX Runtime failed: {detail}") from None


def resolve(gpu: int | None, allow_cpu_fallback: bool = False, asked_by: str | None = None) -> list:
    """The provider list for ORT sessions: CUDA on device `gpu`, or CPU.

    Asking for a GPU on a runtime without the CUDA provider is an error unless
    `allow_cpu_fallback`, in which case a warning is logged and CPU is used.
    """
    if gpu is None:
        return ["CPUExecutionProvider"]
    if gpu < 0:
        raise CaffeCompatError(f"-gpu {gpu}: device ids start at 0")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        if hasattr(ort, "preload_dlls"):
            # onnxruntime-gpu[cuda,cudnn]: load the CUDA and cuDNN libraries pip installed.
            ort.preload_dlls()
        return [("CUDAExecutionProvider", {"device_id": gpu}), "CPUExecutionProvider"]
    who = asked_by or f"-gpu {gpu}"
    message = (f"{who} asks for CUDA, but this onnxruntime ({ort.__version__}) has no CUDA execution provider"
               ": install the CUDA build (pip uninstall -y onnxruntime && pip install 'onnxruntime-gpu[cuda,cudnn]'"
               "), or run on the CPU (drop -gpu, set solver_mode: CPU, or pass -allow_cpu_fallback)")
    if not allow_cpu_fallback:
        raise CaffeCompatError(message)
    from caffecompat import glog

    glog.warning("caffe.cpp:110", message + "; falling back to the CPU as asked")
    return ["CPUExecutionProvider"]


# Threads each session (and the solver's update) may use, set by -threads or by a multi-process run
# (caffecompat.parallel, which splits the machine's cores between its processes); 0: `default_threads()`.
INTRA_OP_THREADS = 0
_THREADS_FROM = ""  # where INTRA_OP_THREADS came from, for the set-up log


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one, else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_threads(processes_here: int = 1) -> tuple[int, str]:
    """The thread count when none was asked for, and where it comes from (for the set-up log).

    OMP_NUM_THREADS (OpenMP's per-process count) when set to a whole number >= 1; else this
    process's cores, divided between the `processes_here` processes of the job on this machine
    (at least 1 each) unless a launcher bound each to its own cores already.
    """
    value = os.environ.get("OMP_NUM_THREADS", "").strip().split(",")[0].strip()
    if value.isdigit() and int(value) >= 1:
        return int(value), "OMP_NUM_THREADS"
    cores = machine_cores()
    if processes_here > 1 and cores == (os.cpu_count() or cores):
        return max(1, cores // processes_here), f"the {cores} cores of this machine, shared by {processes_here} " \
                                                "processes"
    return cores, f"the {cores} core{'s' if cores != 1 else ''} this process may use"


def threads() -> int:
    """The thread count of this process: -threads (or a multi-process run's share), else `default_threads()`."""
    return INTRA_OP_THREADS or default_threads()[0]


def threads_from() -> str:
    """Where `threads()`'s count comes from: -threads, OMP_NUM_THREADS or the cores."""
    return _THREADS_FROM if INTRA_OP_THREADS else default_threads()[1]


def set_threads(count: int, origin: str = "-threads") -> None:
    """Use `count` threads in every session made from now on and in the solver's update."""
    global INTRA_OP_THREADS, _THREADS_FROM
    if count < 1:
        raise CaffeCompatError(f"-threads {count}: must be at least 1")
    INTRA_OP_THREADS, _THREADS_FROM = int(count), origin


def session_options() -> ort.SessionOptions:
    """Session options with ORT's own logging kept to warnings and above, on `threads()` threads."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads()
    return opts


# Graphs with a Backward are made without ONNX Runtime's constant folding: it turns every zeros
# tensor a Backward starts from (max pooling's ScatterElements) into an initializer the session
# keeps for good (64 MB on CaffeNet at batch 32), and it finds nothing else to fold in them.
NO_FOLDING = ["ConstantFolding"]


def inference_session(model_bytes: bytes, providers: list, options: ort.SessionOptions | None = None,
                      fold_constants: bool = True, what: str = "creating an inference session") -> ort.InferenceSession:
    """An inference session over a serialized ONNX model (`fold_constants` False for graphs with a Backward)."""
    return ort_call(what, ort.InferenceSession, model_bytes,
                    sess_options=options or session_options(), providers=providers,
                    disabled_optimizers=None if fold_constants else NO_FOLDING)


def device_of(providers: list) -> tuple[str, int]:
    """("cuda", device id) when the first provider is CUDA's, else ("cpu", 0): where OrtValues live."""
    first = providers[0] if providers else "CPUExecutionProvider"
    if isinstance(first, tuple) and first[0] == "CUDAExecutionProvider":
        return "cuda", int(first[1].get("device_id", 0))
    if first == "CUDAExecutionProvider":
        return "cuda", 0
    return "cpu", 0
