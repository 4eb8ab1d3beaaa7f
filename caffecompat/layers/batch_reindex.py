"""BatchReindex (Caffe's batch_reindex_layer.cpp): top[i] = bottom[permut[i]] over the first axis.

Bottom 1 is the 1-D index blob `permut` (float values, truncated to int as
Caffe's static_cast). Forward gathers; an index outside [0, num) is Caffe's
CHECK failure, here ONNX Runtime's Gather error
(negative ones included, which Gather alone would wrap). Backward accumulates each top
item's diff into the bottom item it came from; the indices get no diff.
"""

from __future__ import annotations

import numpy as np

from caffecompat.errors import NotSupportedError
from caffecompat.layers.graph import INT64, GraphBuilder
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register


@register("BatchReindex")
class BatchReindex(Layer):
    """top = bottom[permut] along axis 0; backward scatter-adds."""

    min_bottoms = max_bottoms = 2
    min_tops = max_tops = 1

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        data, permut = node.bottom_shapes
        # BatchReindexLayer::Reshape: CHECK_EQ(1, bottom[1]->num_axes()).
        if len(permut) != 1:
            raise node.error(f"bottom 1 (the indices) must be 1-D, got shape {list(permut)}")
        if not data:
            raise node.error("bottom 0 must have a first axis to reindex")
        return [(permut[0], *data[1:])]

    def allow_force_backward(self, node: LayerNode, bottom_index: int) -> bool:
        return bottom_index == 0

    def _indices(self, node: LayerNode, g: GraphBuilder) -> str:
        idx = g.stashed(node, "indices")
        if idx is None:
            idx = g.op1("Cast", [node.bottoms[1]], to=INT64)
            # check_batch_reindex: CHECK_GE(index, 0) on the float value. Gather would wrap a negative index
            # (and Cast truncates -0.5 to 0): such an index is sent out of Gather's range, an error as in Caffe.
            num = int(node.bottom_shapes[0][0])
            out_of_range = g.op1("Sub", [idx, g.const(np.int64(2 * num + 1), np.int64, "out_of_range")])
            negative = g.op1("Less", [node.bottoms[1], g.scalar(0.0)])
            idx = g.op1("Where", [negative, out_of_range, idx])
            g.stash(node, "indices", idx)
        return idx

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        g.op1("Gather", [node.bottoms[0], self._indices(node, g)], node.tops[0], axis=0)

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        # BatchReindexLayer::Backward_cpu: CHECK(!propagate_down[1]) << "Cannot backprop to index."
        if d.need_bottom[1]:
            raise node.error("cannot backpropagate to the indices (bottom 1); set propagate_down: false on it")
        if not d.need_bottom[0]:
            return
        if g.opset < 16:
            raise NotSupportedError(f"the backward of BatchReindex (layer {node.label}) at opset {g.opset}: it "
                                    "needs ScatterND with reduction (opset >= 16)")
        # The bottom diff is zeroed, then every top item's diff is added to item permut[i].
        shape = node.bottom_shapes[0]
        idx = g.op1("Unsqueeze", [self._indices(node, g), g.ints([1])])
        d.bottom[0] = g.op1("ScatterND", [g.zeros(shape), idx, d.top[0]], reduction="add")
