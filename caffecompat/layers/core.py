"""Structural layers: Input (graph inputs) and Split (Caffe's automatic copies)."""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Layer, LayerNode, Shape, register


@register("Input")
class Input(Layer):
    """Tops fed by the user, shaped by input_param.shape (one for all tops, or one per top)."""

    source = True
    min_tops = 1

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        shapes = [tuple(int(d) for d in s.dim) for s in node.param.input_param.shape]
        if len(shapes) == 1:
            return shapes * len(node.tops)
        if len(shapes) != len(node.tops):
            raise node.error(f"input_param has {len(shapes)} shapes for {len(node.tops)} tops; "
                             "give one shape, or one per top")
        return shapes


@register("Split")
class Split(Layer):
    """Every top is a copy of the bottom."""

    min_bottoms = max_bottoms = 1
    min_tops = 1

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        return [node.bottom_shapes[0]] * len(node.tops)

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        for top in node.tops:
            g.identity(node.bottoms[0], top)
