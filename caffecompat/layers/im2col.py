"""Im2col (Caffe's im2col_layer.cpp): the columns a convolution would multiply, channels-first.

convolution_param gives kernel, stride, pad, dilation and the channel axis. The
top is the bottom with the channel axis C made C * prod(kernel) and each spatial
axis its convolution output size; channel c * prod(kernel) + kernel offset (row
major) at output position p holds the input at p * stride - pad + offset *
dilation (zero outside). Forward is a grouped Conv (one group per input channel)
with one-hot kernels, which is exactly that gather; Backward (Caffe's col2im,
summing each column back onto the cell it came from) is the ConvTranspose of
the same kernels.
"""

from __future__ import annotations

import math

import numpy as np

from caffecompat.layers import geometry
from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.ops import canonical_axis
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register


@register("Im2col")
class Im2col(Layer):
    """top = im2col(bottom) with convolution_param's geometry."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def _geometry(self, node: LayerNode) -> tuple[int, list[int], list[int], list[int], list[int], list[int]]:
        p = node.param.convolution_param
        shape = node.bottom_shapes[0]
        axis = canonical_axis(node, p.axis, len(shape), "convolution_param.axis")
        n = len(shape) - axis - 1
        # Im2colLayer::LayerSetUp: CHECK_GE(num_spatial_axes_, 1).
        if n < 1:
            raise node.error(f"needs at least one spatial axis after the channel axis {axis}, got shape {list(shape)}")
        k, st = geometry.kernel(node, p, n), geometry.stride(node, p, n)
        pd, dl = geometry.pad(node, p, n), geometry.dilation(node, p, n)
        if any(v <= 0 for v in k + st + dl):
            raise node.error(f"kernel {k}, stride {st} and dilation {dl} must be positive")
        if any(v < 0 for v in pd):
            raise node.error(f"pad {pd} must not be negative")
        out = []
        for i in range(n):
            # Im2colLayer::Reshape: (input + 2 pad - (dilation (kernel - 1) + 1)) / stride + 1.
            extent = dl[i] * (k[i] - 1) + 1
            size = (shape[axis + 1 + i] + 2 * pd[i] - extent) // st[i] + 1
            if size <= 0:
                raise node.error(f"the kernel extent {extent} with pad {pd[i]} does not fit spatial axis {i} of "
                                 f"size {shape[axis + 1 + i]}")
            out.append(size)
        return axis, k, st, pd, dl, out

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        axis, k, _, _, _, out = self._geometry(node)
        s = node.bottom_shapes[0]
        return [(*s[:axis], s[axis] * math.prod(k), *out)]

    def _kernels(self, g: GraphBuilder, channels: int, k: list[int]) -> str:
        # Output channel c * K + j of group c picks kernel offset j (row major): a one-hot kernel per offset.
        kk = math.prod(k)
        onehot = np.eye(kk, dtype=np.float32).reshape(kk, 1, *k)
        return g.const(np.tile(onehot, (channels, 1, *[1] * len(k))), hint="im2col_kernels")

    def _nchw(self, node: LayerNode) -> list[int]:
        axis = self._geometry(node)[0]
        s = node.bottom_shapes[0]
        return [math.prod(s[:axis]), s[axis], *s[axis + 1:]]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        axis, k, st, pd, dl, _ = self._geometry(node)
        c = node.bottom_shapes[0][axis]
        x = g.op1("Reshape", [node.bottoms[0], g.ints(self._nchw(node))])
        cols = g.op1("Conv", [x, self._kernels(g, c, k)], kernel_shape=k, strides=st, pads=pd + pd, dilations=dl,
                     group=c)
        g.op1("Reshape", [cols, g.ints(list(node.top_shapes[0]))], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        axis, k, st, pd, dl, out = self._geometry(node)
        nchw = self._nchw(node)
        c = nchw[1]
        dy = g.op1("Reshape", [d.top[0], g.ints([nchw[0], c * math.prod(k), *out])])
        # col2im_cpu: each column entry is added back onto its input cell; cells no window reached (the end
        # a floor-rounded output leaves) get 0: output_padding restores the bottom's size.
        extra = [nchw[2 + i] - ((out[i] - 1) * st[i] + dl[i] * (k[i] - 1) + 1 - 2 * pd[i]) for i in range(len(k))]
        dx = g.op1("ConvTranspose", [dy, self._kernels(g, c, k)], kernel_shape=k, strides=st, pads=pd + pd,
                   dilations=dl, group=c, output_padding=extra if any(extra) else None)
        d.bottom[0] = g.op1("Reshape", [dx, g.ints(list(node.bottom_shapes[0]))])
