"""ROIPooling (Fast R-CNN's roi_pooling_layer.cpp): max pooling of each region of interest into a fixed grid.

Bottoms: the feature map (N x C x H x W) and the ROIs (R x 5: batch index, x1,
y1, x2, y2 in image coordinates). Each ROI's corners are scaled by
spatial_scale and rounded (C's round); its (y2 - y1 + 1) x (x2 - x1 + 1) cells
(at least 1 x 1) split into pooled_h x pooled_w bins, bin ph spanning
[floor(ph * bin_h), ceil((ph + 1) * bin_h)) from the ROI's start, clipped to
the map. Top (R x C x pooled_h x pooled_w): each bin's max, 0 for an empty bin.
Forward is ONNX's MaxRoiPool (the same rule); Backward, as the fork's GPU
kernel (its CPU Backward is NOT_IMPLEMENTED), adds each top diff to the
bottom cell that was its bin's first maximum; the ROIs get no diff. Backward
holds an R x C x pooled_h x pooled_w x H x W mask: it is for small maps.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from caffecompat.layers.graph import FLOAT, GraphBuilder
from caffecompat.layers.ops import reduce_sum, require_opset
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register
from caffecompat.layers.roi_bins import bin_mask, clip, roi_columns, round_away


@register("ROIPooling")
class ROIPooling(Layer):
    """Max of each of pooled_h x pooled_w bins of each ROI, from the ROI's batch item."""

    min_bottoms = max_bottoms = 2
    min_tops = max_tops = 1

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        p = node.param.roi_pooling_param
        x, rois = node.bottom_shapes
        # ROIPoolingLayer::LayerSetUp: CHECK_GT(pooled_h, 0), CHECK_GT(pooled_w, 0).
        if p.pooled_h <= 0 or p.pooled_w <= 0:
            raise node.error("roi_pooling_param.pooled_h and pooled_w must be greater than 0")
        if len(x) != 4:
            raise node.error(f"bottom 0 must be 4-D (N x C x H x W), got {list(x)}")
        if not rois or rois[1:] not in ((5,), (5, 1, 1)):
            raise node.error(f"bottom 1 holds the ROIs, R x 5 (batch index, x1, y1, x2, y2); got {list(rois)}")
        return [(rois[0], x[1], p.pooled_h, p.pooled_w)]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.roi_pooling_param
        rois = g.op1("Reshape", [node.bottoms[1], g.ints([node.bottom_shapes[1][0], 5])])
        # MaxRoiPool is ROIPoolingLayer::Forward_cpu: rounded scaled corners, floor/ceil bins, 0 when empty.
        g.op1("MaxRoiPool", [node.bottoms[0], rois], node.tops[0], pooled_shape=[p.pooled_h, p.pooled_w],
              spatial_scale=p.spatial_scale)

    @staticmethod
    def _bins(g: GraphBuilder, start: str, end: str, pooled: int, size: int) -> str:
        # bin k of a ROI from `start` to `end` (rounded cells): [floor(k * b), ceil((k + 1) * b)) + start,
        # b = max(end - start + 1, 1) / pooled, clipped to [0, size].
        length = g.op1("Max", [g.op1("Add", [g.op1("Sub", [end, start]), g.scalar(1.0)]), g.scalar(1.0)])
        bin_size = g.op1("Div", [length, g.scalar(float(pooled))])
        k = g.const([[float(i) for i in range(pooled)]], hint="bins")
        lo = g.op1("Floor", [g.op1("Mul", [k, bin_size])])
        hi = g.op1("Ceil", [g.op1("Mul", [g.op1("Add", [k, g.scalar(1.0)]), bin_size])])
        lo, hi = clip(g, g.op1("Add", [lo, start]), size), clip(g, g.op1("Add", [hi, start]), size)
        return bin_mask(g, lo, hi, size)  # R x pooled x size

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        require_opset(node, g, 16, "ScatterElements with reduction='add'")
        p = node.param.roi_pooling_param
        n, c, h, w = node.bottom_shapes[0]
        r, ph, pw = node.bottom_shapes[1][0], p.pooled_h, p.pooled_w
        batch, x1, y1, x2, y2 = roi_columns(g, node, node.bottoms[1])
        scaled = [round_away(g, g.op1("Mul", [v, g.scalar(p.spatial_scale)])) for v in (x1, y1, x2, y2)]
        mh = self._bins(g, scaled[1], scaled[3], ph, h)
        mw = self._bins(g, scaled[0], scaled[2], pw, w)
        # R x 1 x ph x pw x H x W: the cells of each bin.
        mask = g.op1("Mul", [g.op1("Reshape", [mh, g.ints([r, 1, ph, 1, h, 1])]),
                             g.op1("Reshape", [mw, g.ints([r, 1, 1, pw, 1, w])])])
        item = g.op1("Cast", [g.op1("Reshape", [batch, g.ints([r])])], to=7)
        x = g.op1("Reshape", [g.op1("Gather", [node.bottoms[0], item], axis=0), g.ints([r, c, 1, 1, h, w])])
        lowest = g.const(-3.0e38)
        masked = g.op1("Where", [g.op1("Cast", [mask], to=9), x, lowest])
        # The first maximum in the bin's scan order (h, then w), as the fork's strict `>` keeps it.
        arg = g.op1("ArgMax", [g.op1("Reshape", [masked, g.ints([r, c, ph, pw, h * w])])], axis=4, keepdims=0,
                    select_last_index=0)
        cells = reduce_sum(g, g.op1("Reshape", [mask, g.ints([r, 1, ph, pw, h * w])]), [4])
        nonempty = g.op1("Cast", [g.op1("Greater", [cells, g.scalar(0.0)])], to=1)  # R x 1 x ph x pw
        plane = g.op1("Mul", [g.op1("Add", [g.op1("Mul", [g.op1("Reshape", [item, g.ints([r, 1, 1, 1])]),
                                                          g.ints([c])]),
                                            g.const([[[[i]] for i in range(c)]], np.int64)]),
                              g.ints([h * w])])
        index = g.op1("Reshape", [g.op1("Add", [plane, arg]), g.ints([-1])])
        updates = g.op1("Reshape", [g.op1("Mul", [d.top[0], nonempty]), g.ints([-1])])
        zeros = g.op1("ConstantOfShape", [g.ints([n * c * h * w])],
                      value=helper.make_tensor("value", FLOAT, [1], [0.0]))
        summed = g.op1("ScatterElements", [zeros, index, updates], axis=0, reduction="add")
        d.bottom[0] = g.op1("Reshape", [summed, g.ints([n, c, h, w])])
