"""Kernel/stride/pad/dilation fields of Convolution and Pooling, in their repeated and _h/_w forms."""

from __future__ import annotations

from collections.abc import Sequence

from caffecompat.layers.registry import LayerNode


def _per_axis(node: LayerNode, field: str, repeated: Sequence[int], h: int | None, w: int | None,
              n: int, default: int | None) -> list[int]:
    if h is not None or w is not None:
        # BaseConvolutionLayer / PoolingLayer: the _h/_w forms are 2-D only and exclusive of the list form.
        if n != 2:
            raise node.error(f"{field}_h/{field}_w can only be used for 2-D inputs")
        if repeated:
            raise node.error(f"give either {field} or {field}_h and {field}_w, not both")
        if h is None or w is None:
            raise node.error(f"{field}_h and {field}_w must be given together")
        return [h, w]
    values = list(repeated)
    if not values:
        if default is None:
            raise node.error(f"{field} is required (or {field}_h and {field}_w)")
        return [default] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise node.error(f"{field} has {len(values)} values; give 1 or one per spatial axis ({n})")
    return values


def _opt(msg, name: str) -> int | None:
    return getattr(msg, name) if msg.HasField(name) else None


def _listed(msg, name: str) -> list[int]:
    # ConvolutionParameter repeats kernel_size/stride/pad; PoolingParameter has single optional values.
    value = getattr(msg, name)
    if hasattr(value, "__len__"):
        return list(value)
    return [value] if msg.HasField(name) else []


def kernel(node: LayerNode, p, n: int) -> list[int]:
    """kernel_size (repeated) or kernel_h/kernel_w, one per spatial axis."""
    repeated = _listed(p, "kernel_size")
    return _per_axis(node, "kernel", repeated, _opt(p, "kernel_h"), _opt(p, "kernel_w"), n, None)


def stride(node: LayerNode, p, n: int) -> list[int]:
    """stride (repeated) or stride_h/stride_w; default 1."""
    repeated = _listed(p, "stride")
    return _per_axis(node, "stride", repeated, _opt(p, "stride_h"), _opt(p, "stride_w"), n, 1)


def pad(node: LayerNode, p, n: int) -> list[int]:
    """pad (repeated) or pad_h/pad_w; default 0."""
    repeated = _listed(p, "pad")
    return _per_axis(node, "pad", repeated, _opt(p, "pad_h"), _opt(p, "pad_w"), n, 0)


def dilation(node: LayerNode, p, n: int) -> list[int]:
    """dilation (repeated); default 1."""
    return _per_axis(node, "dilation", list(p.dilation), None, None, n, 1)
