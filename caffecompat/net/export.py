"""Lower a NetSpec to an ONNX model with each layer's registry lowering.

Parameters become initializers (a standalone model, or one for training
artifacts) or graph inputs (a TEST net fed the solver's current weights).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from caffecompat import gcpause
from caffecompat.errors import CaffeCompatError, NotSupportedError
from caffecompat.layers import registry
from caffecompat.layers.graph import FedInput, GraphBuilder
from caffecompat.net.backward import BackwardPlan, lower_backward, seed_input_name
from caffecompat.net.spec import NetSpec

DEFAULT_OPSET = 17
# The newest opset whose every operator we use runs on the onnxruntime versions we support (>= 1.20).
MAX_OPSET = 21

LOSS_OUTPUT = "caffecompat/loss"


@dataclass
class Exported:
    """An exported model and what its extra outputs mean."""

    model: onnx.ModelProto
    params: list[str]  # parameter tensors the graph reads
    side_outputs: dict[str, tuple[int, str]]  # value -> (layer index, what), e.g. BatchNorm batch statistics
    param_diffs: dict[str, str] = field(default_factory=dict)  # parameter -> output holding its diff
    blob_diffs: dict[str, str] = field(default_factory=dict)  # Caffe blob -> output holding its diff
    fed_inputs: dict[str, FedInput] = field(default_factory=dict)  # inputs the runtime draws (Dropout masks)
    # debug_outputs: ("top", layer, j) / ("bottom_diff", layer, j) / ("param_diff", layer, k) -> output
    debug: dict[tuple[str, int, int], str] = field(default_factory=dict)


def export(spec: NetSpec, *, params: Mapping[str, np.ndarray] | None = None, params_as_inputs: bool = False,
           outputs: Iterable[str] | None = None, training: bool = False, loss_output: bool = False,
           opset: int = DEFAULT_OPSET, backward: BackwardPlan | None = None, blob_diffs: bool = False,
           diff_params: list[str] | None = None, seeds: list[str] = (), debug_outputs: bool = False,
           carry_state: bool = False) -> Exported:
    """The ONNX model computing `spec`.

    params: tensor values, required when they become initializers.
    outputs: value names to output (default: the net's outputs).
    training: lower for gradient training (Dropout active, BatchNorm batch statistics).
    loss_output: make the first output the scalar loss (sum of loss tops times loss weights).
    backward: append Net::Backward (net.backward.plan) and output the parameter diffs
        (of `diff_params`, default every parameter with lr_mult != 0) and, with blob_diffs, every blob's diff;
        `seeds` are values whose diff is a graph input (net.backward.seed_input_name).
    debug_outputs: also output, for Net's debug_info, every layer's tops as that layer wrote them and,
        with `backward`, each layer's bottom diffs and parameter diff contributions (Exported.debug).
    carry_state: for a runtime that keeps state between passes: recurrent layers take their initial state
        from fed inputs whose `carry` output the runtime feeds back (default: every pass starts from zeros).
    """
    with gcpause.paused():
        return _export(spec, params=params, params_as_inputs=params_as_inputs, outputs=outputs, training=training,
                       loss_output=loss_output, opset=opset, backward=backward, blob_diffs=blob_diffs,
                       diff_params=diff_params, seeds=seeds, debug_outputs=debug_outputs, carry_state=carry_state)


def _export(spec: NetSpec, *, params: Mapping[str, np.ndarray] | None = None, params_as_inputs: bool = False,
            outputs: Iterable[str] | None = None, training: bool = False, loss_output: bool = False,
            opset: int = DEFAULT_OPSET, backward: BackwardPlan | None = None, blob_diffs: bool = False,
            diff_params: list[str] | None = None, seeds: list[str] = (), debug_outputs: bool = False,
            carry_state: bool = False) -> Exported:
    # The public export() runs this with the garbage collector paused (caffecompat.gcpause).
    if not 7 <= opset <= MAX_OPSET:
        raise CaffeCompatError(f"opset {opset} is not supported: use an opset from 7 to {MAX_OPSET}")
    g = GraphBuilder(opset, training, carry_state)
    g.reserve(list(spec.shapes))
    dynamic: dict[str, tuple[int, ...]] = {}  # value -> its data-dependent axes
    for node in spec.layers:
        impl = registry.get(node)
        if impl.source:
            continue
        _check_static_bottoms(node, dynamic)
        g.begin_layer(node)
        impl.lower(node, g)
        dynamic.update({t: impl.data_dependent_axes for t in node.tops if impl.data_dependent_axes})
    bw = (lower_backward(spec, g, backward, blob_diffs=blob_diffs, params=diff_params, seeds=list(seeds))
          if backward else None)

    out_names: list[str] = []
    if loss_output:
        loss_tops = spec.loss_tops()
        if not loss_tops:
            raise CaffeCompatError(f"net '{spec.name}' has no loss: no layer top has a loss_weight")
        g._layer = "loss"
        terms = []
        for value, weight in loss_tops:
            # Net::Forward: loss += loss_weight * sum(top) for every top with a loss weight.
            total = value if len(spec.shapes[value]) == 0 else g.op1("ReduceSum", [value], keepdims=0)
            terms.append(total if weight == 1.0 else g.op1("Mul", [total, g.scalar(weight)]))
        acc = terms[0]
        for t in terms[1:]:
            acc = g.op1("Add", [acc, t])
        g.op1("Identity", [acc], LOSS_OUTPUT)
        out_names.append(LOSS_OUTPUT)

    wanted = list(spec.outputs if outputs is None else outputs)
    for name in wanted:
        if name in spec.inputs:
            continue  # a graph input cannot also be an output; the caller has it already
        if name not in spec.shapes:
            raise CaffeCompatError(f"net '{spec.name}' has no blob '{name}'")
        if name not in out_names:
            out_names.append(name)
    out_names.extend(v for v in g.side_outputs if v not in out_names)
    out_names.extend(f.carry for f in g.fed_inputs.values() if f.carry and f.carry not in out_names)
    if bw is not None:
        out_names.extend(v for v in [*bw.param_diffs.values(), *bw.blob_diffs.values()] if v not in out_names)

    used = [p for p in spec.params if p in g.used_params]
    graph_inputs = [helper.make_tensor_value_info(v, onnx.TensorProto.FLOAT, spec.shapes[v]) for v in spec.inputs]
    graph_inputs += [helper.make_tensor_value_info(v, helper.np_dtype_to_tensor_dtype(np.dtype(f.dtype)), f.shape)
                     for v, f in g.fed_inputs.items()]
    # A diff set on a top of data-dependent size (Filter's) has that size: those axes are symbolic too.
    graph_inputs += [helper.make_tensor_value_info(
        seed_input_name(v), onnx.TensorProto.FLOAT,
        [f"{v}_{a}" if a in dynamic.get(v, ()) else d for a, d in enumerate(spec.shapes[v])]) for v in seeds]
    initializers = list(g.constants)
    if params_as_inputs:
        graph_inputs += [helper.make_tensor_value_info(p, onnx.TensorProto.FLOAT, spec.params[p].shape) for p in used]
    else:
        if params is None:
            raise CaffeCompatError("internal: parameter values are needed to export initializers")
        for p in used:
            initializers.append(numpy_helper.from_array(np.asarray(params[p], dtype=np.float32), p))
    graph_outputs = []
    diff_shapes = {}
    debug = _debug_outputs(spec, g, backward, bw, diff_shapes) if debug_outputs else {}
    out_names.extend(debug.values())
    if bw is not None:
        diff_shapes.update({v: spec.params[p].shape for p, v in bw.param_diffs.items()})
        diff_shapes.update({v: spec.shapes[spec.blob_values[b]] if b in spec.blob_values else None
                            for b, v in bw.blob_diffs.items()})
    for v in out_names:
        shape = [] if v == LOSS_OUTPUT else diff_shapes.get(v, spec.shapes.get(v))
        if v in dynamic and shape is not None:
            shape = [f"{v}_{a}" if a in dynamic[v] else d for a, d in enumerate(shape)]
        graph_outputs.append(helper.make_tensor_value_info(v, onnx.TensorProto.FLOAT, shape))
    graph = helper.make_graph(g.nodes, spec.name or "net", graph_inputs, graph_outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="caffecompat")
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    if any(v not in spec.shapes and v not in diff_shapes and v != LOSS_OUTPUT for v in out_names):
        _fill_output_shapes(model)
    return Exported(model=model, params=used, side_outputs=dict(g.side_outputs),
                    param_diffs=dict(bw.param_diffs) if bw else {}, blob_diffs=dict(bw.blob_diffs) if bw else {},
                    fed_inputs=dict(g.fed_inputs), debug=debug)


def _debug_outputs(spec: NetSpec, g: GraphBuilder, bplan: BackwardPlan | None, bw, shapes: dict) -> dict:
    # Net::ForwardDebugInfo / BackwardDebugInfo read each layer's tops right after its Forward and its
    # bottom and parameter diffs right after its Backward: one copy of each (Identity) as an output.
    g._layer = "debug_info"
    out: dict[tuple[str, int, int], str] = {}

    def keep(key: tuple[str, int, int], value: str, shape: tuple[int, ...]) -> None:
        out[key] = g.op1("Identity", [value])
        shapes[out[key]] = shape

    for i, node in enumerate(spec.layers):
        if not registry.get(node).source:
            for j, top in enumerate(node.tops):
                keep(("top", i, j), top, spec.shapes[top])
    if bw is None or bplan is None:
        return out
    for i in bplan.layers():
        node = spec.layers[i]
        for j, value in enumerate(node.bottoms):
            if bplan.bottom_need[i][j] and value in bw.value_diffs:
                keep(("bottom_diff", i, j), bw.value_diffs[value], spec.shapes[value])
    for (i, k), value in bw.param_parts.items():
        keep(("param_diff", i, k), value, spec.params[spec.layers[i].param_names[k]].shape)
    return out


def _check_static_bottoms(node: registry.LayerNode, dynamic: dict[str, tuple[int, ...]]) -> None:
    # Lowerings size their ops from NetSpec's static shapes: a bottom whose size is known only at run time
    # (DetectionOutput's detections) can only be a net output.
    for value in node.bottoms:
        if value in dynamic:
            raise NotSupportedError(f"layer {node.label} of type {node.type} reading '{value}', whose size depends "
                                    "on the data (it can only be an output of the net)")


def _fill_output_shapes(model: onnx.ModelProto) -> None:
    # Side outputs (e.g. BatchNorm batch statistics) have no Caffe blob shape: take it from ONNX shape
    # inference, so that every output of the model is typed with a shape.
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for out in model.graph.output:
        if not out.type.tensor_type.HasField("shape") and out.name in known:
            out.type.CopyFrom(known[out.name].type)
