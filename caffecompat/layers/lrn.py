"""LRN (Caffe's lrn_layer.cpp): local response normalization, top = x * scale^-beta.

ACROSS_CHANNELS: scale = k + alpha/size * the sum of squares over the `size`
channels centred on each channel. WITHIN_CHANNEL: scale = 1 + alpha * the
average of squares over a size x size window of the plane (Caffe builds it from
internal Power, Pooling AVE and Eltwise layers). Forward is lowered to
primitive ops (windows as AveragePool) and keeps scale and scale^-beta for the
Backward: CrossChannelBackward's formula across channels, the internal layers'
Backwards in reverse within a channel. Backward in place is refused.
"""

from __future__ import annotations

import numpy as np

from caffecompat.errors import NotSupportedError
from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register
from caffecompat.proto import caffe_pb2


@register("LRN")
class LRN(Layer):
    """Local response normalization: top = x * scale^-beta, scale from a window of squares."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def _check(self, node: LayerNode) -> caffe_pb2.LRNParameter:
        p = node.param.lrn_param
        # LRNLayer::LayerSetUp: the window must be centred, so local_size is odd.
        if p.local_size % 2 != 1:
            raise node.error(f"lrn_param.local_size must be odd, got {p.local_size}")
        # LRNLayer::Reshape: the bottom is num x channels x height x width.
        if len(node.bottom_shapes[0]) != 4:
            raise node.error(f"needs a 4-axis bottom (num, channels, height, width), got shape "
                             f"{list(node.bottom_shapes[0])}")
        return p

    @staticmethod
    def _channel_window_mean(g: GraphBuilder, v: str, shape: Shape, size: int) -> str:
        """Mean of `v` over the `size` channels centred on each channel, zero beyond the channel range.

        An AveragePool over channels (zero padding counted, so always sum / size) on an N x 1 x C x HW view.
        """
        n, c, h, w = shape
        pre = (size - 1) // 2
        view = g.op1("Reshape", [v, g.ints([n, 1, c, h * w])])
        avg = g.op1("AveragePool", [view], kernel_shape=[size, 1], pads=[pre, 0, pre, 0], strides=[1, 1],
                    count_include_pad=1)
        return g.op1("Reshape", [avg, g.ints([n, c, h, w])])

    @staticmethod
    def _plane_window_mean(g: GraphBuilder, v: str, size: int) -> str:
        """Caffe's AVE pooling of `v`, size x size, stride 1, pad (size-1)/2: every window lies inside the
        padded plane, so the divisor is size^2 everywhere."""
        pre = (size - 1) // 2
        return g.op1("AveragePool", [v], kernel_shape=[size, size], pads=[pre, pre, pre, pre], strides=[1, 1],
                     count_include_pad=1)

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        self._check(node)
        return [node.bottom_shapes[0]]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = self._check(node)
        x = node.bottoms[0]
        sq = g.op1("Mul", [x, x])
        if p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
            # LRNLayer ACROSS_CHANNELS: scale = k + alpha/size * sum of squares over the `size` channels
            # centred on c, zero beyond the channel range.
            avg = self._channel_window_mean(g, sq, node.bottom_shapes[0], p.local_size)
            shift = p.k
        else:
            # LRNLayer WITHIN_CHANNEL (its internal Power, Pooling AVE, Power, Eltwise PROD layers):
            # scale = 1 + alpha * the plane-window average of the squares (k is not used in this region).
            avg = self._plane_window_mean(g, sq, p.local_size)
            shift = 1.0
        scale = g.op1("Add", [g.op1("Mul", [avg, g.scalar(p.alpha)]), g.scalar(shift)])
        power = g.op1("Pow", [scale, g.scalar(-p.beta)])
        g.stash(node, "scale", scale)
        g.stash(node, "power", power)
        g.op1("Mul", [x, power], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        p = self._check(node)
        if node.bottom_blobs[0] == node.top_blobs[0]:
            # In place, Caffe's LRN Backward reads the bottom data and top diff its own forward and
            # backward have overwritten: a result that is not reproduced.
            raise NotSupportedError(f"backward of layer {node.label} of type LRN computed in place "
                                    "(give it a top of its own)")
        x, y, dy = node.bottoms[0], node.tops[0], d.top[0]
        scale, power = g.stashed(node, "scale"), g.stashed(node, "power")
        if p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
            # LRNLayer::CrossChannelBackward: dx = dy * scale^-beta
            #   - 2 alpha beta / size * x * (sum over the channel window of dy * y / scale).
            ratio = g.op1("Div", [g.op1("Mul", [dy, y]), scale])
            window = g.op1("Mul", [self._channel_window_mean(g, ratio, node.bottom_shapes[0], p.local_size),
                                   g.scalar(p.local_size)])
            coeff = g.scalar(np.float32(2.0 * p.alpha * p.beta / p.local_size))
            correction = g.op1("Mul", [g.op1("Mul", [x, window]), coeff])
            d.bottom[0] = g.op1("Sub", [g.op1("Mul", [dy, power]), correction])
            return
        # WITHIN_CHANNEL: the Backwards of Caffe's internal layers in reverse. Eltwise PROD: the diffs
        # of x and of the power output are dy times the other factor.
        dx_product = g.op1("Mul", [power, dy])
        dpower = g.op1("Mul", [x, dy])
        # Power (power -beta, scale alpha, shift 1): dy * (-beta * alpha) * power / (alpha * avg + 1).
        diff_scale = g.scalar(np.float32(np.float32(-p.beta) * np.float32(p.alpha)))
        dpool = g.op1("Mul", [dpower, g.op1("Mul", [g.op1("Div", [power, scale]), diff_scale])])
        # Pooling AVE backward spreads each diff / size^2 over its window: with stride 1 and the centred
        # window, that is the same window average of the diffs.
        dsquare = self._plane_window_mean(g, dpool, p.local_size)
        # Power (power 2): dy * 2x; then the internal Split adds the two diffs of x.
        dx_square = g.op1("Mul", [dsquare, g.op1("Mul", [x, g.scalar(2.0)])])
        d.bottom[0] = g.op1("Add", [dx_product, dx_square])
