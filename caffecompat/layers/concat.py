"""Concat (Caffe's concat_layer.cpp): joins the bottoms along concat_param.axis (legacy concat_dim).

All other dims must agree; the concatenated size is a static constant. Forward is
ONNX Concat (an Identity for one bottom). Backward: each bottom that propagates
gets its piece of the top diff (a single bottom shares the top's diff).
"""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.ops import canonical_axis, split
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register


@register("Concat")
class Concat(Layer):
    """Joins the bottoms along `axis` (legacy concat_dim); all other dims must agree."""

    min_bottoms = 1
    min_tops = max_tops = 1

    def _axis(self, node: LayerNode) -> int:
        p = node.param.concat_param
        ndim = len(node.bottom_shapes[0])
        if p.HasField("concat_dim"):
            # ConcatLayer::Reshape: the legacy concat_dim wins when set.
            if p.concat_dim >= ndim:
                raise node.error(f"concat_dim {p.concat_dim} is out of range for a {ndim}-D bottom")
            return int(p.concat_dim)
        return canonical_axis(node, p.axis, ndim, "concat_param.axis")

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        axis = self._axis(node)
        first = node.bottom_shapes[0]
        total = 0
        for i, s in enumerate(node.bottom_shapes):
            if len(s) != len(first) or any(a != b for j, (a, b) in enumerate(zip(s, first)) if j != axis):
                raise node.error(f"bottom #{i} has shape {list(s)}, which differs from bottom #0's "
                                 f"{list(first)} outside the concat axis {axis}")
            total += s[axis]
        return [(*first[:axis], total, *first[axis + 1:])]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        if len(node.bottoms) == 1:
            g.identity(node.bottoms[0], node.tops[0])
        else:
            g.op("Concat", list(node.bottoms), [node.tops[0]], axis=self._axis(node))

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if len(node.bottoms) == 1:
            # ConcatLayer::Reshape: a single bottom shares its diff with the top.
            if d.need_bottom[0]:
                d.bottom[0] = d.top[0]
            return
        if not any(d.need_bottom):
            return
        # ConcatLayer::Backward_cpu: each bottom that propagates gets its piece of the top diff.
        axis = self._axis(node)
        pieces = [g.tmp("piece") for _ in node.bottoms]
        split(g, d.top[0], axis, [s[axis] for s in node.bottom_shapes], pieces)
        for j, piece in enumerate(pieces):
            if d.need_bottom[j]:
                d.bottom[j] = piece
