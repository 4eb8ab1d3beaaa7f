"""Building blocks that several layer types share: Caffe's axis indexing and opset-portable ONNX ops.

`canonical_axis` is Blob::CanonicalAxisIndex. ReduceSum's axes and Split's sizes
are attributes before opset 13 and inputs from it on; these helpers emit either
form, so a layer's Forward and Backward are written once for every opset.
"""

from __future__ import annotations

import numpy as np

from caffecompat.errors import NotSupportedError
from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import LayerNode, Shape


def canonical_axis(node: LayerNode, axis: int, ndim: int, field: str) -> int:
    """Caffe's Blob::CanonicalAxisIndex: axis in [-ndim, ndim), negative counting from the end."""
    if not -ndim <= axis < ndim:
        raise node.error(f"{field} {axis} is out of range for a {ndim}-D bottom")
    return axis % ndim


def reduce_sum(g: GraphBuilder, x: str, axes: list[int] | None = None, output: str | None = None,
               keepdims: int = 0) -> str:
    """ReduceSum over `axes` (all axes when None; an input since opset 13, an attribute before)."""
    if axes is None:
        return g.op1("ReduceSum", [x], output, keepdims=keepdims)
    if g.opset >= 13:
        return g.op1("ReduceSum", [x, g.ints(axes)], output, keepdims=keepdims)
    return g.op1("ReduceSum", [x], output, axes=axes, keepdims=keepdims)


def reduce_mean(g: GraphBuilder, x: str, shape: Shape, axes: list[int]) -> str:
    """Mean over `axes` (kept), as a sum times 1/count (Caffe's gemv with alpha 1/count)."""
    count = int(np.prod([shape[a] for a in axes], dtype=np.int64))
    return g.op1("Mul", [reduce_sum(g, x, axes, keepdims=1), g.scalar(1.0 / count)])


def split(g: GraphBuilder, x: str, axis: int, sizes: list[int], outputs: list[str]) -> None:
    """outputs = consecutive pieces of x along `axis` with the given sizes."""
    if len(outputs) == 1:
        g.identity(x, outputs[0])
    elif g.opset >= 13:
        g.op("Split", [x, g.ints(sizes)], outputs, axis=axis)
    else:
        g.op("Split", [x], outputs, axis=axis, split=sizes)


def require_opset(node: LayerNode, g: GraphBuilder, opset: int, needs: str) -> None:
    """`not supported` unless the export opset is at least `opset` (the lowering needs `needs`)."""
    if g.opset < opset:
        raise NotSupportedError(f"layer {node.label} of type {node.type} at ONNX opset {g.opset}: it needs {needs}; "
                                f"export with opset >= {opset}")
