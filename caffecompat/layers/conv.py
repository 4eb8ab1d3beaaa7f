"""Convolution and Deconvolution (BaseConvolutionLayer: group, dilation, N-D kernels, bias_term), Forward and Backward.

Backward choices, measured with ONNX Runtime 1.32 on 2 CPU cores (best of many runs) on CaffeNet's
layers at batch 32 (conv1 96x3x11x11 stride 4 on 227x227, conv2 256x48x5x5 group 2 pad 2 on 27x27,
conv3 384x256x3x3 pad 1 on 13x13) and ResNet-like ones:

- weight diff: im2col (one strided Slice of the padded, channel-major input per kernel offset, one
  Concat) and one MatMul batched over the groups (conv2 110 ms, conv3 57 ms); except for a strided
  layer with at most 4 input channels per group (an image input layer: conv1, a 7x7 stride 2 stem),
  where a Conv with the batch as channels and the stride as dilation is 2x faster (conv1 59 vs
  120 ms). With more channels that Conv is 1.3-3x slower than im2col, one MatMul per kernel offset
  (no Concat) 1.1-1.4x slower.
- bottom diff: ConvTranspose, 5-15% faster than a Conv on flipped, in/out-swapped weights for 3x3 and
  5x5 kernels (conv2 84 vs 89 ms, conv3 55 vs 64 ms); except a pointwise kernel (1x1, stride 1, no
  pad), where the Conv on the transposed weights is a plain GEMM, 10-40% faster.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from caffecompat.errors import NotSupportedError
from caffecompat.layers import geometry
from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register
from caffecompat.net.fillers import fill


class _ConvBase(Layer):
    min_bottoms = 1
    equal_bottoms_tops = True
    transposed = False

    def _geometry(self, node: LayerNode) -> tuple[list[int], list[int], list[int], list[int], int]:
        p = node.param.convolution_param
        shape = node.bottom_shapes[0]
        axis = p.axis % len(shape) if shape else 1
        if axis != 1:
            raise NotSupportedError(f"layer {node.name}: convolution_param.axis {p.axis} (only the channel "
                                    "axis 1 is supported)")
        n = len(shape) - 2
        if n < 1:
            raise node.error(f"needs an input with spatial axes, got shape {list(shape)}")
        for s in node.bottom_shapes[1:]:
            if s != shape:
                raise node.error(f"all bottoms must have the same shape, got {list(shape)} and {list(s)}")
        k = geometry.kernel(node, p, n)
        st = geometry.stride(node, p, n)
        pd = geometry.pad(node, p, n)
        dl = geometry.dilation(node, p, n)
        if any(v <= 0 for v in k) or any(v <= 0 for v in st) or any(v <= 0 for v in dl):
            raise node.error("kernel, stride and dilation must be positive")
        return k, st, pd, dl, n

    def _group(self, node: LayerNode) -> int:
        p = node.param.convolution_param
        channels = node.bottom_shapes[0][1]
        if p.num_output <= 0:
            raise node.error("convolution_param.num_output must be given and positive")
        # BaseConvolutionLayer: channels and num_output must both divide by group (a positive one).
        if p.group <= 0:
            raise node.error(f"convolution_param.group is {p.group}; it must be at least 1 (1, the default, "
                             "for no grouping)")
        if channels % p.group or p.num_output % p.group:
            raise node.error(f"group {p.group} must divide both the input channels ({channels}) and "
                             f"num_output ({p.num_output})")
        return p.group

    def _num_output(self, node: LayerNode) -> int:
        """The number of top channels (convolution_param.num_output)."""
        return node.param.convolution_param.num_output

    def param_shapes(self, node: LayerNode) -> list[Shape]:
        p = node.param.convolution_param
        k, _, _, _, _ = self._geometry(node)
        group = self._group(node)
        channels = node.bottom_shapes[0][1]
        n_out = self._num_output(node)
        # Weights are out x in/group x kernel; a Deconvolution swaps the roles of in and out.
        if self.transposed:
            w = (channels, n_out // group, *k)
        else:
            w = (n_out, channels // group, *k)
        return [w, (n_out,)] if p.bias_term else [w]

    def init_params(self, node: LayerNode, rng: np.random.Generator) -> list[np.ndarray]:
        p = node.param.convolution_param
        out = [fill(p.weight_filler, node.param_shapes[0], rng, f"layer '{node.name}' weight_filler")]
        if p.bias_term:
            out.append(fill(p.bias_filler, node.param_shapes[1], rng, f"layer '{node.name}' bias_filler"))
        return out

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.convolution_param
        k, st, pd, dl, _ = self._geometry(node)
        inputs = [g.param(node, 0)] + ([g.param(node, 1)] if p.bias_term else [])
        op = "ConvTranspose" if self.transposed else "Conv"
        for bottom, top in zip(node.bottoms, node.tops):
            g.op(op, [bottom, *inputs], [top], kernel_shape=k, strides=st, pads=pd + pd, dilations=dl,
                 group=self._group(node))

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        # Convolution/DeconvolutionLayer::Backward_cpu: every bottom/top pair adds its weight and bias diff.
        p = node.param.convolution_param
        geo = self._geometry(node)[:4]
        group = self._group(node)
        weight = g.param(node, 0)
        w_parts, b_parts = [], []
        for j, (bottom, shape_x) in enumerate(zip(node.bottoms, node.bottom_shapes)):
            dy, shape_y = d.top[j], node.top_shapes[j]
            if p.bias_term and d.need_param[1]:
                b_parts.append(g.op1("ReduceSum", [dy, g.ints([0, *range(2, len(shape_y))])], keepdims=0))
            if self.transposed:
                # A Deconvolution is the backward of a Convolution from its top to its bottom.
                if d.need_param[0]:
                    w_parts.append(_weight_grad(g, dy, shape_y, bottom, shape_x, *geo, group))
                if d.need_bottom[j]:
                    d.bottom[j] = _conv(g, dy, weight, *geo, group)
            else:
                if d.need_param[0]:
                    w_parts.append(_weight_grad(g, bottom, shape_x, dy, shape_y, *geo, group))
                if d.need_bottom[j]:
                    d.bottom[j] = _input_grad(g, dy, shape_y, weight, shape_x, *geo, group)
        d.param[0] = _sum(g, w_parts)
        if p.bias_term:
            d.param[1] = _sum(g, b_parts)


def _sum(g: GraphBuilder, parts: list[str]) -> str | None:
    """The sum of `parts` (None when empty)."""
    acc = parts[0] if parts else None
    for part in parts[1:]:
        acc = g.op1("Add", [acc, part])
    return acc


def _conv(g: GraphBuilder, x: str, w: str, k: list[int], st: list[int], pd: list[int], dl: list[int],
          group: int) -> str:
    """A Caffe convolution of x by w (no bias)."""
    return g.op1("Conv", [x, w], kernel_shape=k, strides=st, pads=pd + pd, dilations=dl, group=group)


def _input_grad(g: GraphBuilder, dy: str, shape_y: Shape, w: str, shape_x: Shape, k: list[int], st: list[int],
                pd: list[int], dl: list[int], group: int) -> str:
    """Bottom diff of a convolution of a `shape_x` bottom by w (O x C/group x kernel), from its top diff dy."""
    n = len(k)
    if all(v == 1 for v in k + st) and not any(pd):
        # Pointwise: a Conv by the per-group transposed weights (C x O/group x 1...).
        out_g, in_g = shape_y[1] // group, shape_x[1] // group
        wt = g.op1("Reshape", [w, g.ints([group, out_g, in_g])])
        wt = g.op1("Transpose", [wt], perm=[0, 2, 1])
        wt = g.op1("Reshape", [wt, g.ints([in_g * group, out_g] + [1] * n)])
        return g.op1("Conv", [dy, wt], kernel_shape=k, group=group)
    # Rows or columns the forward's floor rounding left out come back as output padding (zero diff).
    extra = [shape_x[2 + i] - (st[i] * (shape_y[2 + i] - 1) + dl[i] * (k[i] - 1) + 1 - 2 * pd[i]) for i in range(n)]
    return g.op1("ConvTranspose", [dy, w], kernel_shape=k, strides=st, pads=pd + pd, dilations=dl, group=group,
                 output_padding=extra if any(extra) else None)


def _weight_grad(g: GraphBuilder, x: str, shape_x: Shape, dy: str, shape_y: Shape, k: list[int], st: list[int],
                 pd: list[int], dl: list[int], group: int) -> str:
    """Weight diff (O x C/group x kernel) of a convolution of x (N x C x ...) whose top diff is dy (N x O x ...)."""
    if any(s > 1 for s in st) and shape_x[1] // group <= 4:
        return _weight_grad_conv(g, x, shape_x, dy, shape_y, k, st, pd, dl, group)
    return _weight_grad_im2col(g, x, shape_x, dy, shape_y, k, st, pd, dl, group)


# The im2col buffer of one weight-diff chunk stays under this size: the batch is cut into chunks whose
# MatMuls add up, so a big layer (CaffeNet's conv2: 214 MB of columns at batch 32) does not hold all
# its columns, and their Slice parts, at once.
IM2COL_CHUNK_BYTES = 32 << 20


def _weight_grad_im2col(g: GraphBuilder, x: str, shape_x: Shape, dy: str, shape_y: Shape, k: list[int],
                        st: list[int], pd: list[int], dl: list[int], group: int) -> str:
    """dW[o, c, off] = sum over n, p of dy[n, o, p] x[n, c, p * stride + off * dilation - pad], as MatMuls."""
    n_img, ch, n = shape_x[0], shape_x[1], len(k)
    spatial = list(range(2, 2 + n))
    xt = g.op1("Transpose", [x], perm=[1, 0, *spatial])  # C x N x spatial: the columns come out group-major
    if any(pd):
        xt = g.op1("Pad", [xt, g.ints([0, 0, *pd, 0, 0, *pd])])
    per_image = ch * math.prod(k) * math.prod(shape_y[2:]) * 4
    chunk = max(1, min(n_img, IM2COL_CHUNK_BYTES // max(per_image, 1)))
    parts = []
    for a in range(0, n_img, chunk):
        b = min(a + chunk, n_img)
        xc, dyc = xt, dy
        if chunk < n_img:
            xc = g.op1("Slice", [xt, g.ints([a]), g.ints([b]), g.ints([1])])
            dyc = g.op1("Slice", [dy, g.ints([a]), g.ints([b]), g.ints([0])])
        parts.append(_im2col_matmul(g, xc, b - a, ch, dyc, shape_y, k, st, pd, dl, group, shape_x))
    dw = _sum(g, parts)
    out_ch = shape_y[1]
    dw = g.op1("Transpose", [dw], perm=[0, 2, 1])
    return g.op1("Reshape", [dw, g.ints([out_ch, ch // group, *k])])


def _im2col_matmul(g: GraphBuilder, xt: str, n_img: int, ch: int, dy: str, shape_y: Shape, k: list[int],
                   st: list[int], pd: list[int], dl: list[int], group: int, shape_x: Shape) -> str:
    """group x (C/group * kernel) x O/group: one chunk's columns (xt is C x n_img x padded spatial) times dy."""
    n = len(k)
    out_ch, out = shape_y[1], list(shape_y[2:])
    spatial = list(range(2, 2 + n))
    cols_shape = g.ints([ch, 1, n_img * math.prod(out)])
    padded = [shape_x[2 + i] + 2 * pd[i] for i in range(n)]
    cols = []
    for off in itertools.product(*(range(v) for v in k)):
        start = [off[i] * dl[i] for i in range(n)]
        end = [start[i] + (out[i] - 1) * st[i] + 1 for i in range(n)]
        part = xt
        if any(start) or end != padded or any(s > 1 for s in st):
            part = g.op1("Slice", [xt, g.ints(start), g.ints(end), g.ints(spatial), g.ints(st)])
        cols.append(g.op1("Reshape", [part, cols_shape]))
    col = g.op1("Concat", cols, axis=1) if len(cols) > 1 else cols[0]
    col = g.op1("Reshape", [col, g.ints([group, ch // group * math.prod(k), -1])])
    # dy as (group x N*out x O/group).
    dyt = g.op1("Transpose", [dy], perm=[0, *spatial, 1])
    if group == 1:
        dyt = g.op1("Reshape", [dyt, g.ints([1, -1, out_ch])])
    else:
        dyt = g.op1("Reshape", [dyt, g.ints([-1, group, out_ch // group])])
        dyt = g.op1("Transpose", [dyt], perm=[1, 0, 2])
    return g.op1("MatMul", [col, dyt])


def _weight_grad_conv(g: GraphBuilder, x: str, shape_x: Shape, dy: str, shape_y: Shape, k: list[int],
                      st: list[int], pd: list[int], dl: list[int], group: int) -> str:
    """The weight diff as a Conv of x's channels (batch axis) by dy (kernel over the batch as channels).

    dW[o, c, off] = sum over n, p of x[n, c, off * dilation + p * stride - pad] dy[n, o, p]: a convolution
    over `off` with stride `dilation`, kernel dilation `stride`; groups pair x's and dy's channel groups.
    """
    n_img, ch, n = shape_x[0], shape_x[1], len(k)
    out_ch, out = shape_y[1], list(shape_y[2:])
    spatial = list(range(3, 3 + n))
    xs = g.op1("Reshape", [x, g.ints([n_img, group, ch // group, *shape_x[2:]])])
    xs = g.op1("Transpose", [xs], perm=[2, 1, 0, *spatial])
    xs = g.op1("Reshape", [xs, g.ints([ch // group, group * n_img, *shape_x[2:]])])
    ws = g.op1("Reshape", [dy, g.ints([n_img, group, out_ch // group, *out])])
    ws = g.op1("Transpose", [ws], perm=[1, 2, 0, *spatial])
    ws = g.op1("Reshape", [ws, g.ints([out_ch, n_img, *out])])
    r = g.op1("Conv", [xs, ws], kernel_shape=out, strides=dl, pads=pd + pd, dilations=st, group=group)
    # The Conv's spatial size is at least the kernel's; the excess are offsets past the kernel.
    got = [(shape_x[2 + i] + 2 * pd[i] - st[i] * (out[i] - 1) - 1) // dl[i] + 1 for i in range(n)]
    if got != k:
        r = g.op1("Slice", [r, g.ints([0] * n), g.ints(k), g.ints(list(range(2, 2 + n)))])
    return g.op1("Transpose", [r], perm=[1, 0, *range(2, 2 + n)])


@register("Convolution")
class Convolution(_ConvBase):
    """out = (in + 2 pad - (dilation (k - 1) + 1)) / stride + 1, rounded down."""

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        k, st, pd, dl, _ = self._geometry(node)
        n_out = self._num_output(node)
        s = node.bottom_shapes[0]
        spatial = [(s[2 + i] + 2 * pd[i] - (dl[i] * (k[i] - 1) + 1)) // st[i] + 1 for i in range(len(k))]
        return [(s[0], n_out, *spatial)] * len(node.tops)


@register("Deconvolution")
class Deconvolution(_ConvBase):
    """out = stride (in - 1) + dilation (k - 1) + 1 - 2 pad."""

    transposed = True

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        k, st, pd, dl, _ = self._geometry(node)
        n_out = node.param.convolution_param.num_output
        s = node.bottom_shapes[0]
        spatial = [st[i] * (s[2 + i] - 1) + dl[i] * (k[i] - 1) + 1 - 2 * pd[i] for i in range(len(k))]
        return [(s[0], n_out, *spatial)] * len(node.tops)
