"""Dropout: identity at TEST; at TRAIN keeps each element with probability 1 - ratio, scaled by 1/(1 - ratio).

The TRAIN mask is a graph input the runtime draws from the solver's seeded
generator before every pass (`GraphBuilder.fed_input`), so runs repeat exactly;
the Backward multiplies by the same mask.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from caffecompat.layers.graph import FLOAT, GraphBuilder
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register
from caffecompat.proto import caffe_pb2


def bernoulli_mask(shape: tuple[int, ...], keep: float, rng: np.random.Generator) -> np.ndarray:
    """caffe_rng_bernoulli: a boolean array of `shape`, each entry true with probability `keep`."""
    return rng.random(shape) < keep


@register("Dropout")
class Dropout(Layer):
    """Caffe's inverted dropout: top = bottom * mask * 1/(1 - ratio) at TRAIN."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def _ratio(self, node: LayerNode) -> float:
        ratio = node.param.dropout_param.dropout_ratio
        # DropoutLayer::LayerSetUp: the scale 1 / (1 - ratio) needs 0 <= ratio < 1.
        if not 0.0 <= ratio < 1.0:
            raise node.error(f"dropout_param.dropout_ratio must be in [0, 1), got {ratio}")
        return ratio

    @staticmethod
    def _scale(ratio: float) -> np.float32:
        # DropoutLayer::LayerSetUp: scale_ = 1 / (1 - ratio), computed in double and stored as a float.
        return np.float32(1.0 / (1.0 - ratio))

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        self._ratio(node)
        return [node.bottom_shapes[0]]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        ratio = self._ratio(node)
        # DropoutLayer::Forward: active in the TRAIN phase only (and here only in a graph lowered for
        # training); otherwise the top is a copy of the bottom. A ratio of 0 keeps every unit.
        if not (g.training and node.phase == caffe_pb2.TRAIN) or ratio == 0.0:
            g.identity(node.bottoms[0], node.tops[0])
            return
        shape = tuple(node.bottom_shapes[0])
        drawn = g.fed_input(node, "mask", shape, np.bool_, partial(bernoulli_mask, shape, 1.0 - ratio))
        # Caffe's mask holds unsigned 0/1 values that multiply as floats.
        mask = g.op1("Cast", [drawn], to=FLOAT)
        g.stash(node, "mask", mask)
        kept = g.op1("Mul", [node.bottoms[0], mask])
        g.op1("Mul", [kept, g.scalar(self._scale(ratio))], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        mask = g.stashed(node, "mask")
        if mask is None:
            # DropoutLayer::Backward outside TRAIN: the bottom diff is a copy of the top diff.
            d.bottom[0] = d.top[0]
            return
        # At TRAIN: dx = dy * mask * scale, with the forward's mask.
        kept = g.op1("Mul", [d.top[0], mask])
        d.bottom[0] = g.op1("Mul", [kept, g.scalar(self._scale(self._ratio(node)))])
