"""Caffe's debug_info log lines (Net::ForwardDebugInfo, Net::BackwardDebugInfo and Net::Backward's summary).

With `debug_info: true` in the solver, every displayed iteration logs, for
each forward pass, each layer's top blobs and parameter blobs as the mean
absolute value (Blob::asum_data() / count()), right after that layer's
Forward; then, in backward order, each layer's bottom diffs and parameter
diffs; then the L1 and L2 norms of all parameters' data and diffs. TEST nets
log the forward lines on every test iteration. The values come from the
step graph's debug outputs (net.export's `debug_outputs`).

Caffe's Net::UpdateDebugInfo is never called by its solvers, so there are no
`[Update]` lines here either.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from caffecompat import glog
from caffecompat.errors import NotSupportedError
from caffecompat.net.backward import BackwardPlan
from caffecompat.net.spec import NetSpec
from caffecompat.runtime.feeder import Feeder
from caffecompat.runtime.forward import ForwardRunner
from caffecompat.solver.fmt import caffe_float

F32 = np.float32
Debug = Mapping[tuple[str, int, int], str]


def check_debuggable(feeder: Feeder, asked_by: str) -> None:
    """debug_info reads every layer's blobs from one graph: a net with Python layers is not supported."""
    if feeder.python is not None:
        raise NotSupportedError(f"{asked_by} with Python layers in net '{feeder.spec.name}'; drop debug_info, "
                                "or log the blobs from the Python layer itself")


def debug_runner(feeder: Feeder, providers: list | None, rng: np.random.Generator, asked_by: str) -> ForwardRunner:
    """A forward runner that outputs every top of every layer (and the loss tops), for forward_lines."""
    check_debuggable(feeder, asked_by)
    spec = feeder.spec
    tops = [t for node in spec.layers for t in node.tops if t not in spec.inputs]
    wanted = list(dict.fromkeys([*spec.outputs, *(v for v, _ in spec.loss_tops()), *tops]))
    return ForwardRunner(spec, outputs=wanted, providers=providers, rng=rng)


def asum(x: np.ndarray) -> np.float32:
    """Blob::asum_data / asum_diff: the sum of absolute values, as a float."""
    return F32(np.abs(np.asarray(x, np.float32)).sum(dtype=np.float64))


def mean_abs(x: np.ndarray) -> np.float32:
    """asum / count, in float (the value every debug_info line prints)."""
    x = np.asarray(x, np.float32)
    return F32(asum(x) / F32(max(x.size, 1)))


def param_display_name(spec: NetSpec, layer: int, k: int) -> str:
    """Net::AppendParam's display name: the ParamSpec's name when it has one, else the blob index."""
    specs = spec.layers[layer].param.param
    return specs[k].name if k < len(specs) and specs[k].name else str(k)


def forward_lines(spec: NetSpec, tops: Callable[[int, int], np.ndarray], data: Callable[[str], np.ndarray]) -> None:
    """Net::ForwardDebugInfo for every layer in order: `tops(i, j)` is layer i's j-th top after its Forward."""
    for i, node in enumerate(spec.layers):
        for j, blob in enumerate(node.top_blobs):
            glog.info("net.cpp:593", f"    [Forward] Layer {node.name}, top blob {blob} data: "
                                     f"{caffe_float(mean_abs(tops(i, j)))}")
        for k, name in enumerate(node.param_names):
            glog.info("net.cpp:605", f"    [Forward] Layer {node.name}, param blob {param_display_name(spec, i, k)} "
                                     f"data: {caffe_float(mean_abs(data(name)))}")


def train_forward_lines(spec: NetSpec, debug: Debug, outputs: Mapping[str, np.ndarray],
                        inputs: Mapping[str, np.ndarray], data: Callable[[str], np.ndarray]) -> None:
    """The TRAIN net's forward lines from a step's outputs (source layers' tops are its inputs)."""
    def top(i: int, j: int) -> np.ndarray:
        key = ("top", i, j)
        return outputs[debug[key]] if key in debug else inputs[spec.layers[i].tops[j]]

    forward_lines(spec, top, data)


def test_forward_lines(spec: NetSpec, outputs: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray],
                       data: Callable[[str], np.ndarray]) -> None:
    """A TEST net's forward lines: its runner outputs every top by value name."""
    def top(i: int, j: int) -> np.ndarray:
        value = spec.layers[i].tops[j]
        return outputs[value] if value in outputs else inputs[value]

    forward_lines(spec, top, data)


def backward_lines(spec: NetSpec, bplan: BackwardPlan, debug: Debug, outputs: Mapping[str, np.ndarray],
                   prior: Mapping[str, np.ndarray], data: Callable[[str], np.ndarray],
                   grad: Callable[[str], np.ndarray]) -> None:
    """Net::BackwardDebugInfo for each layer that runs Backward, last first, then the all-params summary.

    `prior` holds each parameter's diff before this pass (earlier iter_size passes); a layer's
    parameter diff line shows the blob's diff after its own Backward added to it, as Caffe's does.
    """
    running = {name: np.array(prior[name], np.float32) for name in prior}
    for i in reversed(bplan.layers()):
        node = spec.layers[i]
        for j, blob in enumerate(node.bottom_blobs):
            key = ("bottom_diff", i, j)
            if bplan.bottom_need[i][j] and key in debug:
                glog.info("net.cpp:621", f"    [Backward] Layer {node.name}, bottom blob {blob} diff: "
                                         f"{caffe_float(mean_abs(outputs[debug[key]]))}")
        for k, name in enumerate(node.param_names):
            if not bplan.param_need[i][k]:
                continue
            part = debug.get(("param_diff", i, k))
            if part is not None:
                running[name] = running[name] + outputs[part]
            glog.info("net.cpp:632", f"    [Backward] Layer {node.name}, param blob {k} diff: "
                                     f"{caffe_float(mean_abs(running[name]))}")
    # Net::Backward: L1 and L2 norms over every learnable parameter, summed in float, logged as an ERROR.
    asum_data = asum_diff = sumsq_data = sumsq_diff = F32(0)
    for name in spec.params:
        d, g = np.asarray(data(name), np.float32), np.asarray(grad(name), np.float32)
        asum_data = F32(asum_data + asum(d))
        asum_diff = F32(asum_diff + asum(g))
        sumsq_data = F32(sumsq_data + F32(np.dot(d.reshape(-1), d.reshape(-1))))
        sumsq_diff = F32(sumsq_diff + F32(np.dot(g.reshape(-1), g.reshape(-1))))
    glog.error("net.cpp:721", f"    [Backward] All net params (data, diff): L1 norm = ({caffe_float(asum_data)}, "
                              f"{caffe_float(asum_diff)}); L2 norm = ({caffe_float(np.sqrt(sumsq_data))}, "
                              f"{caffe_float(np.sqrt(sumsq_diff))})")
