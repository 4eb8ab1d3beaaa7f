"""PriorBox (SSD's prior_box_layer.cpp): the default boxes of one feature map, a constant of the net's shapes.

Top: 1 x 2 x (H * W * num_priors * 4): first every prior's (xmin, ymin, xmax,
ymax), normalized by the image size, then their variances. Per cell (row-major),
per min_size: the square min_size box, the square sqrt(min_size * max_size) box
when max_size is given, then one box per aspect ratio other than 1 (and its
inverse with `flip`). The image size is img_size/img_h/img_w or bottom 1's; the
step is step/step_h/step_w or image size / feature map size. As in the fork,
min_size and max_size are truncated to integers. The values depend only on
shapes, so the top is computed here, in the fork's float/double arithmetic,
and stored as a constant. The fork's Backward does nothing.
"""

from __future__ import annotations

import math

import numpy as np

from caffecompat.errors import NotSupportedError
from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register

f32 = np.float32


def _hw(node: LayerNode, j: int) -> tuple[int, int]:
    """Blob::height()/width() of bottom j (legacy accessors: 1 for a missing axis)."""
    s = node.bottom_shapes[j]
    if len(s) > 4:
        raise node.error(f"bottom #{j} has {len(s)} axes; PriorBox reads N x C x H x W blobs")
    s = tuple(s) + (1,) * (4 - len(s))
    return s[2], s[3]


def aspect_ratios(node: LayerNode) -> list[np.float32]:
    """1, then each aspect_ratio not already listed (within 1e-6), followed by its inverse with `flip`."""
    p = node.param.prior_box_param
    ratios = [f32(1.0)]
    for ar in p.aspect_ratio:
        if not (math.isfinite(ar) and ar > 0):
            raise node.error(f"prior_box_param.aspect_ratio {ar} must be positive and finite")
        ar = f32(ar)
        if any(abs(float(ar) - float(r)) < 1e-6 for r in ratios):
            continue
        ratios.append(ar)
        if p.flip:
            ratios.append(f32(1.0 / float(ar)))
    return ratios


def _setup(node: LayerNode) -> tuple[list[int], list[int], list[np.float32], list[float]]:
    """PriorBoxLayer::LayerSetUp's checks: (min sizes, max sizes, aspect ratios, variances)."""
    p = node.param.prior_box_param
    for field in ("offset_h", "offset_w", "width", "height"):
        if getattr(p, field):
            raise NotSupportedError(f"layer {node.label} of type PriorBox (field prior_box_param.{field} of "
                                    "OpenCV's importer)")
    if not p.min_size:
        raise node.error("prior_box_param.min_size must be given")
    if not all(math.isfinite(v) and v > 0 for v in [*p.min_size, *p.max_size]):
        raise node.error("prior_box_param.min_size and max_size must be positive and finite")
    # The fork stores each size in an int (truncating) before using it.
    mins = [int(v) for v in p.min_size]
    maxs = [int(v) for v in p.max_size]
    if p.max_size:
        if len(p.max_size) != len(p.min_size):
            raise node.error(f"gives {len(p.max_size)} max_size values for {len(p.min_size)} min_size values; "
                             "give one per min_size")
        if any(b <= a for a, b in zip(p.min_size, p.max_size)):
            raise node.error("every prior_box_param.max_size must be greater than its min_size")
    if len(p.variance) not in (0, 1, 4):
        raise node.error(f"gives {len(p.variance)} variance values; give one or four")
    if any(v <= 0 for v in p.variance):
        raise node.error("prior_box_param.variance values must be positive")
    variances = list(p.variance) or [0.1]
    if (p.HasField("img_h") or p.HasField("img_w")) and p.HasField("img_size"):
        raise node.error("give either img_size or img_h/img_w, not both")
    if (p.HasField("img_h") or p.HasField("img_w")) and (p.img_h <= 0 or p.img_w <= 0):
        raise node.error("img_h and img_w must both be given and positive")
    if (p.HasField("step_h") or p.HasField("step_w")) and p.HasField("step"):
        raise node.error("give either step or step_h/step_w, not both")
    if (p.HasField("step_h") or p.HasField("step_w")) and (p.step_h <= 0 or p.step_w <= 0):
        raise node.error("step_h and step_w must both be given and positive")
    if p.HasField("step") and p.step <= 0:
        raise node.error("prior_box_param.step must be positive")
    return mins, maxs, aspect_ratios(node), variances


