"""LSTMUnit: one LSTM step on gate pre-activations (Caffe's lstm_unit_layer.cpp), also the step of LSTM.

Bottoms c_prev (1 x N x H), X (1 x N x 4H, gates in Caffe's order i, f, o, g) and
cont (1 x N); tops c (1 x N x H) and h (1 x N x H). `lstm_step` and
`lstm_step_backward` are the unit's Forward and Backward on N x H / N x 4H
tensors, shared with the LSTM layer (lstm.py) which runs one unit per timestep.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register


@dataclass
class LSTMStep:
    """Forward values of one unit step that its Backward reads (all N x H)."""

    c_prev: str
    cont: str  # N x 1
    i: str
    f: str  # already multiplied by cont, as Caffe keeps it
    o: str
    g: str
    tanh_c: str
    c: str
    h: str


def stash_step(g: GraphBuilder, node: LayerNode, key: str, s: LSTMStep) -> None:
    """Keep the values of step `s` of `node` for its Backward under `key`."""
    for f in fields(s):
        g.stash(node, f"{key}.{f.name}", getattr(s, f.name))


def stashed_step(g: GraphBuilder, node: LayerNode, key: str) -> LSTMStep:
    """The step `stash_step` kept under `key`."""
    return LSTMStep(**{f.name: g.stashed(node, f"{key}.{f.name}") for f in fields(LSTMStep)})


def lstm_step(g: GraphBuilder, c_prev: str, gates: str, cont: str, hidden: int,
              c_out: str | None = None, h_out: str | None = None) -> LSTMStep:
    """One LSTMUnit step: c_prev (N x H), gates (N x 4H), cont (N x 1) -> the step's values."""
    # LSTMUnitLayer::Forward_cpu: the 4H gate inputs are i, f, o, g in that order.
    i_x, f_x, o_x, g_x = g.op("Split", [gates, g.ints([hidden] * 4)], 4, axis=1)
    i = g.op1("Sigmoid", [i_x])
    # f = cont * sigmoid(x_f): a cont of 0 starts a new sequence (forgets c_prev).
    f = g.op1("Mul", [g.op1("Sigmoid", [f_x]), cont])
    o = g.op1("Sigmoid", [o_x])
    gg = g.op1("Tanh", [g_x])
    c = g.op1("Add", [g.op1("Mul", [f, c_prev]), g.op1("Mul", [i, gg])], c_out)
    tanh_c = g.op1("Tanh", [c])
    h = g.op1("Mul", [o, tanh_c], h_out)
    return LSTMStep(c_prev, cont, i, f, o, gg, tanh_c, c, h)


def lstm_step_backward(g: GraphBuilder, s: LSTMStep, dc: str | None, dh: str | None) -> tuple[str, str]:
    """LSTMUnitLayer::Backward_cpu on one step: (diff of c_prev, diff of the N x 4H gate inputs).

    dc, dh: the diffs of the step's c and h (None: zero).
    """
    one = g.scalar(1.0)
    # c_term_diff = dc + dh * o * (1 - tanh(c)^2)
    c_term = None
    if dh is not None:
        c_term = g.op1("Mul", [g.op1("Mul", [dh, s.o]),
                               g.op1("Sub", [one, g.op1("Mul", [s.tanh_c, s.tanh_c])])])
    if dc is not None:
        c_term = dc if c_term is None else g.op1("Add", [c_term, dc])
    if c_term is None:
        c_term = g.op1("Mul", [s.c, g.scalar(0.0)])
    dh = dh if dh is not None else g.op1("Mul", [s.h, g.scalar(0.0)])

    def sig_grad(act: str) -> str:  # act * (1 - act), Caffe's sigmoid derivative from the activation
        return g.op1("Mul", [act, g.op1("Sub", [one, act])])

    dc_prev = g.op1("Mul", [c_term, s.f])
    di = g.op1("Mul", [g.op1("Mul", [c_term, s.g]), sig_grad(s.i)])
    # Caffe differentiates f through f * (1 - f) with f = cont * sigmoid (exact for a 0/1 cont).
    df = g.op1("Mul", [g.op1("Mul", [c_term, s.c_prev]), sig_grad(s.f)])
    do = g.op1("Mul", [g.op1("Mul", [dh, s.tanh_c]), sig_grad(s.o)])
    dg = g.op1("Mul", [g.op1("Mul", [c_term, s.i]), g.op1("Sub", [one, g.op1("Mul", [s.g, s.g])])])
    return dc_prev, g.op1("Concat", [di, df, do, dg], axis=1)


@register("LSTMUnit")
class LSTMUnit(Layer):
    """c = f * c_prev + i * g, h = o * tanh(c) for N instances of one timestep."""

    min_bottoms = max_bottoms = 3
    min_tops = max_tops = 2

    def allow_force_backward(self, node: LayerNode, bottom_index: int) -> bool:
        # LSTMUnitLayer::AllowForceBackward: never to the sequence indicators (bottom 2).
        return bottom_index != 2

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        c, x, cont = node.bottom_shapes
        # LSTMUnitLayer::Reshape: c_prev and X are 1 x N x ..., cont is 1 x N; X has 4x c_prev's channels.
        for what, s, axes in (("c_prev (bottom 0)", c, 3), ("gate input (bottom 1)", x, 3),
                              ("cont (bottom 2)", cont, 2)):
            if len(s) != axes or s[0] != 1 or s[1] != c[1]:
                raise node.error(f"{what} has shape {list(s)}: expected {axes} axes, "
                                 f"1 x {c[1] if len(c) > 1 else 'N'}{' x ...' if axes == 3 else ''}")
        if x[2] != 4 * c[2]:
            raise node.error(f"gate input (bottom 1) has {x[2]} channels, needs 4 x {c[2]} (i, f, o, g)")
        return [c, c]

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        n, hidden = node.bottom_shapes[0][1:]
        c_prev = g.op1("Reshape", [node.bottoms[0], g.ints([n, hidden])])
        gates = g.op1("Reshape", [node.bottoms[1], g.ints([n, 4 * hidden])])
        cont = g.op1("Reshape", [node.bottoms[2], g.ints([n, 1])])
        s = lstm_step(g, c_prev, gates, cont, hidden)
        g.op1("Reshape", [s.c, g.ints([1, n, hidden])], node.tops[0])
        g.op1("Reshape", [s.h, g.ints([1, n, hidden])], node.tops[1])
        stash_step(g, node, "step", s)

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if d.need_bottom[2]:
            raise node.error("cannot backpropagate to the sequence indicators (bottom 2, cont); "
                             "set propagate_down: false for it")
        if not (d.need_bottom[0] or d.need_bottom[1]):
            return
        n, hidden = node.bottom_shapes[0][1:]
        s = stashed_step(g, node, "step")
        dc = g.op1("Reshape", [d.top[0], g.ints([n, hidden])])
        dh = g.op1("Reshape", [d.top[1], g.ints([n, hidden])])
        dc_prev, dx = lstm_step_backward(g, s, dc, dh)
        if d.need_bottom[0]:
            d.bottom[0] = g.op1("Reshape", [dc_prev, g.ints([1, n, hidden])])
        if d.need_bottom[1]:
            d.bottom[1] = g.op1("Reshape", [dx, g.ints([1, n, 4 * hidden])])
