"""PReLU (Caffe's prelu_layer.cpp): max(x, 0) + slope[c] * min(x, 0), a learned slope per channel or shared.

The slope blob is one value per channel (axis 1), or a 0-axis blob with
channel_shared; without a filler it starts at 0.25. Forward is ONNX PRelu.
Backward (on the forward input: Caffe keeps a copy of an in-place bottom):
the slope diff is the sum of dy * min(x, 0) over every axis but the channel
one, the bottom diff dy where x > 0, else dy * slope.
"""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.neuron import Neuron, _slope_where
from caffecompat.layers.ops import reduce_sum
from caffecompat.layers.registry import Diffs, LayerNode, Shape, register
from caffecompat.net.fillers import fill
from caffecompat.proto import caffe_pb2


@register("PReLU")
class PReLU(Neuron):
    """max(x, 0) + slope[c] * min(x, 0), one slope per channel (axis 1) or one shared slope."""

    def param_shapes(self, node: LayerNode) -> list[Shape]:
        shape = node.bottom_shapes[0]
        # PReLULayer::LayerSetUp: the bottom needs a channel axis.
        if len(shape) < 2:
            raise node.error(f"needs a bottom with at least 2 axes, got shape {list(shape)}")
        # A shared slope is a 0-axis (scalar) blob in Caffe; otherwise one value per channel.
        return [()] if node.param.prelu_param.channel_shared else [(shape[1],)]

    def init_params(self, node: LayerNode, rng: np.random.Generator) -> list[np.ndarray]:
        p = node.param.prelu_param
        filler = p.filler
        if not p.HasField("filler"):
            # PReLULayer::LayerSetUp: without a filler the slopes start at constant 0.25.
            filler = caffe_pb2.FillerParameter(type="constant", value=0.25)
        return [np.asarray(fill(filler, node.param_shapes[0], rng, f"layer '{node.name}' prelu_param.filler"),
                           dtype=np.float32).reshape(node.param_shapes[0])]

    def _slope(self, node: LayerNode, g: GraphBuilder) -> str:
        """The slope blob, shaped to broadcast over the bottom (per channel: (C, 1, ..., 1))."""
        slope = g.param(node, 0)
        if node.param_shapes[0]:
            ndim = len(node.bottom_shapes[0])
            slope = g.op1("Reshape", [slope, g.ints([node.param_shapes[0][0]] + [1] * (ndim - 2))])
        return slope

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        slope = self._slope(node, g)
        g.stash(node, "slope", slope)
        g.op1("PRelu", [node.bottoms[0], slope], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        # PReLULayer keeps a copy of an in-place bottom (bottom_memory_): its backward sees the forward input.
        x, dy = node.bottoms[0], d.top[0]
        if d.need_param[0]:
            # slope diff: the sum of dy * x * (x <= 0) over every axis but the channel one (all when shared).
            contrib = g.op1("Mul", [dy, g.op1("Min", [x, g.scalar(0.0)])])
            ndim = len(node.bottom_shapes[0])
            axes = list(range(ndim)) if not node.param_shapes[0] else [0, *range(2, ndim)]
            d.param[0] = reduce_sum(g, contrib, axes)
        if d.need_bottom[0]:
            d.bottom[0] = _slope_where(g, x, dy, g.stashed(node, "slope"))
