"""Log (Caffe's log_layer.cpp): log_base(shift + scale * x); base -1 means e.

Forward, as LogLayer: ln(shift + scale * x) / ln(base). Backward:
dy * (scale / ln(base)) / (shift + scale * x), x the bottom blob's data (in place: the top).
"""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.neuron import Neuron, _affine_steps, _bottom_data, _chain, _f32, _mul
from caffecompat.layers.registry import Diffs, LayerNode, register


@register("Log")
class Log(Neuron):
    """log_base(shift + scale * x); base -1 means e."""

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.log_param
        if p.base != -1 and p.base <= 0:
            raise node.error(f"log_param.base must be -1 (for e) or positive, got {p.base}")
        # LogLayer: log_base(y) = ln(y) / ln(base).
        base_scale = 1.0 if p.base == -1 else 1.0 / float(np.log(np.float32(p.base)))
        steps = _affine_steps(p.scale, p.shift) + [("Log", None)]
        _chain(g, node.bottoms[0], steps + ([("Mul", base_scale)] if base_scale != 1.0 else []), node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        p = node.param.log_param
        # LogLayer::Backward_cpu: dy * (scale / ln(base)) / (shift + scale * x), x the blob's data (in place: top).
        log_base = np.float32(1.0) if p.base == -1 else np.log(np.float32(p.base))
        inverse = g.op1("Reciprocal", [_chain(g, _bottom_data(node), _affine_steps(p.scale, p.shift))])
        d.bottom[0] = g.op1("Mul", [d.top[0], _mul(g, inverse, _f32(np.float32(p.scale) / log_base))])
