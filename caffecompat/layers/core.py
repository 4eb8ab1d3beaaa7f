"""Structural layers: Input (graph inputs) and Split (Caffe's automatic copies)."""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register


@register("Input")
class Input(Layer):
    """Tops fed by the user, shaped by input_param.shape (one for all tops, or one per top)."""

    source = True
    has_backward = False
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

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        # SplitLayer::Backward_cpu: the bottom diff is the sum of the top diffs, added in top order.
        acc = d.top[0]
        for t in d.top[1:]:
            acc = g.op1("Add", [acc, t])
        d.bottom[0] = acc
