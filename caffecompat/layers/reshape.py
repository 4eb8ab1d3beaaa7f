"""Reshape (Caffe's reshape_layer.cpp): the bottom's data under a new static shape.

reshape_param.shape replaces axes [axis, axis + num_axes); a 0 copies the
bottom's dim, one -1 is inferred. In-place computation is refused. Forward is
ONNX Reshape to the computed shape. Backward: the bottom shares the top's diff
(Blob::ShareDiff), reshaped to the bottom's shape. `_Reshaping` is that Forward
and Backward, which Flatten shares.
"""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register


def _no_in_place(node: LayerNode) -> None:
    # Flatten/Reshape: Caffe refuses top == bottom for these layers.
    if node.top_blobs[0] == node.bottom_blobs[0]:
        raise node.error("does not allow in-place computation; give the top its own name")


class _Reshaping(Layer):
    """A layer whose top is the bottom's data under a new static shape."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        g.op1("Reshape", [node.bottoms[0], g.ints(node.top_shapes[0])], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        # Flatten/Reshape: the bottom shares its diff with the top (Blob::ShareDiff), under its own shape.
        if d.need_bottom[0]:
            d.bottom[0] = g.op1("Reshape", [d.top[0], g.ints(node.bottom_shapes[0])])


@register("Reshape")
class Reshape(_Reshaping):
    """Replaces axes [axis, axis + num_axes) by reshape_param.shape; 0 copies a dim, one -1 is inferred."""

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        _no_in_place(node)
        p = node.param.reshape_param
        s = node.bottom_shapes[0]
        ndim = len(s)
        # ReshapeLayer::Reshape: a negative axis counts from the end, -1 meaning "after the last axis".
        start = p.axis if p.axis >= 0 else ndim + p.axis + 1
        if not 0 <= start <= ndim:
            raise node.error(f"reshape_param.axis {p.axis} is out of range for a {ndim}-D bottom")
        if p.num_axes < -1:
            raise node.error(f"reshape_param.num_axes must be >= 0, or -1 for all, got {p.num_axes}")
        end = ndim if p.num_axes == -1 else start + p.num_axes
        if end > ndim:
            raise node.error(f"reshape_param axis + num_axes = {end} is out of range for a {ndim}-D bottom")
        new = [int(d) for d in p.shape.dim]
        if new.count(-1) > 1:
            raise node.error("reshape_param.shape has more than one -1; at most one dim can be inferred")
        for i, d in enumerate(new):
            if d == 0:
                # A 0 copies the bottom's dim at the same position.
                if start + i >= ndim:
                    raise node.error(f"reshape_param.shape dim #{i} is 0 but the bottom has no axis "
                                     f"{start + i} to copy")
                new[i] = s[start + i]
            elif d < -1:
                raise node.error(f"reshape_param.shape dim #{i} is {d}; dims are positive, 0 or -1")
        top = [*s[:start], *new, *s[end:]]
        count = int(np.prod(s, dtype=np.int64))
        if -1 in new:
            known = int(np.prod([d for d in top if d != -1], dtype=np.int64))
            if known == 0 or count % known:
                raise node.error(f"bottom count ({count}) must be divisible by the product of the "
                                 f"specified dims ({known})")
            top[top.index(-1, start)] = count // known
        if int(np.prod(top, dtype=np.int64)) != count:
            raise node.error(f"the new shape {top} has {int(np.prod(top))} entries but the bottom "
                             f"{list(s)} has {count}")
        return [tuple(top)]
