"""Slice (Caffe's slice_layer.cpp): cuts the bottom along slice_param.axis (legacy slice_dim).

The cuts are at slice_point, or into equal parts (one per top); every bound is a
static constant. Forward is ONNX Split. Backward: the bottom diff is the
concatenation of the top diffs (a single top shares the bottom's diff).
"""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.ops import canonical_axis, split
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register


@register("Slice")
class Slice(Layer):
    """Cuts the bottom along `axis` (legacy slice_dim) at slice_point, or into equal parts."""

    min_bottoms = max_bottoms = 1
    min_tops = 1

    def _plan(self, node: LayerNode) -> tuple[int, list[int]]:
        p = node.param.slice_param
        shape = node.bottom_shapes[0]
        if p.HasField("slice_dim"):
            # SliceLayer::Reshape: the legacy slice_dim wins when set.
            if p.slice_dim >= len(shape):
                raise node.error(f"slice_dim {p.slice_dim} is out of range for a {len(shape)}-D bottom")
            axis = int(p.slice_dim)
        else:
            axis = canonical_axis(node, p.axis, len(shape), "slice_param.axis")
        n, dim = len(node.top_blobs), shape[axis]
        if p.slice_point:
            if len(p.slice_point) != n - 1:
                raise node.error(f"has {len(p.slice_point)} slice_point values for {n} tops; give one "
                                 "fewer than the number of tops")
            if n > dim:
                raise node.error(f"has {n} tops but the slice axis {axis} has only {dim} entries")
            bounds = [0, *p.slice_point, dim]
            sizes = [b - a for a, b in zip(bounds, bounds[1:])]
            if any(s <= 0 for s in sizes):
                raise node.error(f"slice_point {list(p.slice_point)} must increase strictly and stay "
                                 f"inside the axis (size {dim})")
        else:
            if dim % n:
                raise node.error(f"{n} tops do not evenly divide the slice axis {axis} of size {dim}")
            sizes = [dim // n] * n
        return axis, sizes

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        axis, sizes = self._plan(node)
        s = node.bottom_shapes[0]
        return [(*s[:axis], k, *s[axis + 1:]) for k in sizes]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        axis, sizes = self._plan(node)
        split(g, node.bottoms[0], axis, sizes, list(node.tops))

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        if len(node.tops) == 1:
            # SliceLayer::Reshape: a single top shares its diff with the bottom.
            d.bottom[0] = d.top[0]
            return
        axis, _ = self._plan(node)
        d.bottom[0] = g.op1("Concat", list(d.top), axis=axis)
