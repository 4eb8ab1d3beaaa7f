"""Axpy (SENet's axpy_layer.cpp): top = a * x + y, a a per-channel scale from bottom 0 (N x C or N x C x 1 x 1).

Bottoms: a, x, y (x and y of one shape, the top's). Forward is a Mul by `a`
reshaped to broadcast over x's spatial axes, then an Add. Backward: da = the
spatial sum of dy * x, dx = a * dy, dy passes to y unchanged.
"""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.ops import reduce_sum
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register


@register("Axpy")
class Axpy(Layer):
    """a * x + y with a per-channel a."""

    min_bottoms = max_bottoms = 3
    min_tops = max_tops = 1

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        a, x, y = node.bottom_shapes
        if len(x) < 2:
            raise node.error(f"bottom #1 (x) must have a channel axis, got shape {list(x)}")
        # AxpyLayer::Reshape: a matches x's num and channels (and is N x C x 1 x 1 when 4-D); x and y agree.
        if len(a) < 2 or a[:2] != x[:2] or int(np.prod(a, dtype=np.int64)) != x[0] * x[1]:
            raise node.error(f"bottom #0 (the scale) must be {x[0]} x {x[1]} (x 1 x 1), one value per sample and "
                             f"channel of bottom #1 {list(x)}, got {list(a)}")
        if x != y:
            raise node.error(f"bottoms #1 and #2 must have the same shape, got {list(x)} and {list(y)}")
        return [x]

    @staticmethod
    def _scale(node: LayerNode, g: GraphBuilder) -> str:
        x = node.bottom_shapes[1]
        return g.op1("Reshape", [node.bottoms[0], g.ints([x[0], x[1]] + [1] * (len(x) - 2))])

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        ax = g.op1("Mul", [self._scale(node, g), node.bottoms[1]])
        # AxpyLayer::Forward_cpu: the top starts as y, and a * x is added to it.
        g.op1("Add", [node.bottoms[2], ax], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        dy = d.top[0]
        x = node.bottom_shapes[1]
        # AxpyLayer::Backward_cpu reads x's data when Backward runs: the blob's final value.
        if d.need_bottom[0]:
            prod = g.op1("Mul", [dy, node.bottom_blobs[1]])
            summed = reduce_sum(g, prod, list(range(2, len(x)))) if len(x) > 2 else prod
            d.bottom[0] = g.op1("Reshape", [summed, g.ints(node.bottom_shapes[0])])
        if d.need_bottom[1]:
            d.bottom[1] = g.op1("Mul", [self._scale(node, g), dy])
        if d.need_bottom[2]:
            d.bottom[2] = dy