def num_priors(node: LayerNode) -> int:
    """Boxes per feature-map cell."""
    mins, maxs, ratios, _ = _setup(node)
    return len(ratios) * len(mins) + len(maxs)


def prior_boxes(node: LayerNode) -> np.ndarray:
    """PriorBoxLayer::Forward_cpu: the 1 x 2 x (H * W * num_priors * 4) top."""
    p = node.param.prior_box_param
    mins, maxs, ratios, variances = _setup(node)
    layer_h, layer_w = _hw(node, 0)
    if p.HasField("img_h") or p.HasField("img_w"):
        img_h, img_w = p.img_h, p.img_w
    elif p.HasField("img_size"):
        img_h = img_w = p.img_size
    else:
        if len(node.bottom_shapes) < 2:
            raise node.error("needs the image as bottom #1, or prior_box_param.img_size (or img_h and img_w)")
        img_h, img_w = _hw(node, 1)
    if p.HasField("step_h") or p.HasField("step_w"):
        step_h, step_w = f32(p.step_h), f32(p.step_w)
    elif p.HasField("step"):
        step_h = step_w = f32(p.step)
    else:
        step_h, step_w = f32(img_h) / f32(layer_h), f32(img_w) / f32(layer_w)
    offset = f32(p.offset)

    sizes = []  # (box width, box height) per prior of a cell, as the fork's float variables hold them
    for s, min_size in enumerate(mins):
        sizes.append((f32(min_size), f32(min_size)))
        if maxs:
            side = f32(math.sqrt(min_size * maxs[s]))
            sizes.append((side, side))
        for ar in ratios:
            if abs(float(ar) - 1.0) < 1e-6:
                continue
            root = np.sqrt(ar)
            sizes.append((f32(min_size) * root, f32(min_size) / root))
    half_w = np.array([w for w, _ in sizes], np.float64) / 2.0
    half_h = np.array([h for _, h in sizes], np.float64) / 2.0
    center_x = ((np.arange(layer_w, dtype=np.float32) + offset) * step_w).astype(np.float64)
    center_y = ((np.arange(layer_h, dtype=np.float32) + offset) * step_h).astype(np.float64)
    cx = center_x[None, :, None]
    cy = center_y[:, None, None]
    # (center -/+ size / 2.) / image size, in double, stored in float.
    boxes = np.stack(np.broadcast_arrays((cx - half_w) / img_w, (cy - half_h) / img_h,
                                         (cx + half_w) / img_w, (cy + half_h) / img_h), axis=-1).astype(np.float32)
    boxes = boxes.reshape(-1)
    if p.clip:
        boxes = np.clip(boxes, 0.0, 1.0)
    var = np.resize(np.asarray(variances, np.float32), boxes.size)
    return np.stack([boxes, var])[None]


@register("PriorBox")
class PriorBox(Layer):
    """Default boxes and variances of a feature map (bottom 0) for an image (bottom 1)."""

    min_bottoms = 1
    max_bottoms = 2
    min_tops = max_tops = 1

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        h, w = _hw(node, 0)
        count = h * w * num_priors(node) * 4
        if count <= 0:
            raise node.error(f"has no priors for a feature map of {h} x {w}")
        return [(1, 2, count)]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        boxes = prior_boxes(node)
        g.identity(g.const(boxes, hint="priors"), node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        # PriorBoxLayer::Backward_cpu does nothing: the priors depend on shapes only.
        return
