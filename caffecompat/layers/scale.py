"""Scale and Bias: multiply / add a blob broadcast along axes [axis, axis + its num_axes) of bottom 0.

The operand is either a learned parameter blob (one bottom; its shape is
bottom 0's dims from `axis`, `num_axes` of them, -1 meaning to the end) or
the second bottom. A 0-axis operand is a scalar applied everywhere.
"""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.ops import reduce_sum
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register
from caffecompat.net.fillers import fill
from caffecompat.proto import caffe_pb2


def _canonical_axis(node: LayerNode, axis: int, ndim: int, field: str) -> int:
    # Blob::CanonicalAxisIndex: -ndim <= axis < ndim, negative counts from the end.
    if not -ndim <= axis < ndim:
        raise node.error(f"{field} {axis} is out of range for bottom 0 of shape {list(node.bottom_shapes[0])}")
    return axis % ndim


def learned_shape(node: LayerNode, axis: int, num_axes: int, what: str) -> Shape:
    """The shape of a learned operand: bottom 0's dims [axis, axis + num_axes), num_axes -1 = to the end."""
    shape = node.bottom_shapes[0]
    a = _canonical_axis(node, axis, len(shape), f"{what}_param.axis")
    # Scale/BiasLayer::LayerSetUp: num_axes >= -1 and the operand must fit inside bottom 0.
    if num_axes < -1:
        raise node.error(f"{what}_param.num_axes must be -1 (to the end) or >= 0, got {num_axes}")
    if num_axes >= 0 and a + num_axes > len(shape):
        raise node.error(f"the {what} blob ({num_axes} axes from axis {a}) extends past bottom 0 of shape "
                         f"{list(shape)}")
    return tuple(shape[a:] if num_axes == -1 else shape[a:a + num_axes])


def operand_axis(node: LayerNode, axis: int, operand: Shape, what: str) -> int:
    """Where `operand` starts in bottom 0, checking its dims match (Scale/BiasLayer::Reshape)."""
    shape = node.bottom_shapes[0]
    # A 0-axis operand is a scalar: the axis setting is irrelevant.
    if len(operand) == 0:
        return 0
    a = _canonical_axis(node, axis, len(shape), f"{what}_param.axis")
    if a + len(operand) > len(shape) or tuple(shape[a:a + len(operand)]) != tuple(operand):
        raise node.error(f"{what} of shape {list(operand)} does not match bottom 0 of shape {list(shape)} "
                         f"from axis {a}")
    return a


def broadcast(g: GraphBuilder, value: str, operand: Shape, axis: int, ndim: int) -> str:
    """`value` (shape `operand`, placed at `axis`) reshaped to broadcast against an ndim-axis blob."""
    trailing = ndim - axis - len(operand)
    if len(operand) == 0 or trailing == 0:
        return value  # numpy broadcasting aligns trailing axes already
    return g.op1("Reshape", [value, g.ints(list(operand) + [1] * trailing)])


def sum_to_operand(g: GraphBuilder, value: str, shape: Shape, operand: Shape, axis: int) -> str:
    """`value` (shaped like bottom 0) summed over every axis outside the operand's, shaped like the operand:
    Caffe's outer x operand x inner sums of Scale/BiasLayer::Backward."""
    if tuple(operand) == tuple(shape):
        return value
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + len(operand):], dtype=np.int64))
    view = g.op1("Reshape", [value, g.ints([outer, int(np.prod(operand, dtype=np.int64)), inner])])
    return g.op1("Reshape", [reduce_sum(g, view, [0, 2], keepdims=1), g.ints(list(operand))])


