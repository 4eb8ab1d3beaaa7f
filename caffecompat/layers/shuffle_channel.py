"""ShuffleChannel (ShuffleNet's shuffle_channel_layer.cpp): channel c = i * (C / group) + j moves to j * group + i.

The channels, seen as a group x C/group matrix, are transposed: a Reshape, a
Transpose and a Reshape. Backward is the inverse shuffle of the top diff. As the
fork sets the top up with the legacy 4-D accessors, a 2-D or 3-D bottom gives a
4-D top (trailing axes of size 1).
"""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register


def legacy_4d(node: LayerNode, shape: Shape) -> Shape:
    """Blob::num/channels/height/width: the blob as N x C x H x W, missing axes of size 1 (at most 4 axes)."""
    if not 2 <= len(shape) <= 4:
        raise node.error(f"takes a bottom of 2 to 4 axes (N x C x H x W), got shape {list(shape)}")
    return tuple(shape) + (1,) * (4 - len(shape))


@register("ShuffleChannel")
class ShuffleChannel(Layer):
    """Transposes the channels as a group x C/group matrix."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def _group(self, node: LayerNode) -> int:
        group = node.param.shuffle_channel_param.group
        channels = node.bottom_shapes[0][1] if len(node.bottom_shapes[0]) > 1 else 0
        if group <= 0 or channels % group:
            raise node.error(f"shuffle_channel_param.group {group} must be positive and divide the {channels} "
                             "channels")
        return group

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        # The fork reads and writes the blobs as separate buffers: in place, it would overwrite what it reads.
        if node.top_blobs[0] == node.bottom_blobs[0]:
            raise node.error("does not allow in-place computation; give the top its own name")
        self._group(node)
        return [legacy_4d(node, node.bottom_shapes[0])]

    @staticmethod
    def _shuffle(g: GraphBuilder, x: str, shape: Shape, rows: int, out: str | None = None) -> str:
        """x's channels as a rows x C/rows matrix, transposed; the result has shape `shape`."""
        n, c = shape[0], shape[1]
        spatial = int(np.prod(shape[2:], dtype=np.int64))
        m = g.op1("Reshape", [x, g.ints([n, rows, c // rows, spatial])])
        m = g.op1("Transpose", [m], perm=[0, 2, 1, 3])
        return g.op1("Reshape", [m, g.ints(list(shape))], out)

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        self._shuffle(g, node.bottoms[0], node.top_shapes[0], self._group(node), node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if d.need_bottom[0]:
            # ShuffleChannelLayer::Backward_cpu: the inverse transpose (C/group x group).
            c = node.bottom_shapes[0][1]
            d.bottom[0] = self._shuffle(g, d.top[0], node.bottom_shapes[0], c // self._group(node))
