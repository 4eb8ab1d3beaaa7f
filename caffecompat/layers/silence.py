"""Silence (Caffe's silence_layer.cpp): consumes its bottoms so they are not net outputs.

Forward computes nothing and there are no tops. Backward: every bottom that
propagates gets a zero diff.
"""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register


@register("Silence")
class Silence(Layer):
    """Consumes its bottoms so they are not net outputs; computes nothing."""

    min_bottoms = 1
    min_tops = max_tops = 0

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        return []

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        return None

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        # SilenceLayer::Backward_cpu: every bottom that propagates gets a zero diff.
        for j, shape in enumerate(node.bottom_shapes):
            if d.need_bottom[j]:
                d.bottom[j] = g.zeros(shape)
