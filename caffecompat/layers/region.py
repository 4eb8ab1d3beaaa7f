"""Region (the YOLOv2 Caffe ports' region layer, Darknet's forward_region_layer): YOLOv2's output activations.

The bottom (N x num*(coords + 1 + classes) x H x W) holds, for each of the
`num` anchors, coords box planes, an objectness plane and the class planes.
The top has the bottom's shape: the logistic of the first two box planes (x,
y; w and h stay raw), the logistic of objectness (unless `background`), and
over the class planes a softmax across classes at each cell (`softmax`), else
their logistic; with `background` the softmax covers the objectness plane too.
Anchors, thresholds and the loss fields are for decoding and training, which
the ports do outside this forward. Backward is Darknet's region loss (it needs
the ground truth): not supported.
"""

from __future__ import annotations

from caffecompat.errors import NotSupportedError
from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.ops import require_opset, split
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register


def region_fields(node: LayerNode) -> tuple[int, int, int, bool, bool]:
    """(classes, coords, num, softmax, background) of region_param (darknet2caffe's RegionParameter)."""
    p = node.param.region_param

    def get(name: str, default: int) -> int:
        # A field the schema lacks keeps Darknet's default, like one the prototxt leaves out.
        known = name in p.DESCRIPTOR.fields_by_name
        return int(getattr(p, name)) if known and p.HasField(name) else default

    # Darknet's parse_region defaults: coords 4, classes 20, num 1, softmax and background off.
    return get("classes", 20), get("coords", 4), get("num", 1), bool(get("softmax", 0)), bool(get("background", 0))


@register("Region")
class Region(Layer):
    """Logistic x, y and objectness, softmax (or logistic) classes, per anchor and cell; shape unchanged."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        classes, coords, num, _, _ = region_fields(node)
        x = node.bottom_shapes[0]
        if len(x) != 4:
            raise node.error(f"takes a 4-D bottom (N x C x H x W), got {list(x)}")
        if coords < 2 or x[1] != num * (coords + 1 + classes):
            raise node.error(f"bottom has {x[1]} channels; region_param needs num * (coords + 1 + classes) = "
                             f"{num * (coords + 1 + classes)} with coords >= 2")
        return [x]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        classes, coords, num, softmax, background = region_fields(node)
        n, _, h, w = node.bottom_shapes[0]
        per = coords + 1 + classes
        x = g.op1("Reshape", [node.bottoms[0], g.ints([n, num, per, h * w])])
        if softmax:
            require_opset(node, g, 13, "Softmax over one axis")
        xy, rest, obj, cls = (g.tmp(k) for k in ("xy", "wh", "obj", "cls"))
        if coords > 2:
            split(g, x, 2, [2, coords - 2, 1, classes], [xy, rest, obj, cls])
        else:
            split(g, x, 2, [2, 1, classes], [xy, obj, cls])
        parts = [g.op1("Sigmoid", [xy])] + ([rest] if coords > 2 else [])
        if background and softmax:
            # softmax_cpu over classes + background planes, from the objectness plane on.
            parts.append(g.op1("Softmax", [g.op1("Concat", [obj, cls], axis=2)], axis=2))
        else:
            parts.append(obj if background else g.op1("Sigmoid", [obj]))
            parts.append(g.op1("Softmax", [cls], axis=2) if softmax else g.op1("Sigmoid", [cls]))
        joined = g.op1("Concat", parts, axis=2)
        g.op1("Reshape", [joined, g.ints(list(node.top_shapes[0]))], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        raise NotSupportedError(f"Region backward (YOLOv2 training) in layer {node.label}: Darknet's region loss "
                                "needs the ground-truth boxes; train in Darknet and convert, or use the net for "
                                "inference")
