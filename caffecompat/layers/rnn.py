"""RNN: Caffe's rnn_layer.cpp, the recurrent net (recurrent.py) of a tanh hidden layer and a tanh output.

Blobs in Caffe's order: W_xh (H x D), b_h (H), [W_xh_static (H x S)], W_hh (H x H), W_ho (H x H), b_o (H).
Step t: h_t = tanh(W_hh . (cont_t * h_{t-1}) + W_xh . x_t + b_h [+ W_xh_static . x_static]),
o_t = tanh(W_ho . h_t + b_o). Top o is every o_t.
"""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.recurrent import Layout, Recurrent
from caffecompat.layers.registry import Diffs, LayerNode, Shape, register


@register("RNN")
class RNN(Recurrent):
    """Elman network over T steps; num_output is both the hidden and the output size."""

    state_names = ("h",)

    def gate_dim(self, hidden: int) -> int:
        return hidden

    def extra_params(self, hidden: int) -> list[tuple[Shape, bool]]:
        return [((hidden, hidden), False), ((hidden, hidden), False), ((hidden,), True)]  # W_hh, W_ho, b_o

    def unroll(self, node: LayerNode, g: GraphBuilder, lay: Layout, gx: list[str], cont: list[str],
               states: list[str]) -> tuple[str, list[str]]:
        e = lay.first_extra
        w_hh = g.param(node, e)
        (h,) = states
        hs = []
        for t in range(lay.t):
            # h_conted_{t-1} = cont_t * h_{t-1}: a new sequence starts from a zero hidden state.
            hc = g.op1("Mul", [h, cont[t]])
            g.stash(node, f"hc{t}", hc)
            h = g.op1("Tanh", [g.op1("Gemm", [hc, w_hh, gx[t]], transB=1)])
            g.stash(node, f"h{t}", h)
            hs.append(h)
        h_all = hs[0] if lay.t == 1 else g.op1("Concat", hs, axis=0)
        g.stash(node, "h_all", h_all)
        # W_ho_h_t and o_neuron_t for every step at once.
        o = g.op1("Tanh", [g.op1("Gemm", [h_all, g.param(node, e + 1), g.param(node, e + 2)], transB=1)])
        g.stash(node, "o", o)
        return o, [h]

    def unroll_backward(self, node: LayerNode, g: GraphBuilder, lay: Layout, dtop: str, d: Diffs) -> list[str]:
        e = lay.first_extra
        one = g.scalar(1.0)
        o, h_all = g.stashed(node, "o"), g.stashed(node, "h_all")
        # TanH backward: dz = do * (1 - o^2).
        dz = g.op1("Mul", [dtop, g.op1("Sub", [one, g.op1("Mul", [o, o])])])
        if d.need_param[e + 1]:
            d.param[e + 1] = g.op1("Gemm", [dz, h_all], transA=1)
        if d.need_param[e + 2]:
            d.param[e + 2] = g.op1("ReduceSum", [dz, g.ints([0])], keepdims=0)
        dh_steps = self.split_rows(g, g.op1("MatMul", [dz, g.param(node, e + 1)]), lay)
        w_hh = g.param(node, e)
        da: list[str] = [""] * lay.t
        dh_next: str | None = None
        for t in reversed(range(lay.t)):
            dh = dh_steps[t] if dh_next is None else g.op1("Add", [dh_steps[t], dh_next])
            h = g.stashed(node, f"h{t}")
            da[t] = g.op1("Mul", [dh, g.op1("Sub", [one, g.op1("Mul", [h, h])])])
            if t > 0:
                dh_next = g.op1("Mul", [g.op1("MatMul", [da[t], w_hh]), g.stashed(node, f"cont{t}")])
        if d.need_param[e]:
            d.param[e] = self.gemm_steps(g, da, [g.stashed(node, f"hc{t}") for t in range(lay.t)])
        return da
