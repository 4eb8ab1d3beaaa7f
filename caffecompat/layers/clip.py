"""Clip (Caffe's clip_layer.cpp): max(min, min(x, max)).

Forward is a Min then a Max. Backward: dy where min <= x <= max (both ends
included), else 0, on the bottom blob's data; in place that is the clipped top,
so every diff passes.
"""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.neuron import Neuron, _bottom_data
from caffecompat.layers.registry import Diffs, LayerNode, register


@register("Clip")
class Clip(Neuron):
    """max(min, min(x, max))."""

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.clip_param
        low = g.op1("Min", [node.bottoms[0], g.scalar(p.max)])
        g.op1("Max", [low, g.scalar(p.min)], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        p = node.param.clip_param
        # ClipLayer::Backward_cpu: dy where min <= x <= max (both ends included) on the blob's data; in place
        # that is the clipped top, so every diff passes.
        x = _bottom_data(node)
        inside = g.op1("And", [g.op1("GreaterOrEqual", [x, g.scalar(p.min)]),
                               g.op1("LessOrEqual", [x, g.scalar(p.max)])])
        d.bottom[0] = g.op1("Where", [inside, d.top[0], g.scalar(0.0)])
