"""DepthwiseConvolution (the depthwise-convolution fork of MobileNet's ports): BVLC's Convolution under another name.

The fork's layer is a ConvolutionLayer with a faster GPU kernel for
group = num_output = channels; its shapes, parameters and CPU Forward and
Backward are Convolution's, for any group. So is ours.
"""

from __future__ import annotations

from caffecompat.layers.conv import Convolution
from caffecompat.layers.registry import register


@register("DepthwiseConvolution")
class DepthwiseConvolution(Convolution):
    """Convolution, group as given (the depthwise case is group = num_output = channels)."""
