"""Interp (DeepLab's and PSPNet's interp_layer.cpp): bilinear resizing with aligned corners, after a crop.

pad_beg/pad_end (<= 0) crop the bottom to an H_eff x W_eff window (both axes
start at -pad_beg). The top size is set by, in the fork's order: shrink_factor
alone ((H_eff - 1) / shrink + 1), zoom_factor alone (H_eff + (H_eff - 1)(zoom - 1)),
height and width, or both factors (shrink, then zoom). Each top cell reads the
window at h1r = h2 (H_eff - 1) / (H_out - 1), in the fork's float arithmetic,
weighting rows floor(h1r) and the next one (clamped) by 1 - lambda and lambda;
likewise for columns.

The resize is separable and linear: top = A_h x A_w^T per channel plane, with
A_h (H_out x H) and A_w (W_out x W) computed here as the fork computes its
weights, so Forward is two MatMuls and Backward (the fork's adjoint) the
transposed MatMuls A_h^T dy A_w.
"""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register


def interp_matrix(size_in: int, start: int, size_eff: int, size_out: int) -> np.ndarray:
    """size_out x size_in weights of caffe_cpu_interp2 along one axis, reading [start, start + size_eff)."""
    a = np.zeros((size_out, size_in), np.float32)
    if size_eff == size_out:
        # The fork's special case: a plain copy of the window.
        a[np.arange(size_out), start + np.arange(size_out)] = 1.0
        return a
    ratio = np.float32(size_eff - 1) / np.float32(size_out - 1) if size_out > 1 else np.float32(0.0)
    for i in range(size_out):
        r = np.float32(ratio * np.float32(i))
        lo = int(r)
        step = 1 if lo < size_eff - 1 else 0
        w1 = np.float32(r - np.float32(lo))
        a[i, start + lo] += np.float32(1.0) - w1
        a[i, start + lo + step] += w1
    return a


@register("Interp")
class Interp(Layer):
    """Bilinear (align-corners) resize of an N x C x H x W bottom after a crop by pad_beg/pad_end."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def _sizes(self, node: LayerNode) -> tuple[int, int, int, int, int]:
        """(H_eff, W_eff, H_out, W_out, start) as InterpLayer::Reshape sets them."""
        p = node.param.interp_param
        s = node.bottom_shapes[0]
        if len(s) != 4:
            raise node.error(f"resizes 4-D bottoms (N x C x H x W), got shape {list(s)}")
        # InterpLayer::LayerSetUp: only non-positive padding (cropping).
        if p.pad_beg > 0 or p.pad_end > 0:
            raise node.error("interp_param.pad_beg and pad_end must be <= 0 (the fork only crops)")
        h_eff, w_eff = s[2] + p.pad_beg + p.pad_end, s[3] + p.pad_beg + p.pad_end
        shrink, zoom = p.HasField("shrink_factor"), p.HasField("zoom_factor")
        if (shrink and p.shrink_factor < 1) or (zoom and p.zoom_factor < 1):
            raise node.error("interp_param.shrink_factor and zoom_factor must be >= 1")
        if shrink and not zoom:
            h_out, w_out = (h_eff - 1) // p.shrink_factor + 1, (w_eff - 1) // p.shrink_factor + 1
        elif zoom and not shrink:
            h_out, w_out = h_eff + (h_eff - 1) * (p.zoom_factor - 1), w_eff + (w_eff - 1) * (p.zoom_factor - 1)
        elif p.HasField("height") and p.HasField("width"):
            h_out, w_out = p.height, p.width
        elif shrink and zoom:
            h_out, w_out = (h_eff - 1) // p.shrink_factor + 1, (w_eff - 1) // p.shrink_factor + 1
            h_out, w_out = h_out + (h_out - 1) * (p.zoom_factor - 1), w_out + (w_out - 1) * (p.zoom_factor - 1)
        else:
            raise node.error("interp_param needs zoom_factor, shrink_factor (or both), or height and width")
        if h_eff <= 0 or w_eff <= 0:
            raise node.error(f"pad_beg {p.pad_beg} and pad_end {p.pad_end} crop the whole {s[2]} x {s[3]} input")
        if h_out <= 0 or w_out <= 0:
            raise node.error(f"the output size {h_out} x {w_out} must be positive")
        return h_eff, w_eff, h_out, w_out, -p.pad_beg

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        _, _, h_out, w_out, _ = self._sizes(node)
        s = node.bottom_shapes[0]
        return [(s[0], s[1], h_out, w_out)]

    def _matrices(self, node: LayerNode, g: GraphBuilder) -> tuple[np.ndarray, np.ndarray]:
        h_eff, w_eff, h_out, w_out, start = self._sizes(node)
        s = node.bottom_shapes[0]
        return interp_matrix(s[2], start, h_eff, h_out), interp_matrix(s[3], start, w_eff, w_out)

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        a_h, a_w = self._matrices(node, g)
        # caffe_cpu_interp2 mixes along the width first, then along the height.
        rows = g.op1("MatMul", [node.bottoms[0], g.const(a_w.T, hint="interp_w")])
        g.op1("MatMul", [g.const(a_h, hint="interp_h"), rows], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        # InterpLayer::Backward_cpu: the adjoint of the forward (caffe_cpu_interp2_backward).
        a_h, a_w = self._matrices(node, g)
        rows = g.op1("MatMul", [g.const(a_h.T, hint="interp_h"), d.top[0]])
        d.bottom[0] = g.op1("MatMul", [rows, g.const(a_w, hint="interp_w")])
