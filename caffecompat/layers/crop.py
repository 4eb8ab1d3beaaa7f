"""Crop (Caffe's crop_layer.cpp): crops bottom 0 to bottom 1's size on the axes from crop_param.axis on.

The window starts at `offset` (one for every cropped axis, one per axis, or none
for 0). Forward is ONNX Slice with static bounds (an Identity when nothing is
cropped). Backward: the top diff goes back to its window of a zero bottom-0
diff (a Pad); the reference bottom 1 never gets a diff.
"""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.ops import canonical_axis
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register


def pad(g: GraphBuilder, x: str, before: list[int], after: list[int]) -> str:
    """x with zeros added: before[i] entries ahead of axis i and after[i] behind it."""
    if g.opset >= 11:
        return g.op1("Pad", [x, g.ints([*before, *after])])
    return g.op1("Pad", [x], pads=[*before, *after])


@register("Crop")
class Crop(Layer):
    """Crops bottom 0 to bottom 1's size on the axes from `axis` on, starting at `offset`."""

    min_bottoms = max_bottoms = 2
    min_tops = max_tops = 1

    def _plan(self, node: LayerNode) -> tuple[list[int], Shape]:
        p = node.param.crop_param
        s, ref = node.bottom_shapes
        ndim = len(s)
        if len(ref) != ndim:
            raise node.error(f"bottoms must have the same number of axes, got {list(s)} and {list(ref)}")
        start = canonical_axis(node, p.axis, ndim, "crop_param.axis")
        if len(p.offset) > 1 and start + len(p.offset) != ndim:
            raise node.error(f"has {len(p.offset)} offsets for {ndim - start} cropped axes; give one "
                             "offset, or one per axis from crop_param.axis on")
        offsets, top = [0] * ndim, list(s)
        for i in range(start, ndim):
            # CropLayer::Reshape: one offset applies to every cropped axis; none means 0.
            off = int(p.offset[0] if len(p.offset) == 1 else p.offset[i - start] if p.offset else 0)
            if s[i] - off < ref[i]:
                raise node.error(f"the crop for axis {i} is out of bounds: size {ref[i]} at offset {off} "
                                 f"in a bottom of size {s[i]}")
            offsets[i], top[i] = off, ref[i]
        return offsets, tuple(top)

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        return [self._plan(node)[1]]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        offsets, top = self._plan(node)
        axes = [i for i, (o, t, s) in enumerate(zip(offsets, top, node.bottom_shapes[0])) if o or t != s]
        if not axes:
            g.identity(node.bottoms[0], node.tops[0])
            return
        starts = [offsets[i] for i in axes]
        ends = [offsets[i] + top[i] for i in axes]
        if g.opset >= 10:
            g.op1("Slice", [node.bottoms[0], g.ints(starts), g.ints(ends), g.ints(axes)], node.tops[0])
        else:
            g.op1("Slice", [node.bottoms[0]], node.tops[0], starts=starts, ends=ends, axes=axes)

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        # CropLayer::Backward_cpu: the top diff goes back to its window of a zero bottom 0 diff;
        # the reference bottom 1 never gets a diff (it stays zero even under force_backward).
        if not d.need_bottom[0]:
            return
        offsets, top = self._plan(node)
        after = [s - o - t for s, o, t in zip(node.bottom_shapes[0], offsets, top)]
        d.bottom[0] = pad(g, d.top[0], offsets, after) if any(offsets) or any(after) else d.top[0]
