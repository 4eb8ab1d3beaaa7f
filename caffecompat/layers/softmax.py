"""Softmax over one axis (softmax_param.axis, default 1) of an N-D blob; every other axis is independent."""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.ops import reduce_sum
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register


def softmax_axis(node: LayerNode) -> int:
    """softmax_param.axis made non-negative (Blob::CanonicalAxisIndex), or an error naming the layer."""
    shape = node.bottom_shapes[0]
    axis = node.param.softmax_param.axis
    if not -len(shape) <= axis < len(shape):
        raise node.error(f"softmax_param.axis {axis} is out of range for bottom of shape {list(shape)}")
    return axis % len(shape)


@register("Softmax")
class Softmax(Layer):
    """top = exp(x - max) / sum exp(x - max) along the softmax axis."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        softmax_axis(node)
        return [node.bottom_shapes[0]]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        axis = softmax_axis(node)
        ndim = len(node.bottom_shapes[0])
        if g.opset >= 13 or axis == ndim - 1:
            # Softmax-13 normalizes along one axis, like Caffe; before 13 only the last axis is one axis.
            g.op1("Softmax", [node.bottoms[0]], node.tops[0], axis=axis)
            return
        # Older opsets flatten from `axis`: move the softmax axis last, normalize, move it back.
        perm = [a for a in range(ndim) if a != axis] + [axis]
        back = [perm.index(a) for a in range(ndim)]
        moved = g.op1("Transpose", [node.bottoms[0]], perm=perm)
        soft = g.op1("Softmax", [moved], axis=ndim - 1)
        g.op1("Transpose", [soft], node.tops[0], perm=back)

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if not d.need_bottom[0]:
            return
        # SoftmaxLayer::Backward_cpu: dx = (dy - sum(dy * y) along the axis) * y.
        y, dy = node.tops[0], d.top[0]
        dot = reduce_sum(g, g.op1("Mul", [dy, y]), [softmax_axis(node)], keepdims=1)
        d.bottom[0] = g.op1("Mul", [g.op1("Sub", [dy, dot]), y])
