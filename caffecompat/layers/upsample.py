"""Upsample: SegNet's two-bottom max-unpooling, and the YOLOv3 ports' one-bottom nearest-neighbour upsampling.

One bottom (the YOLOv3 Caffe ports' upsample_layer.cpp): top (N x C x H*s x
W*s), top[h][w] = bottom[h / s][w / s] for the integer factor s = `scale` (or
`stride`, the darknet converters' name, once the schema has it); Backward sums
each s x s block of the top diff.

Two bottoms (SegNet's upsample_layer.cpp): max-unpooling by the indices a MAX
Pooling's mask top recorded.

Bottoms: the values (N x C x H x W) and the mask (same shape), whose entries
are indices h * W_out + w into each channel plane of the top, as Pooling's
mask top writes them. The top (N x C x upsample_h x upsample_w, or H * scale -
pad_out_h by W * scale - pad_out_w) is zero except top[mask[i]] = value[i]
(the last write wins where two indices agree). Forward is ScatterElements per
channel plane, Backward the GatherElements of the top diff by the same indices;
the mask gets no diff.
"""

from __future__ import annotations

from onnx import helper

from caffecompat.errors import NotSupportedError
from caffecompat.layers.graph import FLOAT, GraphBuilder
from caffecompat.layers.ops import reduce_sum
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register


@register("Upsample")
class Upsample(Layer):
    """One bottom: nearest-neighbour upsampling by an integer factor. Two: scatters each value to the top cell its
    mask names; every other top cell is 0."""

    min_bottoms = 1
    max_bottoms = 2
    min_tops = max_tops = 1

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        if len(node.bottom_shapes) == 1:
            return self._nearest_shapes(node)
        p = node.param.upsample_param
        x, mask = node.bottom_shapes
        if len(x) != 4 or x != mask:
            raise node.error(f"takes two 4-D bottoms of one shape (values and mask), got {list(x)} and {list(mask)}")
        # UpsampleLayer::LayerSetUp: upsample_h and upsample_w, else scale or scale_h and scale_w.
        if p.HasField("upsample_h") and p.HasField("upsample_w"):
            if p.upsample_h <= 1 or p.upsample_w <= 1:
                raise node.error("upsample_param.upsample_h and upsample_w must be greater than 1")
            return [(x[0], x[1], p.upsample_h, p.upsample_w)]
        if p.HasField("scale_h") != p.HasField("scale_w") or (p.HasField("scale") and p.HasField("scale_h")):
            raise node.error("upsample_param needs upsample_h and upsample_w, or scale, or scale_h and scale_w")
        sh, sw = (p.scale_h, p.scale_w) if p.HasField("scale_h") else (p.scale, p.scale)
        if sh <= 1 or sw <= 1:
            raise node.error("upsample_param scale factors must be greater than 1")
        if (p.pad_out_h and sh != 2) or (p.pad_out_w and sw != 2):
            raise node.error("upsample_param.pad_out_h/pad_out_w need a scale of 2")
        return [(x[0], x[1], x[2] * sh - int(p.pad_out_h), x[3] * sw - int(p.pad_out_w))]

    @staticmethod
    def nearest_factor(node: LayerNode) -> int:
        """The one-bottom form's integer factor: `stride` where the schema has it and it is set, else `scale`."""
        p = node.param.upsample_param
        named = [f for f in ("stride", "scale_h", "scale_w", "upsample_h", "upsample_w", "pad_out_h", "pad_out_w")
                 if f in p.DESCRIPTOR.fields_by_name and p.HasField(f)]
        if any(f != "stride" for f in named):
            raise NotSupportedError(f"layer {node.label} of type Upsample with one bottom and upsample_param."
                                    f"{named[-1]}: the one-bottom (YOLOv3) Upsample takes one integer factor, "
                                    "`scale` (or `stride`); give the two-bottom SegNet form its Pooling mask")
        factor = p.stride if named else p.scale
        if factor < 1:
            raise node.error("upsample_param.scale (or stride) must be at least 1")
        return factor

    def _nearest_shapes(self, node: LayerNode) -> list[Shape]:
        x = node.bottom_shapes[0]
        if len(x) != 4:
            raise node.error(f"takes a 4-D bottom (N x C x H x W), got {list(x)}")
        s = self.nearest_factor(node)
        # The YOLOv3 ports' UpsampleLayer::Reshape: H * scale by W * scale.
        return [(x[0], x[1], x[2] * s, x[3] * s)]

    @staticmethod
    def _indices(node: LayerNode, g: GraphBuilder) -> str:
        n, c, h, w = node.bottom_shapes[1]
        # static_cast<int> of the float mask: truncation, as Cast does.
        return g.op1("Reshape", [g.op1("Cast", [node.bottoms[1]], to=7), g.ints([n * c, h * w])])

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        n, c, h, w = node.bottom_shapes[0]
        if len(node.bottoms) == 1:
            # The YOLOv3 ports' Forward_cpu: top[h][w] = bottom[h / s][w / s], each cell copied to an s x s block.
            s = self.nearest_factor(node)
            cells = g.op1("Reshape", [node.bottoms[0], g.ints([n, c, h, 1, w, 1])])
            blocks = g.op1("Expand", [cells, g.ints([n, c, h, s, w, s])])
            g.op1("Reshape", [blocks, g.ints(list(node.top_shapes[0]))], node.tops[0])
            return
        out = node.top_shapes[0]
        values = g.op1("Reshape", [node.bottoms[0], g.ints([n * c, h * w])])
        # The zeros take the number of planes from the values at run time, so that the batch can stay open.
        planes = g.op1("Slice", [g.op1("Shape", [values]), g.ints([0]), g.ints([1])])
        zeros = g.op1("ConstantOfShape", [g.op1("Concat", [planes, g.ints([out[2] * out[3]])], axis=0)],
                      value=helper.make_tensor("value", FLOAT, [1], [0.0]))
        scattered = g.op1("ScatterElements" if g.opset >= 11 else "Scatter",
                          [zeros, self._indices(node, g), values], axis=1)
        g.op1("Reshape", [scattered, g.ints(list(out))], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        n, c, h, w = node.bottom_shapes[0]
        if len(node.bottoms) == 1:
            # The YOLOv3 ports' Backward_cpu: each bottom diff is the sum of its s x s block of top diffs.
            s = self.nearest_factor(node)
            blocks = g.op1("Reshape", [d.top[0], g.ints([n, c, h, s, w, s])])
            d.bottom[0] = reduce_sum(g, blocks, [3, 5])
            return
        # UpsampleLayer::Backward_cpu: bottom_diff[i] = top_diff[mask[i]]; the mask gets no diff.
        out = node.top_shapes[0]
        dy = g.op1("Reshape", [d.top[0], g.ints([n * c, out[2] * out[3]])])
        taken = g.op1("GatherElements", [dy, self._indices(node, g)], axis=1)
        d.bottom[0] = g.op1("Reshape", [taken, g.ints(list(node.bottom_shapes[0]))])
