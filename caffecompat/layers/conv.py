"""Convolution and Deconvolution (BaseConvolutionLayer: group, dilation, N-D kernels, bias_term)."""

from __future__ import annotations

import numpy as np

from caffecompat.errors import NotSupportedError
from caffecompat.layers import geometry
from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Layer, LayerNode, Shape, register
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
        # BaseConvolutionLayer: channels and num_output must both divide by group.
        if channels % p.group or p.num_output % p.group:
            raise node.error(f"group {p.group} must divide both the input channels ({channels}) and "
                             f"num_output ({p.num_output})")
        return p.group

    def param_shapes(self, node: LayerNode) -> list[Shape]:
        p = node.param.convolution_param
        k, _, _, _, _ = self._geometry(node)
        group = self._group(node)
        channels = node.bottom_shapes[0][1]
        # Weights are out x in/group x kernel; a Deconvolution swaps the roles of in and out.
        if self.transposed:
            w = (channels, p.num_output // group, *k)
        else:
            w = (p.num_output, channels // group, *k)
        return [w, (p.num_output,)] if p.bias_term else [w]

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


@register("Convolution")
class Convolution(_ConvBase):
    """out = (in + 2 pad - (dilation (k - 1) + 1)) / stride + 1, rounded down."""

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        k, st, pd, dl, _ = self._geometry(node)
        n_out = node.param.convolution_param.num_output
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
