"""AbsVal (Caffe's absval_layer.cpp): |x|; in-place computation is refused, as AbsValLayer::LayerSetUp does.

Forward is ONNX Abs. Backward: sign(x) * dy, with sign(0) = 0.
"""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.neuron import Neuron, _bottom_data
from caffecompat.layers.registry import Diffs, LayerNode, register


@register("AbsVal")
class AbsVal(Neuron):
    """|x|."""

    def check_counts(self, node: LayerNode) -> None:
        super().check_counts(node)
        # AbsValLayer::LayerSetUp refuses in-place computation.
        if node.top_blobs[0] == node.bottom_blobs[0]:
            raise node.error("does not allow in-place computation")

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        g.op1("Abs", [node.bottoms[0]], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        # AbsValLayer::Backward_cpu: sign(x) * dy, with sign(0) = 0.
        d.bottom[0] = g.op1("Mul", [g.op1("Sign", [_bottom_data(node)]), d.top[0]])
