"""Threshold (Caffe's threshold_layer.cpp): 1 where x > threshold, else 0.

Forward is a Greater cast to float. There is no Backward: Caffe's
ThresholdLayer::Backward_cpu is NOT_IMPLEMENTED.
"""

from __future__ import annotations

from caffecompat.layers.graph import FLOAT, GraphBuilder
from caffecompat.layers.neuron import Neuron
from caffecompat.layers.registry import LayerNode, register


@register("Threshold")
class Threshold(Neuron):
    """1 where x > threshold, else 0 (Caffe implements no Backward)."""

    has_backward = False

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        above = g.op1("Greater", [node.bottoms[0], g.scalar(node.param.threshold_param.threshold)])
        g.op1("Cast", [above], node.tops[0], to=FLOAT)
