"""BN (the PSPNet/DeepLab fork's bn_layer.cpp): per-channel batch normalization with its own slope and bias.

Four blobs, each 1 x C x 1 x 1: slope, bias, the moving-average mean and the
moving-average variance. top = slope * (x - mean) / sqrt(var + eps) + bias, per
channel over N, H and W. At TEST, or with `frozen`, mean and variance are the
stored blobs; at TRAIN they are the batch mean and the BIASED batch variance,
and the runtime folds them into the stored blobs after each forward
(`bn_update`, the fork's moving average with bn_param.momentum). The fork
forces lr_mult and decay_mult 0 on the statistics, and on slope and bias too
when `frozen`. Backward: dy * slope / sqrt(var + eps) when frozen, otherwise the
batch-statistics formula, as the fork writes it whatever the phase.
"""

from __future__ import annotations

import numpy as np

from caffecompat.errors import NotSupportedError
from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.ops import reduce_mean, reduce_sum
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register
from caffecompat.net.fillers import fill
from caffecompat.proto import caffe_pb2


@register("BN")
class BN(Layer):
    """top = slope * (x - mean) / sqrt(var + eps) + bias, per channel, from stored or batch statistics."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    @staticmethod
    def batch_statistics(node: LayerNode) -> bool:
        """BNLayer::Forward_cpu: the batch's statistics at TRAIN unless frozen; the stored ones otherwise."""
        return node.phase == caffe_pb2.TRAIN and not node.param.bn_param.frozen

    def forced_zero_lr(self, node: LayerNode) -> set[int]:
        # BNLayer::LayerSetUp: lr_mult and decay_mult 0 on the statistics (blobs 2, 3), and on slope and
        # bias (blobs 0, 1) when frozen.
        return {0, 1, 2, 3} if node.param.bn_param.frozen else {2, 3}

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        p = node.param.bn_param
        segnet = [f for f in ("bn_mode", "scale_filler", "shift_filler") if p.HasField(f)]
        if segnet:
            # SegNet's BN shares the type name but has two blobs (scale, shift) and bn_mode: another layer.
            raise NotSupportedError(f"layer {node.label} of type BN with bn_param.{segnet[0]}: that is SegNet's BN "
                                    "(two blobs, bn_mode); caffecompat runs PSPNet's four-blob BN (slope_filler, "
                                    "bias_filler, momentum, frozen); write SegNet's as BatchNorm + Scale")
        shape = node.bottom_shapes[0]
        if len(shape) != 4:
            raise node.error(f"takes a 4-D bottom (N x C x H x W), got {list(shape)}")
        return [shape]

    def param_shapes(self, node: LayerNode) -> list[Shape]:
        c = node.bottom_shapes[0][1]
        return [(1, c, 1, 1)] * 4

    def init_params(self, node: LayerNode, rng: np.random.Generator) -> list[np.ndarray]:
        p = node.param.bn_param
        shape = node.param_shapes[0]
        # BNLayer::LayerSetUp: slope and bias from their fillers, mean 0, variance 1 if frozen else 0.
        return [fill(p.slope_filler, shape, rng, f"layer '{node.name}' bn_param.slope_filler"),
                fill(p.bias_filler, shape, rng, f"layer '{node.name}' bn_param.bias_filler"),
                np.zeros(shape, np.float32),
                np.full(shape, 1.0 if p.frozen else 0.0, np.float32)]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.bn_param
        x, shape = node.bottoms[0], node.bottom_shapes[0]
        axes = [0, 2, 3]
        if self.batch_statistics(node):
            mean = reduce_mean(g, x, shape, axes)
            centred = g.op1("Sub", [x, mean])
            var = reduce_mean(g, g.op1("Mul", [centred, centred]), shape, axes)
            g.side_output(mean, node, "mean")
            g.side_output(var, node, "variance")
        else:
            centred = g.op1("Sub", [x, g.param(node, 2)])
            var = g.param(node, 3)
        inv_std = g.op1("Reciprocal", [g.op1("Sqrt", [g.op1("Add", [var, g.scalar(p.eps)])])])
        x_norm = g.op1("Mul", [centred, inv_std])
        g.stash(node, "inv_std", inv_std)
        g.stash(node, "x_norm", x_norm)
        g.op1("Add", [g.op1("Mul", [x_norm, g.param(node, 0)]), g.param(node, 1)], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        dy, inv_std, x_norm = d.top[0], g.stashed(node, "inv_std"), g.stashed(node, "x_norm")
        slope = g.param(node, 0)
        if node.param.bn_param.frozen:
            # BNLayer::Backward_cpu frozen: bottom diff = top diff * slope / sqrt(stored var + eps); no param diffs.
            if d.need_bottom[0]:
                d.bottom[0] = g.op1("Mul", [dy, g.op1("Mul", [slope, inv_std])])
            return
        axes = [0, 2, 3]
        if d.need_param[0]:
            d.param[0] = reduce_sum(g, g.op1("Mul", [x_norm, dy]), axes, keepdims=1)
        if d.need_param[1]:
            d.param[1] = reduce_sum(g, dy, axes, keepdims=1)
        if d.need_bottom[0]:
            # BNLayer::Backward_cpu: dx = (g - mean(g) - x_norm * mean(g * x_norm)) / std with g = dy * slope,
            # means over N, H and W.
            shape = node.bottom_shapes[0]
            gx = g.op1("Mul", [dy, slope])
            dot = reduce_mean(g, g.op1("Mul", [gx, x_norm]), shape, axes)
            centred = g.op1("Sub", [g.op1("Sub", [gx, reduce_mean(g, gx, shape, axes)]),
                                    g.op1("Mul", [x_norm, dot])])
            d.bottom[0] = g.op1("Mul", [centred, inv_std])


def bn_update(blobs: list[np.ndarray], batch_mean: np.ndarray, batch_var: np.ndarray, momentum: float) -> None:
    """The fork's moving averages of BN's statistics blobs (blobs[2], blobs[3]), in place.

    batch_mean, batch_var: the batch mean and BIASED batch variance (1 x C x 1 x 1).
    """
    m = np.float32(momentum)
    # BNLayer::Forward_cpu (TRAIN, not frozen): stored = (1 - momentum) * batch + momentum * stored.
    for blob, batch in ((blobs[2], batch_mean), (blobs[3], batch_var)):
        blob[...] = (np.float32(1) - m) * np.asarray(batch, np.float32).reshape(blob.shape) + m * blob
