"""Flatten (Caffe's flatten_layer.cpp): merges axes flatten_param.axis..end_axis (inclusive) into one.

In-place computation is refused. Forward and Backward are Reshape's (see
reshape.py): the top is the bottom's data under the merged static shape, and
the bottom shares the top's diff under its own shape.
"""

from __future__ import annotations

import numpy as np

from caffecompat.layers.ops import canonical_axis
from caffecompat.layers.registry import LayerNode, Shape, register
from caffecompat.layers.reshape import _no_in_place, _Reshaping


@register("Flatten")
class Flatten(_Reshaping):
    """Merges axes axis..end_axis (inclusive) into one."""

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        _no_in_place(node)
        p = node.param.flatten_param
        s = node.bottom_shapes[0]
        start = canonical_axis(node, p.axis, len(s), "flatten_param.axis")
        end = canonical_axis(node, p.end_axis, len(s), "flatten_param.end_axis")
        merged = int(np.prod(s[start:end + 1], dtype=np.int64))
        return [(*s[:start], merged, *s[end + 1:])]
