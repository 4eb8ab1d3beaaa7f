"""BatchNorm (Caffe's batch_norm_layer.cpp): top = (x - mean) / sqrt(var + eps) per channel (axis 1).

Its three blobs are the mean, the variance and a scale factor, all statistics
(no diffs). With stored statistics (use_global_stats, the TEST default) mean and
variance are the blobs divided by the factor. With batch statistics (the TRAIN
default) they are the batch mean and BIASED variance; the running statistics are
never updated in the graph: it exposes the batch mean and variance as side
outputs and the solver applies `batchnorm_update`, Caffe's moving-average rule,
to the three blobs. Backward: dy / sqrt(var + eps) with stored statistics, else
(dy - mean(dy) - mean(dy * y) * y) / sqrt(var + eps).
"""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.ops import reduce_mean, reduce_sum
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register
from caffecompat.proto import caffe_pb2


@register("BatchNorm")
class BatchNorm(Layer):
    """top = (x - mean) / sqrt(var + eps), per channel (axis 1), from stored or batch statistics."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1
    statistics_params = True

    @staticmethod
    def _channels(node: LayerNode) -> int:
        shape = node.bottom_shapes[0]
        # BatchNormLayer::LayerSetUp: a 1-axis bottom is one channel, otherwise channels are axis 1.
        return 1 if len(shape) <= 1 else shape[1]

    @staticmethod
    def use_global_stats(node: LayerNode) -> bool:
        """BatchNormLayer: stored statistics at TEST and batch statistics at TRAIN, unless the prototxt says."""
        p = node.param.batch_norm_param
        if p.HasField("use_global_stats"):
            return p.use_global_stats
        return node.phase == caffe_pb2.TEST

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        if not node.bottom_shapes[0]:
            raise node.error("needs a bottom with at least one axis")
        return [node.bottom_shapes[0]]

    def param_shapes(self, node: LayerNode) -> list[Shape]:
        c = self._channels(node)
        return [(c,), (c,), (1,)]

    def init_params(self, node: LayerNode, rng: np.random.Generator) -> list[np.ndarray]:
        # BatchNormLayer::LayerSetUp: mean, variance and the scale factor all start at 0.
        return [np.zeros(s, dtype=np.float32) for s in node.param_shapes]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.batch_norm_param
        x = node.bottoms[0]
        shape = node.bottom_shapes[0]
        c = self._channels(node)
        # Per-channel vectors broadcast as C x 1 x ... x 1 over the axes after the channel axis.
        bshape = [c] + [1] * (len(shape) - 2) if len(shape) >= 2 else [c]
        if self.use_global_stats(node):
            # BatchNormLayer use_global_stats: mean and variance are the blobs times 1/factor
            # (0 when the factor blob is 0).
            factor = g.param(node, 2)
            zero = g.op1("Equal", [factor, g.scalar(0.0)])
            safe = g.op1("Where", [zero, g.scalar(1.0), factor])
            inv = g.op1("Where", [zero, g.scalar(0.0), g.op1("Div", [g.scalar(1.0), safe])])
            mean = g.op1("Reshape", [g.op1("Mul", [g.param(node, 0), inv]), g.ints(bshape)])
            var = g.op1("Reshape", [g.op1("Mul", [g.param(node, 1), inv]), g.ints(bshape)])
            centred = g.op1("Sub", [x, mean])
        else:
            # BatchNormLayer training: mean and BIASED variance over the batch and spatial axes;
            # the blobs are not read (the solver updates them from the side outputs).
            axes = [0] + list(range(2, len(shape)))
            mean = reduce_mean(g, x, shape, axes)
            centred = g.op1("Sub", [x, mean])
            var = reduce_mean(g, g.op1("Mul", [centred, centred]), shape, axes)
            g.side_output(g.op1("Reshape", [mean, g.ints([c])]), node, "mean")
            g.side_output(g.op1("Reshape", [var, g.ints([c])]), node, "variance")
        std = g.op1("Sqrt", [g.op1("Add", [var, g.scalar(p.eps)])])
        g.stash(node, "std", std)
        g.op1("Div", [centred, std], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        # The three blobs are statistics: Caffe computes no diff for them.
        if not d.need_bottom[0]:
            return
        dy, std = d.top[0], g.stashed(node, "std")
        if self.use_global_stats(node):
            # BatchNormLayer::Backward_cpu, stored statistics: dx = dy / sqrt(var + eps).
            d.bottom[0] = g.op1("Div", [dy, std])
            return
        # Batch statistics: dx = (dy - mean(dy) - mean(dy * y) * y) / sqrt(var + eps), means per channel
        # over the M = count / channels values, with y the normalized top of the forward.
        shape = node.bottom_shapes[0]
        axes = [0] + list(range(2, len(shape)))
        m = int(np.prod(shape, dtype=np.int64)) // self._channels(node)
        y = node.tops[0]
        dot = reduce_sum(g, g.op1("Mul", [y, dy]), axes, keepdims=1)
        both = g.op1("Add", [g.op1("Mul", [dot, y]), reduce_sum(g, dy, axes, keepdims=1)])
        centred = g.op1("Add", [dy, g.op1("Mul", [both, g.scalar(-1.0 / m)])])
        d.bottom[0] = g.op1("Div", [centred, std])


def batchnorm_update(blobs: list[np.ndarray], batch_mean: np.ndarray, batch_var: np.ndarray, count_m: int,
                     moving_average_fraction: float) -> None:
    """Caffe's BatchNorm moving-average update of its three blobs, in place.

    blobs: [mean, variance, factor] (float32, shapes (C,), (C,), (1,)).
    batch_mean, batch_var: the batch mean and BIASED batch variance per channel.
    count_m: elements per channel in the batch (bottom count / channels).
    """
    maf = np.float32(moving_average_fraction)
    # BatchNormLayer::Forward_cpu (training): factor = factor * maf + 1.
    blobs[2][...] = blobs[2] * maf + np.float32(1)
    # mean blob = batch mean + maf * mean blob.
    blobs[0][...] = np.asarray(batch_mean, dtype=np.float32) + maf * blobs[0]
    # variance blob = m/(m-1) * biased batch variance + maf * variance blob (no correction for m = 1).
    correction = np.float32(count_m) / np.float32(count_m - 1) if count_m > 1 else np.float32(1)
    blobs[1][...] = correction * np.asarray(batch_var, dtype=np.float32) + maf * blobs[1]
