"""MVN (Caffe's mvn_layer.cpp): mean-variance normalization per (num, channel), or per num across channels.

Forward: x - mean, and with normalize_variance (x - mean) / (sqrt(E[(x - mean)^2]) + eps),
eps added after the root; the statistics cover height x width, or channels x
height x width with across_channels, of the bottom viewed as 4 axes. Backward:
dy - mean(dy) without variance, else (dy - mean(dy) - mean(dy * y) * y) /
(std + eps), Caffe's rule (not the exact derivative of its forward when eps != 0).
Backward in place with normalize_variance is refused.
"""

from __future__ import annotations

import numpy as np

from caffecompat.errors import NotSupportedError
from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.ops import reduce_mean, reduce_sum
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register


@register("MVN")
class MVN(Layer):
    """Mean-variance normalization per (num, channel) or per num: (x - mean) / (std + eps)."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        shape = node.bottom_shapes[0]
        # MVNLayer::Reshape works on num/channels/height/width: at most 4 axes.
        if not 1 <= len(shape) <= 4:
            raise node.error(f"needs a bottom with 1 to 4 axes, got shape {list(shape)}")
        return [shape]

    @staticmethod
    def _layout(node: LayerNode) -> tuple[tuple[int, ...], list[int]]:
        """The bottom's shape padded to 4 axes (Caffe's legacy num/channels/height/width accessors) and the
        axes MVNLayer takes statistics over: channels x height x width per num (across_channels), else
        height x width per (num, channel)."""
        shape = node.bottom_shapes[0]
        shape4 = tuple(shape) + (1,) * (4 - len(shape))
        return shape4, [1, 2, 3] if node.param.mvn_param.across_channels else [2, 3]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.mvn_param
        x = node.bottoms[0]
        shape = node.bottom_shapes[0]
        shape4, axes = self._layout(node)
        view = x if len(shape) == 4 else g.op1("Reshape", [x, g.ints(shape4)])
        direct = node.tops[0] if len(shape) == 4 else None
        mean = reduce_mean(g, view, shape4, axes)
        centred = g.op1("Sub", [view, mean], None if p.normalize_variance else direct)
        out = centred
        if p.normalize_variance:
            # MVNLayer: top = (x - mean) / (sqrt(E[(x - mean)^2]) + eps): eps is added after the root.
            var = reduce_mean(g, g.op1("Mul", [centred, centred]), shape4, axes)
            denom = g.op1("Add", [g.op1("Sqrt", [var]), g.scalar(p.eps)])
            g.stash(node, "denom", denom)
            out = g.op1("Div", [centred, denom], direct)
            g.stash(node, "top4", out)
        if direct is None:
            g.op1("Reshape", [out, g.ints(shape)], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        p = node.param.mvn_param
        shape = node.bottom_shapes[0]
        shape4, axes = self._layout(node)
        dy = d.top[0] if len(shape) == 4 else g.op1("Reshape", [d.top[0], g.ints(shape4)])
        if not p.normalize_variance:
            # MVNLayer::Backward_cpu without variance: dx = dy - mean(dy).
            dx = g.op1("Sub", [dy, reduce_mean(g, dy, shape4, axes)])
        else:
            if node.bottom_blobs[0] == node.top_blobs[0]:
                # In place, Caffe's MVN Backward overwrites the top diff it still reads: not reproduced.
                raise NotSupportedError(f"backward of layer {node.label} of type MVN with normalize_variance "
                                        "computed in place (give it a top of its own)")
            # With variance: dx = (dy - mean(dy) - mean(dy * y) * y) / (std + eps), Caffe's rule (not the
            # exact derivative of its forward when eps != 0).
            y = g.stashed(node, "top4")
            count = int(np.prod([shape4[a] for a in axes], dtype=np.int64))
            dot = reduce_sum(g, g.op1("Mul", [y, dy]), axes, keepdims=1)
            both = g.op1("Add", [g.op1("Mul", [y, dot]), reduce_sum(g, dy, axes, keepdims=1)])
            centred = g.op1("Add", [dy, g.op1("Mul", [both, g.scalar(-1.0 / count)])])
            dx = g.op1("Div", [centred, g.stashed(node, "denom")])
        d.bottom[0] = dx if len(shape) == 4 else g.op1("Reshape", [dx, g.ints(shape)])
