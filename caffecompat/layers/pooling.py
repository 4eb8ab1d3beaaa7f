"""Pooling: MAX and AVE with Caffe's ceil rounding, clipped last window and AVE divisor; global pooling."""

from __future__ import annotations

import math

import numpy as np

from caffecompat.errors import NotSupportedError
from caffecompat.layers import geometry
from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Layer, LayerNode, Shape, register

PoolMethod = {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}


@register("Pooling")
class Pooling(Layer):
    """Caffe pooling over the two spatial axes of an N x C x H x W bottom."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

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
        out = []
        for i in range(2):
            size = node.bottom_shapes[0][2 + i]
            # PoolingLayer::Reshape rounds the output size up...
            n = int(math.ceil((size + 2 * pd[i] - k[i]) / st[i])) + 1
            # ...then drops the last window if it would start inside the bottom padding.
            if pd[i] and (n - 1) * st[i] >= size + pd[i]:
                n -= 1
            out.append(n)
        return out

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        if node.param.pooling_param.pool not in (0, 1):
            method = PoolMethod.get(node.param.pooling_param.pool, node.param.pooling_param.pool)
            raise NotSupportedError(f"pooling method {method} (layer {node.name})")
        s = node.bottom_shapes[0]
        return [(s[0], s[1], *self._pooled(node))]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.pooling_param
        k, st, pd = self._geometry(node)
        out = self._pooled(node)
        size = node.bottom_shapes[0][2:]
        x, top = node.bottoms[0], node.tops[0]
        if p.global_pooling:
            g.op1("GlobalMaxPool" if p.pool == 0 else "GlobalAveragePool", [x], top)
            return
        # Explicit end padding makes ONNX's floor-rounded output equal Caffe's output size.
        end = [(out[i] - 1) * st[i] + k[i] - size[i] - pd[i] for i in range(2)]
        end = [max(e, 0) for e in end]
        pads = [pd[0], pd[1], end[0], end[1]]
        if p.pool == 0:
            # MaxPool pads with -inf, so padded cells never win, as in Caffe. ORT's gradient for
            # MaxPool needs its Indices output (opset >= 8), so training graphs ask for it.
            outputs = [top, g.tmp("indices")] if g.training else [top]
            g.op("MaxPool", [x], outputs, kernel_shape=k, strides=st, pads=pads)
            return
        divisor = self._ave_divisor(k, st, pd, size, out)
        if np.all(divisor == k[0] * k[1]):
            g.op1("AveragePool", [x], top, kernel_shape=k, strides=st, pads=pads, count_include_pad=1)
            return
        mean = g.op1("AveragePool", [x], kernel_shape=k, strides=st, pads=pads, count_include_pad=1)
        total = g.op1("Mul", [mean, g.scalar(float(k[0] * k[1]))])
        g.op1("Div", [total, g.const(divisor, hint="ave_divisor")], top)

    @staticmethod
    def _ave_divisor(k: list[int], st: list[int], pd: list[int], size, out: list[int]) -> np.ndarray:
        # AVE pooling divides by the window clipped to the padded input [-pad, size + pad).
        sizes = []
        for i in range(2):
            start = np.arange(out[i]) * st[i] - pd[i]
            end = np.minimum(start + k[i], size[i] + pd[i])
            sizes.append(end - start)
        return np.outer(sizes[0], sizes[1]).astype(np.float32)
