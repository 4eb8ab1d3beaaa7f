"""PSROIPooling (R-FCN's psroi_pooling_layer.cu): position-sensitive average pooling of regions of interest.

Bottoms: the score maps (N x output_dim*group_size^2 x H x W) and the ROIs (R x
5: batch index, x1, y1, x2, y2 in image pixels). Corners are rounded (C's round)
before scaling: the ROI spans [round(x1) * s, (round(x2) + 1) * s) by the same
in y, at least 0.1 wide, split into group_size x group_size bins; bin (ph, pw)
covers [floor(ph * bin_h + y_start), ceil((ph + 1) * bin_h + y_start)) by the
same in x, clipped to the map. Top (R x output_dim x group_size x group_size):
the mean of channel (ctop * group_size + ph) * group_size + pw over the bin, 0
for an empty bin. The fork has GPU code only; Forward and Backward follow its
kernels (Backward spreads top_diff / bin area over the bin's cells; the ROIs
get no diff). Both are Einsums over bin masks, never a per-ROI copy of the map.
"""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.ops import reduce_sum, require_opset
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register
from caffecompat.layers.roi_bins import bin_mask, clip, roi_columns, round_away


@register("PSROIPooling")
class PSROIPooling(Layer):
    """Average of each bin of each ROI over the bin's own group of channels."""

    min_bottoms = max_bottoms = 2
    min_tops = max_tops = 1

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        p = node.param.psroi_pooling_param
        x, rois = node.bottom_shapes
        # R-FCN's PSROIPoolingParameter: all three fields are `required`.
        missing = [f for f in ("spatial_scale", "output_dim", "group_size") if not p.HasField(f)]
        if missing:
            raise node.error(f"psroi_pooling_param needs {', '.join(missing)} (required fields in R-FCN's schema)")
        # PSROIPoolingLayer::LayerSetUp: CHECK_GT(output_dim, 0), CHECK_GT(group_size, 0).
        if p.output_dim <= 0 or p.group_size <= 0:
            raise node.error("psroi_pooling_param.output_dim and group_size must be greater than 0")
        if len(x) != 4:
            raise node.error(f"bottom 0 must be 4-D (N x C x H x W), got {list(x)}")
        # PSROIPoolingLayer::Reshape: CHECK_EQ(channels, output_dim * group_size * group_size).
        if x[1] != p.output_dim * p.group_size ** 2:
            raise node.error(f"bottom 0 has {x[1]} channels; psroi_pooling_param needs output_dim * group_size^2 "
                             f"= {p.output_dim * p.group_size ** 2}")
        if not rois or rois[1:] not in ((5,), (5, 1, 1)):
            raise node.error(f"bottom 1 holds the ROIs, R x 5 (batch index, x1, y1, x2, y2); got {list(rois)}")
        return [(rois[0], p.output_dim, p.group_size, p.group_size)]

    @staticmethod
    def _geometry(node: LayerNode, g: GraphBuilder) -> tuple[str, str, str, str]:
        """(one-hot batch R x N, row masks R x G x H, column masks R x G x W, 1 / bin area R x G x G, 0 if empty)."""
        require_opset(node, g, 13, "Split and Unsqueeze with input axes")
        p = node.param.psroi_pooling_param
        n, _, h, w = node.bottom_shapes[0]
        gs, s = p.group_size, p.spatial_scale
        batch, x1, y1, x2, y2 = roi_columns(g, node, node.bottoms[1])

        def bins(lo: str, hi: str, size: int) -> str:
            start = g.op1("Mul", [round_away(g, lo), g.scalar(s)])
            end = g.op1("Mul", [g.op1("Add", [round_away(g, hi), g.scalar(1.0)]), g.scalar(s)])
            # The fork's max(end - start, 0.1): too small a ROI keeps a tenth of a cell.
            size_of_bin = g.op1("Div", [g.op1("Max", [g.op1("Sub", [end, start]), g.scalar(0.1)]),
                                        g.scalar(float(gs))])
            k = g.const([[float(i) for i in range(gs)]], hint="bins")
            b0 = g.op1("Floor", [g.op1("Add", [g.op1("Mul", [k, size_of_bin]), start])])
            b1 = g.op1("Ceil", [g.op1("Add", [g.op1("Mul", [g.op1("Add", [k, g.scalar(1.0)]), size_of_bin]),
                                              start])])
            return bin_mask(g, clip(g, b0, size), clip(g, b1, size), size)

        mh, mw = bins(y1, y2, h), bins(x1, x2, w)
        rows, cols = reduce_sum(g, mh, [2]), reduce_sum(g, mw, [2])  # R x G cells per bin side
        area = g.op1("Mul", [g.op1("Unsqueeze", [rows, g.ints([2])]), g.op1("Unsqueeze", [cols, g.ints([1])])])
        empty = g.op1("Equal", [area, g.scalar(0.0)])
        inv_area = g.op1("Where", [empty, g.scalar(0.0),
                                   g.op1("Div", [g.scalar(1.0), g.op1("Where", [empty, g.scalar(1.0), area])])])
        item = g.op1("Cast", [batch], to=7)  # R x 1
        onehot = g.op1("Cast", [g.op1("Equal", [item, g.const([list(range(n))], np.int64)])], to=1)  # R x N
        return onehot, mh, mw, inv_area

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.psroi_pooling_param
        n, _, h, w = node.bottom_shapes[0]
        gs, od = p.group_size, p.output_dim
        onehot, mh, mw, inv_area = self._geometry(node, g)
        x = g.op1("Reshape", [node.bottoms[0], g.ints([n, od, gs, gs, h, w])])
        # Sum over the bin's rows, then its columns, of its own channel (ctop * G + ph) * G + pw.
        rows = g.op1("Einsum", [onehot, mh, x], equation="rn,rph,nopqhw->ropqw")
        sums = g.op1("Einsum", [rows, mw], equation="ropqw,rqw->ropq")
        g.op1("Mul", [sums, g.op1("Unsqueeze", [inv_area, g.ints([1])])], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        onehot, mh, mw, inv_area = self._geometry(node, g)
        # PSROIPoolingBackwardAtomic: every cell of a non-empty bin gets top_diff / bin area.
        share = g.op1("Mul", [d.top[0], g.op1("Unsqueeze", [inv_area, g.ints([1])])])
        cols = g.op1("Einsum", [share, mw], equation="ropq,rqw->ropqw")
        dx = g.op1("Einsum", [onehot, mh, cols], equation="rn,rph,ropqw->nopqhw")
        d.bottom[0] = g.op1("Reshape", [dx, g.ints(list(node.bottom_shapes[0]))])
