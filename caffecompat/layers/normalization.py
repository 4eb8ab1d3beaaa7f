"""Normalization layers: LRN (both regions), BatchNorm (stored or batch statistics) and MVN.

Everything is lowered to primitive ONNX ops that have gradients in ONNX
Runtime's training build (its LRN op has none). BatchNorm's running
statistics are never updated in the graph: in training the graph exposes the
batch mean and biased variance as side outputs and the solver applies
`batchnorm_update`, Caffe's moving-average rule, to the three blobs.
"""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Layer, LayerNode, Shape, register
from caffecompat.proto import caffe_pb2


def reduce_sum(g: GraphBuilder, x: str, axes: list[int], output: str | None = None) -> str:
    """ReduceSum over `axes`, keeping them (axes are an input from opset 13, an attribute before)."""
    if g.opset >= 13:
        return g.op1("ReduceSum", [x, g.ints(axes)], output, keepdims=1)
    return g.op1("ReduceSum", [x], output, axes=axes, keepdims=1)


def reduce_mean(g: GraphBuilder, x: str, shape: Shape, axes: list[int]) -> str:
    """Mean over `axes` (kept), as a sum times 1/count: ReduceSum and Mul both train in ORT."""
    count = int(np.prod([shape[a] for a in axes], dtype=np.int64))
    return g.op1("Mul", [reduce_sum(g, x, axes), g.scalar(1.0 / count)])


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

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        self._check(node)
        return [node.bottom_shapes[0]]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = self._check(node)
        x = node.bottoms[0]
        n, c, h, w = node.bottom_shapes[0]
        size, pre = p.local_size, (p.local_size - 1) // 2
        sq = g.op1("Mul", [x, x])
        if p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
            # LRNLayer ACROSS_CHANNELS: scale = k + alpha/size * sum of squares over the `size` channels
            # centred on c, zero beyond the channel range. The window mean comes from an AveragePool
            # over channels (zero padding counted, so it is always sum / size) on an N x 1 x C x HW view.
            view = g.op1("Reshape", [sq, g.ints([n, 1, c, h * w])])
            avg = g.op1("AveragePool", [view], kernel_shape=[size, 1], pads=[pre, 0, pre, 0],
                        strides=[1, 1], count_include_pad=1)
            avg = g.op1("Reshape", [avg, g.ints([n, c, h, w])])
            shift = p.k
        else:
            # LRNLayer WITHIN_CHANNEL: AVE pooling of the squares, size x size, stride 1, pad (size-1)/2;
            # every such window lies inside the padded plane, so Caffe divides by size^2 everywhere.
            # Then scale = 1 + alpha * that average (k is not used in this region).
            avg = g.op1("AveragePool", [sq], kernel_shape=[size, size], pads=[pre, pre, pre, pre],
                        strides=[1, 1], count_include_pad=1)
            shift = 1.0
        scale = g.op1("Add", [g.op1("Mul", [avg, g.scalar(p.alpha)]), g.scalar(shift)])
        g.op1("Mul", [x, g.op1("Pow", [scale, g.scalar(-p.beta)])], node.tops[0])


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
        g.op1("Div", [centred, std], node.tops[0])


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


@register("MVN")
class MVN(Layer):
    """Mean-variance normalization per (num, channel) or per num: (x - mean) / (std + eps)."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        shape = node.bottom_shapes[0]
        # MVNLayer::Reshape works on num/channels/height/width: at most 4 axes.
        if not 1 <= len(shape) <= 4:
            raise node.error(f"needs a bottom with 1 to 4 axes, got shape {list(shape)}")
        return [shape]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.mvn_param
        x = node.bottoms[0]
        shape = node.bottom_shapes[0]
        # Pad the shape to 4 axes as Caffe's legacy num/channels/height/width accessors do.
        shape4 = tuple(shape) + (1,) * (4 - len(shape))
        # MVNLayer: statistics over channels x height x width per num (across_channels),
        # else over height x width per (num, channel).
        axes = [1, 2, 3] if p.across_channels else [2, 3]
        view = x if len(shape) == 4 else g.op1("Reshape", [x, g.ints(shape4)])
        direct = node.tops[0] if len(shape) == 4 else None
        mean = reduce_mean(g, view, shape4, axes)
        centred = g.op1("Sub", [view, mean], None if p.normalize_variance else direct)
        out = centred
        if p.normalize_variance:
            # MVNLayer: top = (x - mean) / (sqrt(E[(x - mean)^2]) + eps): eps is added after the root.
            var = reduce_mean(g, g.op1("Mul", [centred, centred]), shape4, axes)
            # Sqrt of at least FLT_MIN: a constant plane (variance 0) keeps a finite gradient, as in
            # Caffe's backward, and the forward value moves by at most 1e-19.
            floor = g.op1("Max", [var, g.scalar(float(np.finfo(np.float32).tiny))])
            denom = g.op1("Add", [g.op1("Sqrt", [floor]), g.scalar(p.eps)])
            out = g.op1("Div", [centred, denom], direct)
        if direct is None:
            g.op1("Reshape", [out, g.ints(shape)], node.tops[0])