@register("Scale")
class Scale(Layer):
    """top = bottom0 * scale (+ bias), scale a learned blob or bottom 1; bias_term adds a learned bias."""

    min_bottoms = 1
    max_bottoms = 2
    min_tops = max_tops = 1

    def _operand(self, node: LayerNode) -> Shape:
        p = node.param.scale_param
        if len(node.bottom_shapes) > 1:
            return tuple(node.bottom_shapes[1])
        return learned_shape(node, p.axis, p.num_axes, "scale")

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        operand_axis(node, node.param.scale_param.axis, self._operand(node), "scale")
        return [node.bottom_shapes[0]]

    def param_shapes(self, node: LayerNode) -> list[Shape]:
        p = node.param.scale_param
        operand = self._operand(node)
        shapes = [] if len(node.bottom_shapes) > 1 else [operand]
        if p.bias_term:
            # ScaleLayer with bias_term: an internal Bias layer whose num_axes is bottom 1's axis count
            # (two bottoms) or scale_param.num_axes (one bottom); its blob follows the scale blob.
            num_axes = len(operand) if len(node.bottom_shapes) > 1 else p.num_axes
            shapes.append(learned_shape(node, p.axis, num_axes, "scale"))
        return shapes

    def init_params(self, node: LayerNode, rng: np.random.Generator) -> list[np.ndarray]:
        p = node.param.scale_param
        out = []
        if len(node.bottom_shapes) == 1:
            filler = p.filler
            if not p.HasField("filler"):
                # ScaleLayer::LayerSetUp: without a filler the scale starts at constant 1 (identity).
                filler = caffe_pb2.FillerParameter(type="constant", value=1.0)
            out.append(fill(filler, node.param_shapes[0], rng, f"layer '{node.name}' scale_param.filler"))
        if p.bias_term:
            out.append(fill(p.bias_filler, node.param_shapes[-1], rng, f"layer '{node.name}' scale_param.bias_filler"))
        return [np.asarray(a, dtype=np.float32).reshape(s) for a, s in zip(out, node.param_shapes)]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.scale_param
        ndim = len(node.bottom_shapes[0])
        operand = self._operand(node)
        axis = operand_axis(node, p.axis, operand, "scale")
        scale = node.bottoms[1] if len(node.bottoms) > 1 else g.param(node, 0)
        out = g.op1("Mul", [node.bottoms[0], broadcast(g, scale, operand, axis, ndim)],
                    None if p.bias_term else node.tops[0])
        if p.bias_term:
            bias_shape = node.param_shapes[-1]
            bias_axis = operand_axis(node, p.axis, bias_shape, "bias")
            bias = broadcast(g, g.param(node, len(node.param_shapes) - 1), bias_shape, bias_axis, ndim)
            g.op1("Add", [out, bias], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        p = node.param.scale_param
        shape = node.bottom_shapes[0]
        operand = self._operand(node)
        axis = operand_axis(node, p.axis, operand, "scale")
        dy = d.top[0]
        if p.bias_term and d.need_param[-1]:
            # ScaleLayer's internal Bias layer: the bias diff is dy summed outside the bias axes.
            bias_shape = node.param_shapes[-1]
            d.param[-1] = sum_to_operand(g, dy, shape, bias_shape, operand_axis(node, p.axis, bias_shape, "bias"))
        two_bottoms = len(node.bottoms) > 1
        if d.need_bottom[1] if two_bottoms else d.need_param[0]:
            # ScaleLayer::Backward_cpu: the scale diff is dy * x (x the bottom before an in-place forward)
            # summed outside the scale axes.
            scale_diff = sum_to_operand(g, g.op1("Mul", [dy, node.bottoms[0]]), shape, operand, axis)
            if two_bottoms:
                d.bottom[1] = scale_diff
            else:
                d.param[0] = scale_diff
        if d.need_bottom[0]:
            scale = node.bottoms[1] if two_bottoms else g.param(node, 0)
            d.bottom[0] = g.op1("Mul", [dy, broadcast(g, scale, operand, axis, len(shape))])


@register("Bias")
class Bias(Layer):
    """top = bottom0 + bias, bias a learned blob or bottom 1, broadcast from bias_param.axis."""

    min_bottoms = 1
    max_bottoms = 2
    min_tops = max_tops = 1

    def _operand(self, node: LayerNode) -> Shape:
        p = node.param.bias_param
        if len(node.bottom_shapes) > 1:
            return tuple(node.bottom_shapes[1])
        return learned_shape(node, p.axis, p.num_axes, "bias")

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        operand_axis(node, node.param.bias_param.axis, self._operand(node), "bias")
        return [node.bottom_shapes[0]]

    def param_shapes(self, node: LayerNode) -> list[Shape]:
        return [] if len(node.bottom_shapes) > 1 else [self._operand(node)]

    def init_params(self, node: LayerNode, rng: np.random.Generator) -> list[np.ndarray]:
        if not node.param_shapes:
            return []
        # BiasLayer::LayerSetUp: bias_param.filler (default constant 0).
        value = fill(node.param.bias_param.filler, node.param_shapes[0], rng, f"layer '{node.name}' bias_param.filler")
        return [np.asarray(value, dtype=np.float32).reshape(node.param_shapes[0])]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.bias_param
        operand = self._operand(node)
        axis = operand_axis(node, p.axis, operand, "bias")
        bias = node.bottoms[1] if len(node.bottoms) > 1 else g.param(node, 0)
        g.op1("Add", [node.bottoms[0], broadcast(g, bias, operand, axis, len(node.bottom_shapes[0]))],
              node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        p = node.param.bias_param
        operand = self._operand(node)
        # BiasLayer::Backward_cpu: dx = dy; the bias diff (parameter or bottom 1) is dy summed outside its axes.
        if d.need_bottom[0]:
            d.bottom[0] = d.top[0]
        two_bottoms = len(node.bottoms) > 1
        if d.need_bottom[1] if two_bottoms else d.need_param[0]:
            shape = node.bottom_shapes[0]
            bias_diff = sum_to_operand(g, d.top[0], shape, operand, operand_axis(node, p.axis, operand, "bias"))
            if two_bottoms:
                d.bottom[1] = bias_diff
            else:
                d.param[0] = bias_diff
