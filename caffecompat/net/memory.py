"""What a resolved net needs in memory, known from its shapes before anything is allocated.

Caffe's Net::Init logs "Memory required for data" (every top blob of every
layer, in-place tops counted again, as float32). We log the same number and
refuse, before a filler or a batch is allocated, a net whose data and
parameters alone exceed the memory this process may use, naming the layer
that needs the most.
"""

from __future__ import annotations

import math
import os

try:
    import resource
except ImportError:  # Windows: no rlimits
    resource = None  # type: ignore[assignment]

from caffecompat import glog
from caffecompat.errors import CaffeCompatError
from caffecompat.net.spec import NetSpec
from caffecompat.outfiles import human_bytes

FLOAT_BYTES = 4


def data_bytes(spec: NetSpec) -> int:
    """Net::Init's memory_used_ * sizeof(float): the sum of every layer's top blob counts."""
    return sum(math.prod(s) for node in spec.layers for s in node.top_shapes) * FLOAT_BYTES


def cumulative_data_bytes(spec: NetSpec) -> list[int]:
    """`data_bytes` after each layer, as Net::Init logs it layer by layer."""
    total, out = 0, []
    for node in spec.layers:
        total += sum(math.prod(s) for s in node.top_shapes) * FLOAT_BYTES
        out.append(total)
    return out


def param_bytes(spec: NetSpec) -> int:
    """Bytes of the net's parameter blobs (shared blobs once)."""
    return sum(math.prod(p.shape) for p in spec.params.values()) * FLOAT_BYTES


def memory_limit() -> tuple[int, str] | None:
    """(bytes, what sets it): the least of physical memory, the cgroup limit and this process's rlimits."""
    limits: list[tuple[int, str]] = []
    try:
        limits.append((os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "physical memory"))
    except (ValueError, OSError, AttributeError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            limits.append((int(text), f"the container's memory limit ({path})"))
        break
    for name in ("RLIMIT_AS", "RLIMIT_DATA") if resource is not None else ():
        which = getattr(resource, name, None)
        if which is None:
            continue
        soft, _ = resource.getrlimit(which)
        if soft != resource.RLIM_INFINITY and soft > 0:
            limits.append((soft, f"the process limit {name} (ulimit)"))
    return min(limits) if limits else None


def _largest(spec: NetSpec) -> tuple[str, int]:
    """(description, bytes) of the single largest top or parameter blob."""
    best = ("", 0)
    for node in spec.layers:
        for top, shape in zip(node.tops, node.top_shapes):
            n = math.prod(shape) * FLOAT_BYTES
            if n > best[1]:
                best = (f"top '{top}' {list(shape)} of layer '{node.label}'", n)
        for i, shape in enumerate(node.param_shapes):
            n = math.prod(shape) * FLOAT_BYTES
            if n > best[1]:
                best = (f"parameter blob #{i} {list(shape)} of layer '{node.label}'", n)
    return best


def check_net_memory(spec: NetSpec, source: str, log: bool = True) -> None:
    """Log Caffe's "Memory required for data" and refuse a net that cannot fit, before allocating it."""
    data = data_bytes(spec)
    if log:
        glog.info("net.cpp:139", f"Memory required for data: {data}")
    needed = data + param_bytes(spec)
    limit = memory_limit()
    if limit is None or needed <= limit[0]:
        return
    what, size = _largest(spec)
    raise CaffeCompatError(
        f"{source}: the net needs at least {human_bytes(needed)} ({human_bytes(param_bytes(spec))} of parameters, "
        f"{human_bytes(data)} of data) but {limit[1]} allows {human_bytes(limit[0])}; the largest blob is {what} "
        f"({human_bytes(size)}): reduce its num_output, the batch size or the input size"
    )
