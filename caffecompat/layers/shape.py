"""Shape layers: Concat, Slice, Flatten, Reshape, Crop, Tile and Silence.

All shapes are static (Caffe nets have fixed blob shapes), so every reshape
target, slice bound and split size is a constant computed from the shapes.
"""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Layer, LayerNode, Shape, register


def canonical_axis(node: LayerNode, axis: int, ndim: int, field: str) -> int:
    """Caffe's Blob::CanonicalAxisIndex: axis in [-ndim, ndim), negative counting from the end."""
    if not -ndim <= axis < ndim:
        raise node.error(f"{field} {axis} is out of range for a {ndim}-D bottom")
    return axis % ndim


def _no_in_place(node: LayerNode) -> None:
    # Flatten/Reshape: Caffe refuses top == bottom for these layers.
    if node.top_blobs[0] == node.bottom_blobs[0]:
        raise node.error("does not allow in-place computation; give the top its own name")


def split(g: GraphBuilder, x: str, axis: int, sizes: list[int], outputs: list[str]) -> None:
    """outputs = consecutive pieces of x along `axis` with the given sizes."""
    if len(outputs) == 1:
        g.identity(x, outputs[0])
    elif g.opset >= 13:
        g.op("Split", [x, g.ints(sizes)], outputs, axis=axis)
    else:
        g.op("Split", [x], outputs, axis=axis, split=sizes)


@register("Concat")
class Concat(Layer):
    """Joins the bottoms along `axis` (legacy concat_dim); all other dims must agree."""

    min_bottoms = 1
    min_tops = max_tops = 1

    def _axis(self, node: LayerNode) -> int:
        p = node.param.concat_param
        ndim = len(node.bottom_shapes[0])
        if p.HasField("concat_dim"):
            # ConcatLayer::Reshape: the legacy concat_dim wins when set.
            if p.concat_dim >= ndim:
                raise node.error(f"concat_dim {p.concat_dim} is out of range for a {ndim}-D bottom")
            return int(p.concat_dim)
        return canonical_axis(node, p.axis, ndim, "concat_param.axis")

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        axis = self._axis(node)
        first = node.bottom_shapes[0]
        total = 0
        for i, s in enumerate(node.bottom_shapes):
            if len(s) != len(first) or any(a != b for j, (a, b) in enumerate(zip(s, first)) if j != axis):
                raise node.error(f"bottom #{i} has shape {list(s)}, which differs from bottom #0's "
                                 f"{list(first)} outside the concat axis {axis}")
            total += s[axis]
        return [(*first[:axis], total, *first[axis + 1:])]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        if len(node.bottoms) == 1:
            g.identity(node.bottoms[0], node.tops[0])
        else:
            g.op("Concat", list(node.bottoms), [node.tops[0]], axis=self._axis(node))


