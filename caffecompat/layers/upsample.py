"""Upsample (SegNet's upsample_layer.cpp): max-unpooling by the indices a MAX Pooling's mask top recorded.

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
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register


@register("Upsample")
class Upsample(Layer):
    """Scatters each value to the top cell its mask names; every other top cell is 0."""

    max_bottoms = 2
    min_tops = max_tops = 1

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        if len(node.bottoms) != 2:
            raise NotSupportedError(f"layer {node.label} of type Upsample with {len(node.bottoms)} bottom(s): "
                                    "SegNet's Upsample takes the values and the Pooling mask as its two bottoms "
                                    "(the single-bottom Upsample of other forks is another layer)")
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
    def _indices(node: LayerNode, g: GraphBuilder) -> str:
        n, c, h, w = node.bottom_shapes[1]
        # static_cast<int> of the float mask: truncation, as Cast does.
        return g.op1("Reshape", [g.op1("Cast", [node.bottoms[1]], to=7), g.ints([n * c, h * w])])

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        n, c, h, w = node.bottom_shapes[0]
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
        # UpsampleLayer::Backward_cpu: bottom_diff[i] = top_diff[mask[i]]; the mask gets no diff.
        n, c, h, w = node.bottom_shapes[0]
        out = node.top_shapes[0]
        dy = g.op1("Reshape", [d.top[0], g.ints([n * c, out[2] * out[3]])])
        taken = g.op1("GatherElements", [dy, self._indices(node, g)], axis=1)
        d.bottom[0] = g.op1("Reshape", [taken, g.ints(list(node.bottom_shapes[0]))])
