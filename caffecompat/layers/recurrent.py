"""The machinery LSTM and RNN share (Caffe's recurrent_layer.cpp): bottoms, tops, blobs and the unrolled net.

Caffe's RecurrentLayer unrolls a net over the T timesteps of its input with
weights shared across steps. Bottoms: x (T x N x ...), cont (T x N; 0 marks the
first step of a sequence: the previous hidden state is multiplied by it), an
optional static input x_static (N x ...), and with recurrent_param.expose_hidden
the initial states (h_0, then c_0 for LSTM; 1 x N x num_output each). Tops: the
per-step output (T x N x num_output), then with expose_hidden the final states.

Here the unrolled net is emitted as ONNX ops, one group per timestep (T is
static, the bottom's first axis). Every gate input starts with the transform
shared by both types: W_x . x_t + b (+ W_static . x_static), done for all steps
at once; the subclass (lstm.py, rnn.py) runs the steps and their Backward
(back-propagation through time). Blob order is that of the unrolled net's
learnable parameters: W_x, b, [W_static], then the subclass's.

Two Caffe rules that look surprising and are kept: the exposed initial states
get no diff and the diffs of the exposed final states are dropped (Caffe shares
their data, not their diffs, with the unrolled net). Without expose_hidden Caffe
copies h_T/c_T of one Forward into h_0/c_0 of the next: the runtimes (which
export with carry_state) feed them back through carried inputs; a converted ONNX
model has no state, and each of its runs starts from zeros (the same whenever a
batch's first step has cont = 0; expose_hidden makes the state explicit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape
from caffecompat.net.fillers import fill


@dataclass
class Layout:
    """The sizes of one recurrent layer: T steps, N streams, input dims, hidden size, static input."""

    t: int
    n: int
    d: int  # x's dims after the first two, flattened (InnerProduct axis 2)
    h: int  # num_output
    static: bool
    s: int  # x_static's dims after the first, flattened (InnerProduct axis 1)
    first_extra: int  # index of the subclass's first parameter blob


class Recurrent(Layer):
    """Base of LSTM and RNN: subclasses give the gate width, their blobs and the steps."""

    # RecurrentInputBlobNames: the states carried between steps (h, then c for LSTM).
    state_names: ClassVar[tuple[str, ...]] = ("h",)

    def gate_dim(self, hidden: int) -> int:
        """Width of the per-step input transform (4H for LSTM's gates, H for RNN)."""
        raise NotImplementedError

    def extra_params(self, hidden: int) -> list[tuple[Shape, bool]]:
        """The subclass's blobs after W_x, b and W_static: (shape, is_bias) in Caffe's order."""
        raise NotImplementedError

    def unroll(self, node: LayerNode, g: GraphBuilder, lay: Layout, gx: list[str], cont: list[str],
               states: list[str]) -> tuple[str, list[str]]:
        """Run the T steps: gx[t] is N x G, cont[t] N x 1, states the N x H initial states.
        Returns the (T*N) x num_output output and the final states (N x H)."""
        raise NotImplementedError

    def unroll_backward(self, node: LayerNode, g: GraphBuilder, lay: Layout, dtop: str, d: Diffs) -> list[str]:
        """BPTT from the (T*N) x num_output output diff: fills the subclass's param diffs in `d`,
        returns the diff of each step's gate input (N x G)."""
        raise NotImplementedError

    # -- counts, shapes, blobs ---------------------------------------------
    def _exposed(self, node: LayerNode) -> int:
        return len(self.state_names) if node.param.recurrent_param.expose_hidden else 0

    def check_counts(self, node: LayerNode) -> None:
        # RecurrentLayer::MinBottomBlobs / MaxBottomBlobs / ExactNumTopBlobs.
        exposed = self._exposed(node)
        lo, nb, nt = 2 + exposed, len(node.bottom_blobs), len(node.top_blobs)
        if not lo <= nb <= lo + 1:
            names = "x, cont, [x_static]" + "".join(f", {s}_0" for s in self.state_names[:exposed])
            raise node.error(f"takes {lo} or {lo + 1} bottom blobs ({names}), got {nb}")
        if nt != 1 + exposed:
            raise node.error(f"takes exactly {1 + exposed} top blob(s)"
                             f"{' (expose_hidden adds the final states)' if exposed else ''}, got {nt}")

    def allow_force_backward(self, node: LayerNode, bottom_index: int) -> bool:
        # RecurrentLayer::AllowForceBackward: never to the sequence indicators (bottom 1).
        return bottom_index != 1

    def layout(self, node: LayerNode) -> Layout:
        p = node.param.recurrent_param
        if p.num_output <= 0:
            raise node.error("recurrent_param.num_output must be given and positive")
        shapes = node.bottom_shapes
        x, cont = shapes[0], shapes[1]
        # RecurrentLayer::LayerSetUp: x is T x N x ..., cont is T x N.
        if len(x) < 2:
            raise node.error(f"bottom 0 (x) has shape {list(x)}: needs at least 2 axes (timesteps, streams, ...)")
        if len(cont) != 2 or tuple(cont) != tuple(x[:2]):
            raise node.error(f"bottom 1 (cont) has shape {list(cont)}: needs exactly {list(x[:2])} "
                             "(timesteps x streams)")
        exposed = self._exposed(node)
        # The static input is bottom 2 when there is one more bottom than x, cont and the exposed states.
        static = len(shapes) > 2 + exposed
        s = 0
        if static:
            xs = shapes[2]
            if len(xs) < 1 or xs[0] != x[1]:
                raise node.error(f"bottom 2 (x_static) has shape {list(xs)}: its first axis must be the "
                                 f"{x[1]} streams")
            s = int(np.prod(xs[1:], dtype=np.int64))
        t, n, h = x[0], x[1], p.num_output
        for j in range(exposed):
            got = shapes[2 + static + j]
            if tuple(got) != (1, n, h):
                raise node.error(f"bottom {2 + static + j} ({self.state_names[j]}_0) has shape {list(got)}: "
                                 f"needs [1, {n}, {h}]")
        d = int(np.prod(x[2:], dtype=np.int64))
        return Layout(t, n, d, h, static, s, 2 + static)

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        lay = self.layout(node)
        return [(lay.t, lay.n, lay.h)] + [(1, lay.n, lay.h)] * self._exposed(node)

    def _param_specs(self, node: LayerNode) -> list[tuple[Shape, bool]]:
        lay = self.layout(node)
        gd = self.gate_dim(lay.h)
        specs: list[tuple[Shape, bool]] = [((gd, lay.d), False), ((gd,), True)]
        if lay.static:
            specs.append(((gd, lay.s), False))
        return specs + self.extra_params(lay.h)

    def param_shapes(self, node: LayerNode) -> list[Shape]:
        return [shape for shape, _ in self._param_specs(node)]

    def init_params(self, node: LayerNode, rng: np.random.Generator) -> list[np.ndarray]:
        p = node.param.recurrent_param
        # The unrolled InnerProducts fill weights with weight_filler and biases with bias_filler.
        return [fill(p.bias_filler if bias else p.weight_filler, shape, rng,
                     f"layer '{node.name}' recurrent_param.{'bias' if bias else 'weight'}_filler")
                for shape, bias in self._param_specs(node)]

    # -- Forward -------------------------------------------------------------
    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        lay = self.layout(node)
        gd = self.gate_dim(lay.h)
        x_flat = g.op1("Reshape", [node.bottoms[0], g.ints([lay.t * lay.n, lay.d])])
        g.stash(node, "x_flat", x_flat)
        # x_transform: W_x . x + b for every step at once (InnerProduct on axis 2).
        gx = g.op1("Gemm", [x_flat, g.param(node, 0), g.param(node, 1)], transB=1)
        gx = g.op1("Reshape", [gx, g.ints([lay.t, lay.n, gd])])
        if lay.static:
            xs_flat = g.op1("Reshape", [node.bottoms[2], g.ints([lay.n, lay.s])])
            g.stash(node, "xs_flat", xs_flat)
            # W_x_static . x_static, the same for every step, added to each step's gate input.
            gx = g.op1("Add", [gx, g.op1("Gemm", [xs_flat, g.param(node, 2)], transB=1)])
        gx_steps = self._steps(g, gx, lay, gd)
        cont = g.op1("Reshape", [node.bottoms[1], g.ints([lay.t, lay.n, 1])])
        conts = self._steps(g, cont, lay, 1)
        for t, c in enumerate(conts):
            g.stash(node, f"cont{t}", c)
        exposed = self._exposed(node)
        if exposed:
            states = [g.op1("Reshape", [node.bottoms[2 + lay.static + j], g.ints([lay.n, lay.h])])
                      for j in range(exposed)]
        elif g.carry_state:
            # RecurrentLayer::Forward_cpu without expose_hidden: h_0 (c_0) is the previous Forward's h_T (c_T).
            carried = [g.carried_input(node, f"{s}_0", (lay.n, lay.h)) for s in self.state_names]
            states = carried
        else:
            states = [g.zeros([lay.n, lay.h], f"{s}_0") for s in self.state_names]
        out, final = self.unroll(node, g, lay, gx_steps, conts, states)
        if not exposed and g.carry_state:
            for name, value in zip(carried, final):
                g.set_carry(name, value)
        g.op1("Reshape", [out, g.ints([lay.t, lay.n, lay.h])], node.tops[0])
        for j in range(exposed):
            g.op1("Reshape", [final[j], g.ints([1, lay.n, lay.h])], node.tops[1 + j])

    @staticmethod
    def _steps(g: GraphBuilder, value: str, lay: Layout, width: int) -> list[str]:
        """Split a T x N x width value into T values of N x width."""
        if lay.t == 1:
            return [g.op1("Reshape", [value, g.ints([lay.n, width])])]
        parts = g.op("Split", [value, g.ints([1] * lay.t)], lay.t, axis=0)
        return [g.op1("Reshape", [p, g.ints([lay.n, width])]) for p in parts]

    # -- Backward ------------------------------------------------------------
    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if d.need_bottom[1]:
            # RecurrentLayer::Backward_cpu refuses a diff for cont.
            raise node.error("cannot backpropagate to the sequence indicators (bottom 1, cont); "
                             "set propagate_down: false for it")
        lay = self.layout(node)
        gd = self.gate_dim(lay.h)
        # The diffs of exposed final states (tops 1..) never reach the unrolled net in Caffe: only top 0's.
        dtop = g.op1("Reshape", [d.top[0], g.ints([lay.t * lay.n, lay.h])])
        dgx_steps = self.unroll_backward(node, g, lay, dtop, d)
        dgx = dgx_steps[0] if lay.t == 1 else g.op1("Concat", dgx_steps, axis=0)  # (T*N) x G
        if d.need_param[0]:
            d.param[0] = g.op1("Gemm", [dgx, g.stashed(node, "x_flat")], transA=1)
        if d.need_param[1]:
            d.param[1] = g.op1("ReduceSum", [dgx, g.ints([0])], keepdims=0)
        if d.need_bottom[0]:
            dx = g.op1("MatMul", [dgx, g.param(node, 0)])
            d.bottom[0] = g.op1("Reshape", [dx, g.ints(list(node.bottom_shapes[0]))])
        if lay.static and (d.need_param[2] or d.need_bottom[2]):
            # The static term feeds every step: its diff is the sum over the steps.
            dgs = g.op1("ReduceSum", [g.op1("Reshape", [dgx, g.ints([lay.t, lay.n, gd])]), g.ints([0])],
                        keepdims=0)
            if d.need_param[2]:
                d.param[2] = g.op1("Gemm", [dgs, g.stashed(node, "xs_flat")], transA=1)
            if d.need_bottom[2]:
                dxs = g.op1("MatMul", [dgs, g.param(node, 2)])
                d.bottom[2] = g.op1("Reshape", [dxs, g.ints(list(node.bottom_shapes[2]))])
        # The exposed initial states (bottoms after x_static) get no diff: Caffe shares only their data.

    @staticmethod
    def split_rows(g: GraphBuilder, value: str, lay: Layout) -> list[str]:
        """Split a (T*N) x k value into the T steps' N x k values."""
        if lay.t == 1:
            return [value]
        return g.op("Split", [value, g.ints([lay.n] * lay.t)], lay.t, axis=0)

    @staticmethod
    def gemm_steps(g: GraphBuilder, diffs: list[str], values: list[str]) -> str:
        """sum_t diffs[t]^T . values[t]: a shared weight's diff over the steps, as one Gemm."""
        if len(diffs) == 1:
            return g.op1("Gemm", [diffs[0], values[0]], transA=1)
        return g.op1("Gemm", [g.op1("Concat", diffs, axis=0), g.op1("Concat", values, axis=0)], transA=1)
