"""Per-layer forward times from ONNX Runtime's profiler, for `caffecompat time`."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from caffecompat.net.export import export
from caffecompat.net.spec import NetSpec
from caffecompat.runtime.providers import session_options


def layer_forward_times(spec: NetSpec, inputs: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray],
                        iterations: int, providers: list, profile_dir: str) -> dict[str, float]:
    """Mean forward milliseconds per layer over `iterations` runs of an inference session of `spec`.

    ONNX node names are `<layer>/<op>#<n>`, so each kernel's time is charged to its layer.
    """
    exported = export(spec, params_as_inputs=True)
    opts = session_options()
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(profile_dir, "caffecompat_time")
    session = ort.InferenceSession(exported.model.SerializeToString(), sess_options=opts, providers=providers)
    feed = {n: inputs[n] for n in spec.inputs}
    feed.update({p: params[p] for p in exported.params})
    for _ in range(iterations):
        session.run(None, feed)
    path = session.end_profiling()
    try:
        with open(path) as f:
            events = json.load(f)
    finally:
        os.remove(path)
    totals: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        node = e["name"][: -len("_kernel_time")]
        layer = node.rsplit("/", 1)[0] if "/" in node else node
        totals[layer] += e.get("dur", 0) / 1000.0
    return {layer: t / iterations for layer, t in totals.items()}
