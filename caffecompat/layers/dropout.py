"""Dropout: identity at TEST; at TRAIN keeps each element with probability 1 - ratio, scaled by 1/(1 - ratio)."""

from __future__ import annotations

import numpy as np

from caffecompat.errors import NotSupportedError
from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Layer, LayerNode, Shape, register
from caffecompat.proto import caffe_pb2


@register("Dropout")
class Dropout(Layer):
    """Caffe's inverted dropout (ONNX Dropout in training mode does the same scaling)."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def _ratio(self, node: LayerNode) -> float:
        ratio = node.param.dropout_param.dropout_ratio
        # DropoutLayer::LayerSetUp: the scale 1 / (1 - ratio) needs 0 <= ratio < 1.
        if not 0.0 <= ratio < 1.0:
            raise node.error(f"dropout_param.dropout_ratio must be in [0, 1), got {ratio}")
        return ratio

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        self._ratio(node)
        return [node.bottom_shapes[0]]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        ratio = self._ratio(node)
        # DropoutLayer::Forward: active in the TRAIN phase only; at TEST the top is a copy of the bottom.
        if not (g.training or node.phase == caffe_pb2.TRAIN) or ratio == 0.0:
            g.identity(node.bottoms[0], node.tops[0])
            return
        if g.opset < 12:
            raise NotSupportedError(f"Dropout at TRAIN before opset 12 (layer {node.name}): export with opset >= 12")
        # Dropout-12+: ratio and training_mode are inputs; the mask output feeds ORT's gradient.
        training = g.const(np.array(True), np.bool_, "training_mode")
        g.op("Dropout", [node.bottoms[0], g.scalar(ratio), training], [node.tops[0], g.tmp("mask")])
