"""ConvolutionDepthwise (the depthwise-convolution forks' conv_dw_layer.cpp): one 2-D filter per input channel.

The fork reads kernel, stride, pad, dilation and bias_term from
convolution_param and ignores num_output and group: the top has the bottom's
channels and the weights are C x 1 x kernel_h x kernel_w, i.e. a Convolution
with num_output = group = channels. Forward and Backward are Convolution's.
"""

from __future__ import annotations

from caffecompat.layers.conv import Convolution
from caffecompat.layers.registry import LayerNode, register


@register("ConvolutionDepthwise")
class ConvolutionDepthwise(Convolution):
    """A Convolution with num_output = group = the bottom's channels, on 2-D (N x C x H x W) bottoms."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def _geometry(self, node: LayerNode) -> tuple[list[int], list[int], list[int], list[int], int]:
        if len(node.bottom_shapes[0]) != 4:
            raise node.error(f"convolves 4-D bottoms (N x C x H x W), got shape {list(node.bottom_shapes[0])}")
        return super()._geometry(node)

    def _num_output(self, node: LayerNode) -> int:
        # ConvolutionDepthwiseLayer::LayerSetUp: the weights are channels x 1 x kernel, whatever num_output says.
        return node.bottom_shapes[0][1]

    def _group(self, node: LayerNode) -> int:
        return node.bottom_shapes[0][1]
