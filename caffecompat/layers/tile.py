"""Tile (Caffe's tile_layer.cpp): repeats the bottom tile_param.tiles times along tile_param.axis.

Whole blocks are repeated, like numpy.tile. Forward is ONNX Tile. Backward: the
bottom diff is the sum of the top diff's `tiles` copies.
"""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.ops import canonical_axis, reduce_sum
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register


@register("Tile")
class Tile(Layer):
    """Repeats the bottom `tiles` times along `axis` (whole blocks, like numpy.tile)."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def _plan(self, node: LayerNode) -> tuple[int, int]:
        p = node.param.tile_param
        axis = canonical_axis(node, p.axis, len(node.bottom_shapes[0]), "tile_param.axis")
        if not p.HasField("tiles"):
            raise node.error("tile_param.tiles must be given")
        if p.tiles <= 0:
            raise node.error(f"tile_param.tiles must be positive, got {p.tiles}")
        return axis, int(p.tiles)

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        axis, tiles = self._plan(node)
        s = node.bottom_shapes[0]
        return [(*s[:axis], s[axis] * tiles, *s[axis + 1:])]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        axis, tiles = self._plan(node)
        repeats = [1] * len(node.bottom_shapes[0])
        repeats[axis] = tiles
        g.op1("Tile", [node.bottoms[0], g.ints(repeats)], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        # TileLayer::Backward_cpu: the bottom diff is the sum of the top diff's `tiles` copies.
        axis, tiles = self._plan(node)
        s = node.bottom_shapes[0]
        outer, inner = int(np.prod(s[:axis], dtype=np.int64)), int(np.prod(s[axis:], dtype=np.int64))
        blocks = g.op1("Reshape", [d.top[0], g.ints([outer, tiles, inner])])
        d.bottom[0] = g.op1("Reshape", [reduce_sum(g, blocks, [1]), g.ints(s)])
