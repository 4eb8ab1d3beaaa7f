"""Pooling: MAX and AVE with Caffe's round_mode (CEIL or FLOOR), clipped last window and AVE divisor; global pooling.

MAX pooling may have a second top, the mask: for each output, the index h * W + w (as a float) of the input
cell its window picked in the channel plane (SegNet's Upsample reads it).
"""

from __future__ import annotations

import numpy as np

from caffecompat.errors import NotSupportedError
from caffecompat.layers import geometry
from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register
from caffecompat.proto import caffe_pb2

PoolMethod = {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}


@register("Pooling")
class Pooling(Layer):
    """Caffe pooling over the two spatial axes of an N x C x H x W bottom."""

    min_bottoms = max_bottoms = 1
    min_tops = 1
    max_tops = 2

    def _geometry(self, node: LayerNode) -> tuple[list[int], list[int], list[int]]:
        p = node.param.pooling_param
        shape = node.bottom_shapes[0]
        if len(shape) != 4:
            raise node.error(f"pools 4-D inputs (N x C x H x W), got shape {list(shape)}")
        if p.global_pooling:
            # PoolingLayer: global pooling takes the whole plane and forbids a kernel size.
            if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
                raise node.error("with global_pooling: true the kernel size cannot be specified")
            k = [shape[2], shape[3]]
        else:
            k = geometry.kernel(node, p, 2)
        st = geometry.stride(node, p, 2)
        pd = geometry.pad(node, p, 2)
        if p.global_pooling and (any(pd) or any(s != 1 for s in st)):
            raise node.error("with global_pooling: true, pad must be 0 and stride 1")
        if any(pd[i] >= k[i] for i in range(2)):
            raise node.error(f"pad {pd} must be smaller than the kernel {k}")
        if any(v <= 0 for v in k + st):
            raise node.error("kernel and stride must be positive")
        return k, st, pd

    def _pooled(self, node: LayerNode) -> list[int]:
        k, st, pd = self._geometry(node)
        ceil = node.param.pooling_param.round_mode == caffe_pb2.PoolingParameter.CEIL
        out = []
        for i in range(2):
            size = node.bottom_shapes[0][2 + i]
            # PoolingLayer::Reshape rounds (size + 2 pad - kernel) / stride up (CEIL) or down (FLOOR)...
            span = size + 2 * pd[i] - k[i]
            n = (-(-span // st[i]) if ceil else span // st[i]) + 1
            # ...then, with any padding, drops the last window if it would start inside the bottom padding
            # (in either mode; with FLOOR and pad < kernel it never does).
            if (pd[0] or pd[1]) and (n - 1) * st[i] >= size + pd[i]:
                n -= 1
            if n <= 0:
                raise node.error(f"the {k[i]}-wide kernel leaves no output on an input of size {size}")
            out.append(n)
        return out

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        if node.param.pooling_param.pool not in (0, 1):
            method = PoolMethod.get(node.param.pooling_param.pool, node.param.pooling_param.pool)
            raise NotSupportedError(f"pooling method {method} (layer {node.name})")
        # PoolingLayer::MaxTopBlobs: MAX pooling may have the mask as a second top, AVE only one top.
        if len(node.tops) == 2 and node.param.pooling_param.pool != 0:
            raise node.error("only MAX pooling has a second top (the mask); AVE takes exactly 1 top")
        s = node.bottom_shapes[0]
        return [(s[0], s[1], *self._pooled(node))] * len(node.tops)

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.pooling_param
        k, st, pd = self._geometry(node)
        out = self._pooled(node)
        size = node.bottom_shapes[0][2:]
        x, top = node.bottoms[0], node.tops[0]
        # The MAX backward reads the forward's argmax (MaxPool's Indices, opset >= 8): training graphs ask for
        # it, global pooling included.
        mask = len(node.tops) == 2
        if p.global_pooling and not (p.pool == 0 and (g.training or mask)):
            g.op1("GlobalMaxPool" if p.pool == 0 else "GlobalAveragePool", [x], top)
            return
        pads = self._onnx_pads(k, st, pd, size, out)
        if p.pool == 0:
            # MaxPool pads with -inf, so padded cells never win, as in Caffe.
            if g.training or mask:
                if mask and g.opset < 10:
                    raise NotSupportedError(f"the mask top of MAX pooling (layer {node.label}) at opset {g.opset}: "
                                            "it needs MaxPool's Indices and Mod (opset >= 10)")
                _, indices = g.op("MaxPool", [x], [top, g.tmp("indices")], kernel_shape=k, strides=st, pads=pads)
                g.stash(node, "indices", indices)
                if mask:
                    # MaxPool's Indices count over N, C, H, W; Caffe's mask over the channel plane (h * W + w).
                    plane = g.const(int(size[0] * size[1]), np.int64, "plane")
                    g.op1("Cast", [g.op1("Mod", [indices, plane])], node.tops[1], to=1)
            else:
                g.op("MaxPool", [x], [top], kernel_shape=k, strides=st, pads=pads)
            return
        divisor = self._ave_divisor(k, st, pd, size, out)
        if np.all(divisor == k[0] * k[1]):
            g.op1("AveragePool", [x], top, kernel_shape=k, strides=st, pads=pads, count_include_pad=1)
            return
        mean = g.op1("AveragePool", [x], kernel_shape=k, strides=st, pads=pads, count_include_pad=1)
        total = g.op1("Mul", [mean, g.scalar(float(k[0] * k[1]))])
        g.op1("Div", [total, g.const(divisor, hint="ave_divisor")], top)

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        p = node.param.pooling_param
        k, st, pd = self._geometry(node)
        out = self._pooled(node)
        shape = node.bottom_shapes[0]
        dy = d.top[0]
        if p.pool == 0:
            d.bottom[0] = self._max_backward(node, g, dy, k, st, self._onnx_pads(k, st, pd, shape[2:], out))
            return
        if p.global_pooling:
            # AVE over the whole plane: every cell gets top_diff / (H W).
            share = g.op1("Div", [dy, g.scalar(float(shape[2] * shape[3]))])
            d.bottom[0] = g.op1("Expand", [share, g.ints(list(shape))])
            return
        # PoolingLayer::Backward_cpu (AVE): each top diff, divided by its window's clipped size, is added to
        # every bottom cell of the window: a ConvTranspose by a kernel of ones, cropped to the bottom.
        share = g.op1("Div", [dy, g.const(self._ave_divisor(k, st, pd, shape[2:], out), hint="ave_divisor")])
        share = g.op1("Reshape", [share, g.ints([shape[0] * shape[1], 1, *out])])
        ones = g.const(np.ones((1, 1, *k), np.float32), hint="ones")
        end = [(out[i] - 1) * st[i] + k[i] - pd[i] - shape[2 + i] for i in range(2)]
        # Windows that stop short of the bottom's end (FLOOR rounding) leave the last cells a zero diff.
        spread = g.op1("ConvTranspose", [share, ones], kernel_shape=k, strides=st,
                       pads=[pd[0], pd[1], max(end[0], 0), max(end[1], 0)],
                       output_padding=[max(-e, 0) for e in end] if min(end) < 0 else None)
        d.bottom[0] = g.op1("Reshape", [spread, g.ints(list(shape))])

    @staticmethod
    def _max_backward(node: LayerNode, g: GraphBuilder, dy: str, k: list[int], st: list[int],
                      pads: list[int]) -> str:
        # PoolingLayer::Backward_cpu (MAX): each top diff is added to the bottom cell its forward picked, the
        # first maximum in the window's row-major scan; ORT's MaxPool Indices pick the same cell (a strict
        # comparison in the same scan order) and index the unpadded bottom flattened over N, C, H, W.
        if g.opset < 16:
            raise NotSupportedError(f"the backward of MAX pooling (layer {node.label}) at opset {g.opset}: "
                                    "it needs ScatterElements with reduction (opset >= 16)")
        indices = g.stashed(node, "indices")
        if indices is None:
            # Lowered for inference (no Indices stashed): run the MaxPool again for them.
            _, indices = g.op("MaxPool", [node.bottoms[0]], 2, kernel_shape=k, strides=st, pads=pads)
        shape = node.bottom_shapes[0]
        flat = g.ints([-1])
        total = g.zeros([int(np.prod(shape))])
        diff = g.op1("ScatterElements", [total, g.op1("Reshape", [indices, flat]), g.op1("Reshape", [dy, flat])],
                     axis=0, reduction="add")
        return g.op1("Reshape", [diff, g.ints(list(shape))])

    @staticmethod
    def _onnx_pads(k: list[int], st: list[int], pd: list[int], size, out: list[int]) -> list[int]:
        # Explicit end padding makes ONNX's floor-rounded output equal Caffe's output size.
        end = [max((out[i] - 1) * st[i] + k[i] - size[i] - pd[i], 0) for i in range(2)]
        return [pd[0], pd[1], end[0], end[1]]

    @staticmethod
    def _ave_divisor(k: list[int], st: list[int], pd: list[int], size, out: list[int]) -> np.ndarray:
        # AVE pooling divides by the window clipped to the padded input [-pad, size + pad).
        sizes = []
        for i in range(2):
            start = np.arange(out[i]) * st[i] - pd[i]
            end = np.minimum(start + k[i], size[i] + pd[i])
            sizes.append(end - start)
        return np.outer(sizes[0], sizes[1]).astype(np.float32)
