"""Test helpers: Caffe's Backward as lowered by caffecompat, and central differences to check it against.

`net_backward` runs forward+backward of a NetSpec with given top diffs, the way
Caffe's GradientChecker does: loss = sum(top * top_diff) for chosen tops.
`numeric_gradient` takes central differences of a scalar function; `float64_session`
runs a forward model in float64 when every kernel it needs has a double version
(the independent reference), and says so when it falls back to float32.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from caffecompat.net.backward import plan, seed_input_name
from caffecompat.net.export import export
from caffecompat.net.spec import NetSpec

_F, _D = onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE


def net_backward(spec: NetSpec, params: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray],
                 top_diffs: Mapping[str, np.ndarray] | None = None, force_backward: bool = True,
                 training: bool = True) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One Net::Forward + Net::Backward: (outputs by value, param diffs by tensor, blob diffs by Caffe blob).

    top_diffs: value name -> diff set on it before Backward (pycaffe's backward(**diffs)); loss tops
    not listed keep their loss-weight seed. Every parameter gets a diff (lr_mult aside).
    """
    top_diffs = dict(top_diffs or {})
    bplan = plan(spec, force_backward=force_backward)
    exported = export(spec, params_as_inputs=True, training=training, outputs=list(spec.outputs),
                      backward=bplan, blob_diffs=True, diff_params=list(spec.params), seeds=list(top_diffs))
    onnx.checker.check_model(exported.model)
    sess = ort.InferenceSession(exported.model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {n: np.asarray(feeds[n], np.float32) for n in spec.inputs}
    feed.update({p: np.asarray(params[p], np.float32) for p in exported.params})
    feed.update({seed_input_name(v): np.asarray(a, np.float32) for v, a in top_diffs.items()})
    rng = np.random.default_rng(0)
    feed.update({n: f.draw(rng) for n, f in exported.fed_inputs.items()})
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(None, feed)))
    return (out, {p: out[v] for p, v in exported.param_diffs.items()},
            {b: out[v] for b, v in exported.blob_diffs.items()})


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` computing in float64: float inputs, outputs, initializers, casts and constants."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.tensor_type.elem_type == _F:
            vi.type.tensor_type.elem_type = _D
    for i, init in enumerate(g.initializer):
        if init.data_type == _F:
            g.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64),
                                                              init.name))
    for node in g.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == _F:
                a.i = _D
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == _F:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
    return m


def float64_session(model: onnx.ModelProto) -> tuple[ort.InferenceSession, type]:
    """(session, float type): a float64 session of `model` if ONNX Runtime has every kernel, else float32."""
    try:
        return ort.InferenceSession(to_float64(model).SerializeToString(),
                                    providers=["CPUExecutionProvider"]), np.float64
    except Exception:  # a kernel without a double version (Conv, LRN, ...): Caffe's float32 check
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]), np.float32


def numeric_gradient(loss_fn, values: Mapping[str, np.ndarray], name: str, eps: float = 1e-3,
                     samples: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Central differences of loss_fn(values) at `samples` random entries of values[name] (float64)."""
    rng = np.random.default_rng(seed)
    flat = values[name].reshape(-1)
    idx = rng.choice(flat.size, size=min(samples, flat.size), replace=False)
    grads = []
    for i in idx:
        old = flat[i]
        flat[i] = old + eps
        up = loss_fn(values)
        flat[i] = old - eps
        down = loss_fn(values)
        flat[i] = old
        grads.append((up - down) / (2 * eps))
    return idx, np.array(grads)


def check_layer_gradients(spec: NetSpec, params: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray],
                          tops: list[str] | None = None, *, wrt: list[str] | None = None, samples: int = 12,
                          seed: int = 1, training: bool = True, kink: float = 0.0) -> dict[str, np.ndarray]:
    """Caffe's GradientChecker for a small net: our Backward against central differences.

    loss = sum over `tops` (Caffe blob names; default the net's outputs) of sum(top * R) for fixed
    random R, plus the net's own loss tops. Checked: the diff of every net input and parameter (or those
    named in `wrt`), at `samples` entries each. The reference is the forward model run in float64 when
    ONNX Runtime can (step 1e-4, tolerance 1e-3), else in float32 with Caffe's own step 1e-2 and
    tolerance 1e-2. Entries within `kink` of a non-differentiable point of the reference are skipped by
    the caller choosing inputs away from them. Returns our diffs by input/parameter name.
    """
    tops = tops if tops is not None else [b for b, v in spec.blob_values.items() if v in spec.outputs]
    rng = np.random.default_rng(seed)
    values = [spec.blob_values[t] for t in tops]
    diffs = {v: rng.normal(size=spec.shapes[v]).astype(np.float32) for v in values}
    _, pdiffs, bdiffs = net_backward(spec, params, feeds, diffs, training=training)
    # A net input is the first value of its blob, whose diff is the blob's.
    ours = {**{n: bdiffs[n.split("@")[0]] for n in spec.inputs}, **pdiffs}

    fwd = export(spec, params_as_inputs=True, training=training, outputs=values).model
    g = fwd.graph
    for v in values:
        g.input.append(helper.make_tensor_value_info(f"{v}#R", _F, spec.shapes[v]))
        g.node.append(helper.make_node("Mul", [v, f"{v}#R"], [f"{v}#RM"]))
        g.node.append(helper.make_node("ReduceSum", [f"{v}#RM"], [f"{v}#RS"], keepdims=0))
    terms = [f"{v}#RS" for v in values]
    for value, weight in spec.loss_tops():
        if value in values:
            continue
        g.node.append(helper.make_node("ReduceSum", [value], [f"{value}#LS"], keepdims=0))
        g.initializer.append(numpy_helper.from_array(np.float32(weight), f"{value}#LW"))
        g.node.append(helper.make_node("Mul", [f"{value}#LS", f"{value}#LW"], [f"{value}#LT"]))
        terms.append(f"{value}#LT")
    acc = terms[0]
    for i, t in enumerate(terms[1:]):
        g.node.append(helper.make_node("Add", [acc, t], [f"check#acc{i}"]))
        acc = f"check#acc{i}"
    del g.output[:]
    g.node.append(helper.make_node("Identity", [acc], ["check#loss"]))
    g.output.append(helper.make_tensor_value_info("check#loss", _F, []))
    sess, ftype = float64_session(fwd)
    eps, tol = (1e-4, 1e-3) if ftype is np.float64 else (1e-2, 1e-2)
    names = [i.name for i in sess.get_inputs()]
    fed = {n: f.draw(np.random.default_rng(0)) for n, f in
           export(spec, params_as_inputs=True, training=training, outputs=values).fed_inputs.items()}

    def loss_fn(vals: dict[str, np.ndarray]) -> float:
        feed = {}
        for n in names:
            if n in fed:
                feed[n] = fed[n]
            elif n.endswith("#R"):
                feed[n] = diffs[n[:-2]].astype(ftype)
            else:
                feed[n] = vals[n].astype(ftype)
        return float(sess.run(["check#loss"], feed)[0])

    vals = {**{n: np.asarray(feeds[n], np.float64) for n in spec.inputs},
            **{p: np.asarray(params[p], np.float64) for p in spec.params}}
    for name in wrt if wrt is not None else [*spec.inputs, *pdiffs]:
        if name not in names:
            continue  # a parameter the forward graph does not read
        idx, numeric = numeric_gradient(loss_fn, vals, name, eps=eps, samples=samples)
        got = ours[name].reshape(-1)[idx]
        scale = max(1.0, float(np.abs(numeric).max()))
        assert np.abs(got - numeric).max() <= tol * scale, (name, ftype.__name__, got, numeric)
    return ours
