"""Per-layer forward and backward times from ONNX Runtime's profiler, for `caffecompat time`.

ONNX node names are `<layer>/<op>#<n>` for a layer's Forward and
`<layer>/backward/<op>#<n>` for its Backward, so every kernel's time is
charged to its layer and direction.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import defaultdict

import onnxruntime as ort

BACKWARD = "/backward"
_NODE = re.compile(r"^(?:fused )?(.*)/[A-Za-z0-9_]+#\d+(?:/.*)?$")


def profiled_options(profile_dir: str) -> ort.SessionOptions:
    """Session options that write a profile of their own under `profile_dir`."""
    from caffecompat.runtime.providers import session_options

    opts = session_options()
    opts.enable_profiling = True
    # ORT names a profile <prefix>_<date and time to the second>.json: a fresh folder per session keeps
    # two sessions made in the same second from sharing (and deleting) one file.
    opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(dir=profile_dir), "caffecompat_time")
    return opts


def layer_times(session: ort.InferenceSession | None, runs: int) -> dict[tuple[str, str], float]:
    """End `session`'s profile; mean milliseconds per run for each (layer, "forward" | "backward")."""
    if session is None:
        return {}  # a net or range with nothing to compute made no session
    path = session.end_profiling()
    try:
        with open(path) as f:
            events = json.load(f)
    finally:
        os.remove(path)
    totals: dict[tuple[str, str], float] = defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        node = e["name"][: -len("_kernel_time")]
        # <layer>/<Op>#<n>; ORT may prefix "fused " or append /<Fusion>: keep the layer before <Op>#<n>.
        match = _NODE.match(node)
        layer = match.group(1) if match else node
        direction = "forward"
        if layer.endswith(BACKWARD):
            layer, direction = layer[: -len(BACKWARD)], "backward"
        totals[(layer, direction)] += e.get("dur", 0) / 1000.0
    return {k: t / runs for k, t in totals.items()}
