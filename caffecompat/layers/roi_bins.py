"""Bins of regions of interest as ONNX ops, shared by ROIPooling and PSROIPooling.

A ROI blob is R x 5 (or R x 5 x 1 x 1): batch index, x1, y1, x2, y2 in image
coordinates. `roi_columns` splits it; `round_away` is C's round (halves away
from zero, which ONNX's Round does not do); `bin_mask` turns per-bin [start,
end) bounds into a 0/1 mask over a feature-map axis.
"""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.ops import split
from caffecompat.layers.registry import LayerNode


def roi_columns(g: GraphBuilder, node: LayerNode, rois: str) -> list[str]:
    """The five R x 1 columns (batch index, x1, y1, x2, y2) of the ROI bottom."""
    r = node.bottom_shapes[1][0]
    flat = g.op1("Reshape", [rois, g.ints([r, 5])])
    columns = [g.tmp(k) for k in ("batch", "x1", "y1", "x2", "y2")]
    split(g, flat, 1, [1] * 5, columns)
    return columns


def round_away(g: GraphBuilder, x: str) -> str:
    """C's round(): halves away from zero, sign(x) * floor(|x| + 0.5)."""
    return g.op1("Mul", [g.op1("Sign", [x]), g.op1("Floor", [g.op1("Add", [g.op1("Abs", [x]), g.scalar(0.5)])])])


def clip(g: GraphBuilder, x: str, hi: int) -> str:
    """min(max(x, 0), hi) of a float tensor."""
    return g.op1("Min", [g.op1("Max", [x, g.scalar(0.0)]), g.scalar(float(hi))])


def bin_mask(g: GraphBuilder, start: str, end: str, size: int) -> str:
    """float 0/1 of shape start.shape + [size]: 1 where start <= i < end (start, end: float, integral)."""
    idx = g.const([float(i) for i in range(size)], hint="positions")
    s, e = g.op1("Unsqueeze", [start, g.ints([-1])]), g.op1("Unsqueeze", [end, g.ints([-1])])
    inside = g.op1("And", [g.op1("GreaterOrEqual", [idx, s]), g.op1("Less", [idx, e])])
    return g.op1("Cast", [inside], to=1)
