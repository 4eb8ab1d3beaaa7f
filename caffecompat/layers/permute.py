"""Permute (SSD's permute_layer.cpp): the bottom's axes reordered by permute_param.order.

`order` lists the new axes by their index in the bottom; axes it leaves out
follow in their own order. Forward is ONNX Transpose; Backward transposes the
top diff back by the inverse order.
"""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register


@register("Permute")
class Permute(Layer):
    """top axis i is bottom axis order[i]."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    @staticmethod
    def order(node: LayerNode) -> list[int]:
        """PermuteLayer::LayerSetUp: the given axes, then the rest in their own order."""
        ndim = len(node.bottom_shapes[0])
        order: list[int] = []
        for axis in node.param.permute_param.order:
            if axis >= ndim:
                raise node.error(f"permute_param.order {axis} is out of range for a {ndim}-D bottom")
            if axis in order:
                raise node.error(f"permute_param.order lists axis {axis} twice")
            order.append(int(axis))
        return order + [a for a in range(ndim) if a not in order]

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        # The fork writes the top from the bottom's buffer: in place, it would overwrite what it reads.
        if node.top_blobs[0] == node.bottom_blobs[0] and self.order(node) != sorted(self.order(node)):
            raise node.error("does not allow in-place computation; give the top its own name")
        s = node.bottom_shapes[0]
        return [tuple(s[a] for a in self.order(node))]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        g.op1("Transpose", [node.bottoms[0]], node.tops[0], perm=self.order(node))

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if d.need_bottom[0]:
            order = self.order(node)
            d.bottom[0] = g.op1("Transpose", [d.top[0]], perm=[order.index(a) for a in range(len(order))])
