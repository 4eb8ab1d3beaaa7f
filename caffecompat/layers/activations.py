"""Element-wise neuron layers (Caffe's NeuronLayer family): one bottom, one same-shaped top."""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Layer, LayerNode, Shape, register


class Neuron(Layer):
    """A layer whose top has the shape of its bottom."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        return [node.bottom_shapes[0]]


@register("ReLU")
class ReLU(Neuron):
    """max(x, 0) + negative_slope * min(x, 0)."""

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        slope = node.param.relu_param.negative_slope
        if slope:
            g.op1("LeakyRelu", [node.bottoms[0]], node.tops[0], alpha=slope)
        else:
            g.op1("Relu", [node.bottoms[0]], node.tops[0])
