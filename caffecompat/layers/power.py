"""Power (Caffe's power_layer.cpp): (shift + scale * x) ^ power.

Forward skips identity steps as PowerLayer does; with power or scale 0 the top
ignores x (1 if power is 0, else shift^power). Backward follows
PowerLayer::Backward_cpu's cases, with diff_scale = power * scale in float32:
a constant diff_scale for power 1, dy * (diff_scale * scale * x + diff_scale * shift)
for power 2, dy * power * y / x without shift, dy * diff_scale * y / (shift + scale * x)
otherwise, and a zero diff when diff_scale is 0.
"""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.neuron import Neuron, _affine_steps, _bottom_data, _chain, _f32, _mul, _top_data
from caffecompat.layers.registry import Diffs, LayerNode, register
from caffecompat.proto import caffe_pb2


def _power_diff_scale(p: caffe_pb2.PowerParameter) -> float:
    """PowerLayer's diff_scale_ = power * scale, a float32 product."""
    return _f32(np.float32(p.power) * np.float32(p.scale))


@register("Power")
class Power(Neuron):
    """(shift + scale * x) ^ power."""

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.power_param
        if _power_diff_scale(p) == 0.0:
            # PowerLayer::Forward: with power or scale 0 the top ignores x: 1 if power is 0, else shift^power.
            value = 1.0 if p.power == 0.0 else float(np.float32(p.shift) ** np.float32(p.power))
            g.op1("Expand", [g.scalar(value), g.ints(node.top_shapes[0])], node.tops[0])
            return
        steps = _affine_steps(p.scale, p.shift) + ([("Pow", p.power)] if p.power != 1.0 else [])
        _chain(g, node.bottoms[0], steps, node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        p = node.param.power_param
        diff_scale = _power_diff_scale(p)
        dy = d.top[0]
        if diff_scale == 0.0:
            # PowerLayer::Backward_cpu fills the diff with diff_scale (0) and never reads dy.
            d.bottom[0] = g.zeros(node.bottom_shapes[0])
            return
        if p.power == 1.0:
            d.bottom[0] = g.op1("Mul", [dy, g.scalar(diff_scale)])
            return
        x, y = _bottom_data(node), _top_data(node)
        if p.power == 2.0:
            # dy * (diff_scale * scale * x + diff_scale * shift).
            grad = g.op1("Mul", [x, g.scalar(_f32(np.float32(diff_scale) * np.float32(p.scale)))])
            if p.shift != 0.0:
                grad = g.op1("Add", [grad, g.scalar(_f32(np.float32(diff_scale) * np.float32(p.shift)))])
        elif p.shift == 0.0:
            # dy * power * y / x.
            grad = g.op1("Mul", [g.op1("Div", [y, x]), g.scalar(p.power)])
        else:
            # dy * diff_scale * y / (shift + scale * x).
            grad = _mul(g, g.op1("Div", [y, _chain(g, x, _affine_steps(p.scale, p.shift))]), diff_scale)
        d.bottom[0] = g.op1("Mul", [dy, grad])
