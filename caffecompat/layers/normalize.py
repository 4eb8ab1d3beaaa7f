"""Normalize (SSD's normalize_layer.cpp): x / ||x||_2 times a learned scale, per sample or per position.

across_spatial (default): one norm per sample, sqrt(sum of x^2 over C x H x W
+ eps); otherwise one per spatial position, sqrt(eps + sum of x^2 over the
channels). The scale blob is one value (channel_shared, default) or one per
channel, filled by scale_filler (default constant 1). Bottoms have 2 to 4 axes
(the fork's legacy N x C x H x W accessors). Backward is the fork's: the
bottom diff (dy - x (x . dy) / norm^2) / norm times the scale, and the scale
diff sum(top * dy) / scale, both on the blobs' data when Backward runs.
"""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.ops import reduce_sum
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register
from caffecompat.net.fillers import fill
from caffecompat.proto import caffe_pb2


@register("Normalize")
class Normalize(Layer):
    """L2 normalization across C x H x W (across_spatial) or across C per position, times a learned scale."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        s = node.bottom_shapes[0]
        # NormalizeLayer::LayerSetUp: at least 2 axes; its num/channels/height/width accessors allow at most 4.
        if not 2 <= len(s) <= 4:
            raise node.error(f"normalizes bottoms of 2 to 4 axes (N x C x H x W), got shape {list(s)}")
        return [s]

    def param_shapes(self, node: LayerNode) -> list[Shape]:
        return [() if node.param.norm_param.channel_shared else (node.bottom_shapes[0][1],)]

    def init_params(self, node: LayerNode, rng: np.random.Generator) -> list[np.ndarray]:
        p = node.param.norm_param
        # NormalizeLayer::LayerSetUp: scale_filler, else a constant 1.
        filler = p.scale_filler if p.HasField("scale_filler") else caffe_pb2.FillerParameter(type="constant", value=1)
        return [fill(filler, node.param_shapes[0], rng, f"layer '{node.name}' norm_param.scale_filler")]

    @staticmethod
    def _ncs(node: LayerNode) -> list[int]:
        s = node.bottom_shapes[0]
        return [s[0], s[1], int(np.prod(s[2:], dtype=np.int64))]

    @staticmethod
    def _scale(node: LayerNode, g: GraphBuilder) -> str:
        scale = g.param(node, 0)
        if node.param.norm_param.channel_shared:
            return scale
        return g.op1("Reshape", [scale, g.ints([1, node.bottom_shapes[0][1], 1])])

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.norm_param
        x = g.op1("Reshape", [node.bottoms[0], g.ints(self._ncs(node))])
        sq = g.op1("Mul", [x, x])
        eps = g.scalar(p.eps)
        if p.across_spatial:
            # Forward_cpu: norm = sqrt(sum of squares + eps) per sample; top = x * (1 / norm).
            norm = g.op1("Sqrt", [g.op1("Add", [reduce_sum(g, sq, [1, 2], keepdims=1), eps])])
            y = g.op1("Mul", [x, g.op1("Reciprocal", [norm])])
        else:
            # Forward_cpu: norm = sqrt(eps + sum over the channels of the squares) per position; top = x / norm.
            norm = g.op1("Sqrt", [g.op1("Add", [eps, reduce_sum(g, sq, [1], keepdims=1)])])
            y = g.op1("Div", [x, norm])
        g.stash(node, "norm", norm)
        y = g.op1("Mul", [y, self._scale(node, g)])
        g.op1("Reshape", [y, g.ints(node.top_shapes[0])], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        p = node.param.norm_param
        ncs = g.ints(self._ncs(node))
        dy = g.op1("Reshape", [d.top[0], ncs])
        if d.need_param[0]:
            # Backward_cpu: scale diff = sum(top * top_diff) / scale (over the batch; per channel unless shared).
            y = g.op1("Reshape", [node.top_blobs[0], ncs])
            prod = g.op1("Mul", [y, dy])
            if p.channel_shared:
                d.param[0] = g.op1("Div", [reduce_sum(g, prod), g.param(node, 0)])
            else:
                d.param[0] = g.op1("Div", [reduce_sum(g, prod, [0, 2]), g.param(node, 0)])
        if not d.need_bottom[0]:
            return
        norm = g.stashed(node, "norm")
        if norm is None:
            raise node.error("internal: the backward needs the forward's norm in the same graph")
        x = g.op1("Reshape", [node.bottom_blobs[0], ncs])
        if p.across_spatial:
            # Backward_cpu: (dy - x * (x . dy) / norm / norm) * (1 / norm), per sample.
            dot = reduce_sum(g, g.op1("Mul", [x, dy]), [1, 2], keepdims=1)
            coef = g.op1("Div", [g.op1("Div", [dot, norm]), norm])
            diff = g.op1("Sub", [dy, g.op1("Mul", [x, coef])])
            diff = g.op1("Mul", [diff, g.op1("Reciprocal", [norm])])
        else:
            # Backward_cpu: (dy - x * (x . dy over the channels) / norm^2) / norm, per position.
            dot = reduce_sum(g, g.op1("Mul", [x, dy]), [1], keepdims=1)
            diff = g.op1("Div", [g.op1("Mul", [x, dot]), g.op1("Mul", [norm, norm])])
            diff = g.op1("Div", [g.op1("Sub", [dy, diff]), norm])
        diff = g.op1("Mul", [diff, self._scale(node, g)])
        d.bottom[0] = g.op1("Reshape", [diff, g.ints(node.bottom_shapes[0])])
