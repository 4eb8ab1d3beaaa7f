"""SPP (Caffe's spp_layer.cpp): spatial pyramid pooling, pyramid_height levels of Caffe pooling.

Level l has 2^l bins per side: kernel = ceil(size / bins), stride = kernel,
pad = (kernel * bins - size + 1) / 2, pooled by spp_param.pool (MAX or AVE) with
all of PoolingLayer's rules (its pad < kernel check included). Each level is
flattened to N x (C * its cells) and the levels are concatenated on axis 1;
with pyramid_height 1 the top is the single pooling output itself (N x C x h x w).
Backward is each level's pooling backward (the Pooling layer's own), summed.
"""

from __future__ import annotations

import math

from caffecompat.errors import NotSupportedError
from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.pooling import Pooling
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register
from caffecompat.proto import caffe_pb2

_POOLING = Pooling()


@register("SPP")
class SPP(Layer):
    """Concatenated, flattened pooling levels of 1, 2, 4, ... bins per side."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def _levels(self, node: LayerNode) -> list[LayerNode]:
        p = node.param.spp_param
        shape = node.bottom_shapes[0]
        # SPPLayer::Reshape: CHECK_EQ(4, bottom[0]->num_axes()); LayerSetUp: CHECK_GT(height/width, 0).
        if len(shape) != 4:
            raise node.error(f"takes a 4-D input (N x C x H x W), got shape {list(shape)}")
        if shape[2] <= 0 or shape[3] <= 0:
            raise node.error(f"input dimensions cannot be zero, got {list(shape)}")
        if p.pool == caffe_pb2.SPPParameter.STOCHASTIC:
            raise NotSupportedError(f"spp_param.pool STOCHASTIC (layer {node.name}); use MAX or AVE")
        if not p.HasField("pyramid_height") or p.pyramid_height <= 0:
            raise node.error("spp_param.pyramid_height must be given and positive")
        levels = []
        for level in range(p.pyramid_height):
            # SPPLayer::GetPoolingParam: 2^level bins; kernel ceil(size / bins), stride kernel,
            # pad (kernel * bins - size + 1) / 2.
            bins = 2 ** level
            pool = caffe_pb2.LayerParameter(name=f"{node.name}/level{level}", type="Pooling")
            pp = pool.pooling_param
            pp.pool = caffe_pb2.PoolingParameter.MAX if p.pool == caffe_pb2.SPPParameter.MAX \
                else caffe_pb2.PoolingParameter.AVE
            kh, kw = -(-shape[2] // bins), -(-shape[3] // bins)
            pp.kernel_h, pp.kernel_w, pp.stride_h, pp.stride_w = kh, kw, kh, kw
            pp.pad_h, pp.pad_w = (kh * bins - shape[2] + 1) // 2, (kw * bins - shape[3] + 1) // 2
            if pp.pad_h >= kh or pp.pad_w >= kw:
                # PoolingLayer::LayerSetUp: CHECK_LT(pad, kernel).
                raise node.error(f"pyramid level {level} ({bins} bins) needs pad {[pp.pad_h, pp.pad_w]} not "
                                 f"smaller than its kernel {[kh, kw]} on a {shape[2]}x{shape[3]} input; lower "
                                 "spp_param.pyramid_height")
            # A distinct index keeps each level's stashed forward values (MaxPool indices) apart.
            sub = LayerNode(pool, index=-(node.index * 64 + level + 1), phase=node.phase,
                            bottom_blobs=node.bottom_blobs, top_blobs=[f"{node.name}/level{level}"],
                            bottoms=node.bottoms, tops=[""], bottom_shapes=node.bottom_shapes)
            sub.top_shapes = _POOLING.top_shapes(sub)
            levels.append(sub)
        return levels

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        levels = self._levels(node)
        if len(levels) == 1:
            return [levels[0].top_shapes[0]]
        n = node.bottom_shapes[0][0]
        return [(n, sum(math.prod(s.top_shapes[0][1:]) for s in levels))]

    def _with_tops(self, node: LayerNode, g: GraphBuilder) -> list[LayerNode]:
        levels = self._levels(node)
        for sub in levels:
            sub.tops = [node.tops[0] if len(levels) == 1 else g.tmp("level")]
        return levels

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        levels = self._with_tops(node, g)
        if len(levels) == 1:
            _POOLING.lower(levels[0], g)
            return
        flat = []
        for sub in levels:
            _POOLING.lower(sub, g)
            flat.append(g.op1("Flatten", [sub.tops[0]], axis=1))
        g.op1("Concat", flat, node.tops[0], axis=1)

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        levels = self._with_tops(node, g)
        if len(levels) == 1:
            sub = Diffs(top=[d.top[0]], need_bottom=[True], need_param=[])
            _POOLING.backward(levels[0], g, sub)
            d.bottom[0] = sub.bottom[0]
            return
        # SPPLayer::Backward_cpu: Concat's backward slices the top diff, Flatten's reshapes it, each pooling
        # backpropagates, and the Split in front of them sums the levels' bottom diffs.
        total, offset = None, 0
        for sub in levels:
            shape = sub.top_shapes[0]
            size = math.prod(shape[1:])
            piece = g.op1("Slice", [d.top[0], g.ints([offset]), g.ints([offset + size]), g.ints([1])])
            offset += size
            diffs = Diffs(top=[g.op1("Reshape", [piece, g.ints(list(shape))])], need_bottom=[True], need_param=[])
            _POOLING.backward(sub, g, diffs)
            total = diffs.bottom[0] if total is None else g.op1("Add", [total, diffs.bottom[0]])
        d.bottom[0] = total
