"""Element-wise neuron layers (Caffe's NeuronLayer family): one bottom, one same-shaped top."""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import FLOAT, GraphBuilder
from caffecompat.layers.registry import Layer, LayerNode, Shape, register
from caffecompat.net.fillers import fill
from caffecompat.proto import caffe_pb2


class Neuron(Layer):
    """A layer whose top has the shape of its bottom."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        return [node.bottom_shapes[0]]


@register("ReLU")
class ReLU(Neuron):
    """max(x, 0) + negative_slope * min(x, 0)."""

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        slope = node.param.relu_param.negative_slope
        if slope:
            g.op1("LeakyRelu", [node.bottoms[0]], node.tops[0], alpha=slope)
        else:
            g.op1("Relu", [node.bottoms[0]], node.tops[0])


Step = tuple[str, float | None]


def _affine_steps(scale: float, shift: float) -> list[Step]:
    """shift + scale * x, skipping identity steps (as Caffe's neuron layers do)."""
    return ([("Mul", scale)] if scale != 1.0 else []) + ([("Add", shift)] if shift != 0.0 else [])


def _chain(g: GraphBuilder, x: str, steps: list[Step], top: str) -> None:
    """Apply `steps` (op, scalar operand or None for a unary op) to x in order; the last writes `top`."""
    if not steps:
        g.identity(x, top)
    for i, (op, c) in enumerate(steps):
        x = g.op1(op, [x] if c is None else [x, g.scalar(c)], top if i == len(steps) - 1 else None)


@register("PReLU")
class PReLU(Neuron):
    """max(x, 0) + slope[c] * min(x, 0), one slope per channel (axis 1) or one shared slope."""

    def param_shapes(self, node: LayerNode) -> list[Shape]:
        shape = node.bottom_shapes[0]
        # PReLULayer::LayerSetUp: the bottom needs a channel axis.
        if len(shape) < 2:
            raise node.error(f"needs a bottom with at least 2 axes, got shape {list(shape)}")
        # A shared slope is a 0-axis (scalar) blob in Caffe; otherwise one value per channel.
        return [()] if node.param.prelu_param.channel_shared else [(shape[1],)]

    def init_params(self, node: LayerNode, rng: np.random.Generator) -> list[np.ndarray]:
        p = node.param.prelu_param
        filler = p.filler
        if not p.HasField("filler"):
            # PReLULayer::LayerSetUp: without a filler the slopes start at constant 0.25.
            filler = caffe_pb2.FillerParameter(type="constant", value=0.25)
        return [np.asarray(fill(filler, node.param_shapes[0], rng, f"layer '{node.name}' prelu_param.filler"),
                           dtype=np.float32).reshape(node.param_shapes[0])]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        x = node.bottoms[0]
        ndim = len(node.bottom_shapes[0])
        slope = g.param(node, 0)
        if node.param_shapes[0]:
            # Per-channel slope: shape (C, 1, ..., 1) so it broadcasts over the axes after 1.
            slope = g.op1("Reshape", [slope, g.ints([node.param_shapes[0][0]] + [1] * (ndim - 2))])
        # ORT has no PRelu gradient: Relu(x) + slope * Min(x, 0) trains.
        neg = g.op1("Mul", [slope, g.op1("Min", [x, g.scalar(0.0)])])
        g.op1("Add", [g.op1("Relu", [x]), neg], node.tops[0])


@register("ELU")
class ELU(Neuron):
    """max(x, 0) + alpha * (exp(min(x, 0)) - 1)."""

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        x = node.bottoms[0]
        alpha = node.param.elu_param.alpha
        # ORT has no Elu gradient; exp only sees min(x, 0), so it cannot overflow.
        expm1 = g.op1("Sub", [g.op1("Exp", [g.op1("Min", [x, g.scalar(0.0)])]), g.scalar(1.0)])
        g.op1("Add", [g.op1("Relu", [x]), g.op1("Mul", [expm1, g.scalar(alpha)])], node.tops[0])


@register("Sigmoid")
class Sigmoid(Neuron):
    """1 / (1 + exp(-x))."""

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        g.op1("Sigmoid", [node.bottoms[0]], node.tops[0])


@register("TanH")
class TanH(Neuron):
    """tanh(x)."""

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        g.op1("Tanh", [node.bottoms[0]], node.tops[0])


@register("AbsVal")
class AbsVal(Neuron):
    """|x|."""

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        g.op1("Abs", [node.bottoms[0]], node.tops[0])


@register("BNLL")
class BNLL(Neuron):
    """log(1 + exp(x)), computed as max(x, 0) + log(1 + exp(-|x|)) so exp never overflows."""

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        x = node.bottoms[0]
        e = g.op1("Exp", [g.op1("Neg", [g.op1("Abs", [x])])])
        soft = g.op1("Log", [g.op1("Add", [e, g.scalar(1.0)])])
        g.op1("Add", [g.op1("Relu", [x]), soft], node.tops[0])


@register("Power")
class Power(Neuron):
    """(shift + scale * x) ^ power."""

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.power_param
        if p.power * p.scale == 0.0:
            # PowerLayer::Forward: with power or scale 0 the top ignores x: 1 if power is 0, else shift^power.
            value = 1.0 if p.power == 0.0 else float(np.float32(p.shift) ** np.float32(p.power))
            g.op1("Expand", [g.scalar(value), g.ints(node.top_shapes[0])], node.tops[0])
            return
        steps = _affine_steps(p.scale, p.shift) + ([("Pow", p.power)] if p.power != 1.0 else [])
        _chain(g, node.bottoms[0], steps, node.tops[0])


@register("Exp")
class Exp(Neuron):
    """base ^ (shift + scale * x); base -1 means e."""

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.exp_param
        if p.base != -1 and p.base <= 0:
            raise node.error(f"exp_param.base must be -1 (for e) or positive, got {p.base}")
        log_base = 1.0 if p.base == -1 else float(np.log(np.float32(p.base)))
        # ExpLayer: base^(shift + scale x) = base^shift * exp(ln(base) * scale * x).
        inner = log_base * p.scale
        outer = 1.0 if p.shift == 0 else float(np.float32(p.base if p.base != -1 else np.e) ** np.float32(p.shift))
        steps = ([("Mul", inner)] if inner != 1.0 else []) + [("Exp", None)]
        _chain(g, node.bottoms[0], steps + ([("Mul", outer)] if outer != 1.0 else []), node.tops[0])


@register("Log")
class Log(Neuron):
    """log_base(shift + scale * x); base -1 means e."""

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.log_param
        if p.base != -1 and p.base <= 0:
            raise node.error(f"log_param.base must be -1 (for e) or positive, got {p.base}")
        # LogLayer: log_base(y) = ln(y) / ln(base).
        base_scale = 1.0 if p.base == -1 else 1.0 / float(np.log(np.float32(p.base)))
        steps = _affine_steps(p.scale, p.shift) + [("Log", None)]
        _chain(g, node.bottoms[0], steps + ([("Mul", base_scale)] if base_scale != 1.0 else []), node.tops[0])


@register("Threshold")
class Threshold(Neuron):
    """1 where x > threshold, else 0 (no gradient, as in Caffe)."""

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        above = g.op1("Greater", [node.bottoms[0], g.scalar(node.param.threshold_param.threshold)])
        g.op1("Cast", [above], node.tops[0], to=FLOAT)


@register("Swish")
class Swish(Neuron):
    """x * sigmoid(beta * x)."""

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        x = node.bottoms[0]
        beta = node.param.swish_param.beta
        gate = g.op1("Sigmoid", [g.op1("Mul", [x, g.scalar(beta)]) if beta != 1.0 else x])
        g.op1("Mul", [x, gate], node.tops[0])


@register("Clip")
class Clip(Neuron):
    """max(min, min(x, max))."""

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.clip_param
        # Min/Max rather than Clip: both have gradients in ORT's training build.
        low = g.op1("Min", [node.bottoms[0], g.scalar(p.max)])
        g.op1("Max", [low, g.scalar(p.min)], node.tops[0])
