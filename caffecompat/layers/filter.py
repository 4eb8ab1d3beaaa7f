"""Filter (Caffe's filter_layer.cpp): keeps the items (first-axis entries) whose selector is non-zero.

The last bottom is the selector (N, or N x 1 x ...); every other bottom i gives
top i, its items in order where the selector is non-zero. The number kept is
known only from the data (Caffe reshapes the tops in Reshape from the selector's
values; its first Reshape sizes them to N), so the tops' first axis is symbolic
in the ONNX graph and they can only be outputs of the net. Backward: each kept
item's diff goes back to the item it came from, the others get 0; the selector
gets no diff.
"""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register


@register("Filter")
class Filter(Layer):
    """top[i] = bottom[i][selector != 0] along axis 0."""

    min_bottoms = 2
    min_tops = 1
    data_dependent_axes = (0,)

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        # FilterLayer::LayerSetUp: CHECK_EQ(top.size(), bottom.size() - 1).
        if len(node.tops) != len(node.bottoms) - 1:
            raise node.error(f"needs one top per bottom before the selector: {len(node.bottoms) - 1} top(s), "
                             f"got {len(node.tops)}")
        selector = node.bottom_shapes[-1]
        # FilterLayer::Reshape: the selector's axes after the first are 1, and every bottom shares its num.
        if not selector or any(d != 1 for d in selector[1:]):
            raise node.error(f"the selector (last bottom) must be N or N x 1 x ..., got shape {list(selector)}")
        for i, s in enumerate(node.bottom_shapes[:-1]):
            if not s or s[0] != selector[0]:
                raise node.error(f"bottom {i} {list(s)} must have the selector's first dimension {selector[0]}")
        # The first Reshape sizes the tops to N; each later one to the number of non-zero selectors.
        return [tuple(s) for s in node.bottom_shapes[:-1]]

    def allow_force_backward(self, node: LayerNode, bottom_index: int) -> bool:
        return bottom_index < len(node.bottoms) - 1

    def _kept(self, node: LayerNode, g: GraphBuilder) -> str:
        kept = g.stashed(node, "kept")
        if kept is None:
            n = node.bottom_shapes[-1][0]
            flat = g.op1("Reshape", [node.bottoms[-1], g.ints([n])])
            # Caffe's `if (*selector)`: any non-zero value (NaN included) keeps the item.
            keep = g.op1("Not", [g.op1("Equal", [flat, g.scalar(0.0)])])
            kept = g.op1("Reshape", [g.op1("NonZero", [keep]), g.ints([-1, 1])])  # K x 1 item indices
            g.stash(node, "kept", kept)
        return kept

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        kept = self._kept(node, g)
        for x, top in zip(node.bottoms[:-1], node.tops):
            g.op1("GatherND", [x, kept], top)

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        # FilterLayer::Backward_cpu: LOG(FATAL) when asked for the selector's diff.
        if d.need_bottom[-1]:
            raise node.error("cannot backpropagate to the selector (the last bottom); set propagate_down: false on it")
        kept = self._kept(node, g)
        for i in range(len(node.tops)):
            if d.need_bottom[i]:
                zeros = g.zeros(node.bottom_shapes[i])
                d.bottom[i] = g.op1("ScatterND", [zeros, kept, d.top[i]])
