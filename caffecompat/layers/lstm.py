"""LSTM: Caffe's lstm_layer.cpp, the recurrent net (recurrent.py) with one LSTMUnit (lstm_unit.py) per step.

Blobs in Caffe's order: W_xc (4H x D), b_c (4H), [W_xc_static (4H x S)], W_hc (4H x H).
Step t: gates = W_hc . (cont_t * h_{t-1}) + W_xc . x_t + b_c [+ W_xc_static . x_static],
then (c_t, h_t) = LSTMUnit(c_{t-1}, gates, cont_t). Top h is every h_t.
"""

from __future__ import annotations

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.lstm_unit import lstm_step, lstm_step_backward, stash_step, stashed_step
from caffecompat.layers.recurrent import Layout, Recurrent
from caffecompat.layers.registry import Diffs, LayerNode, Shape, register


@register("LSTM")
class LSTM(Recurrent):
    """Long short-term memory over T steps, gates i, f, o, g."""

    state_names = ("h", "c")

    def gate_dim(self, hidden: int) -> int:
        return 4 * hidden

    def extra_params(self, hidden: int) -> list[tuple[Shape, bool]]:
        return [((4 * hidden, hidden), False)]  # W_hc

    def unroll(self, node: LayerNode, g: GraphBuilder, lay: Layout, gx: list[str], cont: list[str],
               states: list[str]) -> tuple[str, list[str]]:
        w_hc = g.param(node, lay.first_extra)
        h, c = states
        hs = []
        for t in range(lay.t):
            # h_conted_{t-1} = cont_t * h_{t-1}: a new sequence starts from a zero hidden state.
            hc = g.op1("Mul", [h, cont[t]])
            g.stash(node, f"hc{t}", hc)
            gates = g.op1("Gemm", [hc, w_hc, gx[t]], transB=1)
            s = lstm_step(g, c, gates, cont[t], lay.h)
            stash_step(g, node, f"step{t}", s)
            h, c = s.h, s.c
            hs.append(h)
        return (hs[0] if lay.t == 1 else g.op1("Concat", hs, axis=0)), [h, c]

    def unroll_backward(self, node: LayerNode, g: GraphBuilder, lay: Layout, dtop: str, d: Diffs) -> list[str]:
        w_hc = g.param(node, lay.first_extra)
        dh_steps = self.split_rows(g, dtop, lay)
        dgates: list[str] = [""] * lay.t
        dh_next: str | None = None
        dc_next: str | None = None
        for t in reversed(range(lay.t)):
            dh = dh_steps[t] if dh_next is None else g.op1("Add", [dh_steps[t], dh_next])
            dc_next, dgates[t] = lstm_step_backward(g, stashed_step(g, node, f"step{t}"), dc_next, dh)
            if t > 0:
                # Through W_hc and the cont multiply into h_{t-1}.
                dh_next = g.op1("Mul", [g.op1("MatMul", [dgates[t], w_hc]), g.stashed(node, f"cont{t}")])
        if d.need_param[lay.first_extra]:
            d.param[lay.first_extra] = self.gemm_steps(
                g, dgates, [g.stashed(node, f"hc{t}") for t in range(lay.t)])
        return dgates
