"""Exp (Caffe's exp_layer.cpp): base ^ (shift + scale * x); base -1 means e.

Forward, as ExpLayer: base^shift * exp(inner_scale * x) with inner_scale =
ln(base) * scale in float32. Backward, from the top y: y * dy * inner_scale.
"""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.neuron import Neuron, _chain, _f32, _mul, _top_data
from caffecompat.layers.registry import Diffs, LayerNode, register
from caffecompat.proto import caffe_pb2


def _exp_inner_scale(p: caffe_pb2.ExpParameter) -> float:
    """ExpLayer's inner_scale_ = ln(base) * scale (ln(e) = 1 for base -1), in float32."""
    log_base = np.float32(1.0) if p.base == -1 else np.log(np.float32(p.base))
    return _f32(log_base * np.float32(p.scale))


@register("Exp")
class Exp(Neuron):
    """base ^ (shift + scale * x); base -1 means e."""

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.exp_param
        if p.base != -1 and p.base <= 0:
            raise node.error(f"exp_param.base must be -1 (for e) or positive, got {p.base}")
        # ExpLayer: base^(shift + scale x) = base^shift * exp(ln(base) * scale * x).
        inner = _exp_inner_scale(p)
        outer = 1.0 if p.shift == 0 else float(np.float32(p.base if p.base != -1 else np.e) ** np.float32(p.shift))
        steps = ([("Mul", inner)] if inner != 1.0 else []) + [("Exp", None)]
        _chain(g, node.bottoms[0], steps + ([("Mul", outer)] if outer != 1.0 else []), node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        # ExpLayer::Backward_cpu, from the top: y * dy * inner_scale.
        d.bottom[0] = _mul(g, g.op1("Mul", [_top_data(node), d.top[0]]), _exp_inner_scale(node.param.exp_param))
