"""Reorg (the YOLOv2 Caffe ports' reorg_layer.cpp, Darknet's reorg_cpu): YOLOv2's passthrough rearrangement.

reorg_param: stride s (default 2 here, as the ports' prototxts give it) and
`reverse`. Darknet's index mapping is not a plain space-to-depth: the forward
(reverse false) reads the N x C x H x W bottom as N x C/s^2 x H*s x W*s and
writes element (c2, j*s + dy, i*s + dx) to channel (dy*s + dx) * C/s^2 + c2 at
(j, i) of an N x C x H x W array, which the top then holds as N x C*s^2 x H/s x
W/s. `reverse` writes the other way round: top N x C/s^2 x H*s x W*s. Both are
a Reshape, a Transpose and a Reshape; Backward is the inverse permutation.
"""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register


def reorg_fields(node: LayerNode) -> tuple[int, bool]:
    """(stride, reverse) of reorg_param (darknet2caffe's ReorgParameter)."""
    p = node.param.reorg_param
    return (p.stride if p.HasField("stride") else 2), p.reverse


@register("Reorg")
class Reorg(Layer):
    """Darknet's reorg: channels (dy, dx, c2) from the (c2, j*s + dy, i*s + dx) cells of the bottom read at s x."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        s, reverse = reorg_fields(node)
        x = node.bottom_shapes[0]
        if len(x) != 4:
            raise node.error(f"takes a 4-D bottom (N x C x H x W), got {list(x)}")
        if s < 1:
            raise node.error("reorg_param.stride must be at least 1")
        n, c, h, w = x
        # ReorgLayer::Reshape: C must split into s^2 groups; without reverse H and W must divide by s.
        if c % (s * s):
            raise node.error(f"bottom has {c} channels, not a multiple of reorg_param.stride^2 = {s * s}")
        if reverse:
            return [(n, c // (s * s), h * s, w * s)]
        if h % s or w % s:
            raise node.error(f"bottom is {h} x {w}, not a multiple of reorg_param.stride = {s}")
        return [(n, c * s * s, h // s, w // s)]

    @staticmethod
    def _plan(node: LayerNode) -> tuple[list[int], list[int]]:
        """(the 6-D view of the bottom, the permutation taking it to the top's order)."""
        s, reverse = reorg_fields(node)
        n, c, h, w = node.bottom_shapes[0]
        c2 = c // (s * s)
        if reverse:
            # out[b, c2, j*s + dy, i*s + dx] = x[b, (dy*s + dx) * C2 + c2, j, i].
            return [n, s, s, c2, h, w], [0, 3, 4, 1, 5, 2]
        # out[b, (dy*s + dx) * C2 + c2, j, i] (an N x C x H x W array) = x read as [b, c2, j*s + dy, i*s + dx].
        return [n, c2, h, s, w, s], [0, 3, 5, 1, 2, 4]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        view, perm = self._plan(node)
        moved = g.op1("Transpose", [g.op1("Reshape", [node.bottoms[0], g.ints(view)])], perm=perm)
        g.op1("Reshape", [moved, g.ints(list(node.top_shapes[0]))], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        # reorg_cpu with the other direction: the inverse permutation of the top diff.
        view, perm = self._plan(node)
        inverse = sorted(range(6), key=perm.__getitem__)
        moved = g.op1("Reshape", [d.top[0], g.ints([view[i] for i in perm])])
        d.bottom[0] = g.op1("Reshape", [g.op1("Transpose", [moved], perm=inverse),
                                        g.ints(list(node.bottom_shapes[0]))])
