"""Parameter (Caffe's parameter_layer.hpp): no bottoms, one learnable blob of parameter_param.shape as its top.

Forward: the top is the blob (Caffe shares their data). Backward: the blob's
diff is the top's diff (Caffe shares them too). The blob has no filler: Caffe's
Blob starts zeroed, so a fresh net's top is zeros until weights are loaded.
"""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register


@register("Parameter")
class Parameter(Layer):
    """top = blobs[0], of parameter_param.shape; its diff is the top diff."""

    min_bottoms = max_bottoms = 0
    min_tops = max_tops = 1

    def _shape(self, node: LayerNode) -> Shape:
        dims = tuple(int(d) for d in node.param.parameter_param.shape.dim)
        if any(d < 0 for d in dims):
            raise node.error(f"parameter_param.shape has a negative dimension: {list(dims)}")
        return dims

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        return [self._shape(node)]

    def param_shapes(self, node: LayerNode) -> list[Shape]:
        return [self._shape(node)]

    def init_params(self, node: LayerNode, rng: np.random.Generator) -> list[np.ndarray]:
        # ParameterLayer::LayerSetUp reshapes blobs_[0] and fills nothing: SyncedMemory zeroes it.
        return [np.zeros(node.param_shapes[0], np.float32)]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        g.identity(g.param(node, 0), node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        # ParameterLayer shares the blob's diff with the top's: the parameter diff is the top diff.
        if d.need_param and d.need_param[0]:
            d.param[0] = g.identity(d.top[0], g.tmp("diff"))