@register("Slice")
class Slice(Layer):
    """Cuts the bottom along `axis` (legacy slice_dim) at slice_point, or into equal parts."""

    min_bottoms = max_bottoms = 1
    min_tops = 1

    def _plan(self, node: LayerNode) -> tuple[int, list[int]]:
        p = node.param.slice_param
        shape = node.bottom_shapes[0]
        if p.HasField("slice_dim"):
            # SliceLayer::Reshape: the legacy slice_dim wins when set.
            if p.slice_dim >= len(shape):
                raise node.error(f"slice_dim {p.slice_dim} is out of range for a {len(shape)}-D bottom")
            axis = int(p.slice_dim)
        else:
            axis = canonical_axis(node, p.axis, len(shape), "slice_param.axis")
        n, dim = len(node.top_blobs), shape[axis]
        if p.slice_point:
            if len(p.slice_point) != n - 1:
                raise node.error(f"has {len(p.slice_point)} slice_point values for {n} tops; give one "
                                 "fewer than the number of tops")
            if n > dim:
                raise node.error(f"has {n} tops but the slice axis {axis} has only {dim} entries")
            bounds = [0, *p.slice_point, dim]
            sizes = [b - a for a, b in zip(bounds, bounds[1:])]
            if any(s <= 0 for s in sizes):
                raise node.error(f"slice_point {list(p.slice_point)} must increase strictly and stay "
                                 f"inside the axis (size {dim})")
        else:
            if dim % n:
                raise node.error(f"{n} tops do not evenly divide the slice axis {axis} of size {dim}")
            sizes = [dim // n] * n
        return axis, sizes

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        axis, sizes = self._plan(node)
        s = node.bottom_shapes[0]
        return [(*s[:axis], k, *s[axis + 1:]) for k in sizes]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        axis, sizes = self._plan(node)
        split(g, node.bottoms[0], axis, sizes, list(node.tops))


class _Reshaping(Layer):
    """A layer whose top is the bottom's data under a new static shape."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        g.op1("Reshape", [node.bottoms[0], g.ints(node.top_shapes[0])], node.tops[0])


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


@register("Crop")
class Crop(Layer):
    """Crops bottom 0 to bottom 1's size on the axes from `axis` on, starting at `offset`."""

    min_bottoms = max_bottoms = 2
    min_tops = max_tops = 1

    def _plan(self, node: LayerNode) -> tuple[list[int], Shape]:
        p = node.param.crop_param
        s, ref = node.bottom_shapes
        ndim = len(s)
        if len(ref) != ndim:
            raise node.error(f"bottoms must have the same number of axes, got {list(s)} and {list(ref)}")
        start = canonical_axis(node, p.axis, ndim, "crop_param.axis")
        if len(p.offset) > 1 and start + len(p.offset) != ndim:
            raise node.error(f"has {len(p.offset)} offsets for {ndim - start} cropped axes; give one "
                             "offset, or one per axis from crop_param.axis on")
        offsets, top = [0] * ndim, list(s)
        for i in range(start, ndim):
            # CropLayer::Reshape: one offset applies to every cropped axis; none means 0.
            off = int(p.offset[0] if len(p.offset) == 1 else p.offset[i - start] if p.offset else 0)
            if s[i] - off < ref[i]:
                raise node.error(f"the crop for axis {i} is out of bounds: size {ref[i]} at offset {off} "
                                 f"in a bottom of size {s[i]}")
            offsets[i], top[i] = off, ref[i]
        return offsets, tuple(top)

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        return [self._plan(node)[1]]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        offsets, top = self._plan(node)
        axes = [i for i, (o, t, s) in enumerate(zip(offsets, top, node.bottom_shapes[0])) if o or t != s]
        if not axes:
            g.identity(node.bottoms[0], node.tops[0])
            return
        starts = [offsets[i] for i in axes]
        ends = [offsets[i] + top[i] for i in axes]
        g.op1("Slice", [node.bottoms[0], g.ints(starts), g.ints(ends), g.ints(axes)], node.tops[0])


@register("Tile")
class Tile(Layer):
    """Repeats the bottom `tiles` times along `axis` (whole blocks, like numpy.tile)."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def _plan(self, node: LayerNode) -> tuple[int, int]:
        p = node.param.tile_param
        axis = canonical_axis(node, p.axis, len(node.bottom_shapes[0]), "tile_param.axis")
        if not p.HasField("tiles"):
            raise node.error("tile_param.tiles must be given")
        if p.tiles <= 0:
            raise node.error(f"tile_param.tiles must be positive, got {p.tiles}")
        return axis, int(p.tiles)

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        axis, tiles = self._plan(node)
        s = node.bottom_shapes[0]
        return [(*s[:axis], s[axis] * tiles, *s[axis + 1:])]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        axis, tiles = self._plan(node)
        repeats = [1] * len(node.bottom_shapes[0])
        repeats[axis] = tiles
        g.op1("Tile", [node.bottoms[0], g.ints(repeats)], node.tops[0])


@register("Silence")
class Silence(Layer):
    """Consumes its bottoms so they are not net outputs; computes nothing."""

    min_bottoms = 1
    min_tops = max_tops = 0

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        return []

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        return None
