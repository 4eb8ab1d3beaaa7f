"""InnerProduct: flatten from `axis`, multiply by the (num_output x K) weights, add the bias."""

from __future__ import annotations

import numpy as np

from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register
from caffecompat.net.fillers import fill


@register("InnerProduct")
class InnerProduct(Layer):
    """top = flatten(bottom, axis) . W^T + b; with `transpose` W is stored K x num_output."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def _split(self, node: LayerNode) -> tuple[int, int, int]:
        p = node.param.inner_product_param
        shape = node.bottom_shapes[0]
        if not -len(shape) <= p.axis < len(shape):
            raise node.error(f"inner_product_param.axis {p.axis} is out of range for input {list(shape)}")
        axis = p.axis % len(shape)
        if p.num_output <= 0:
            raise node.error("inner_product_param.num_output must be given and positive")
        # InnerProductLayer: K is the product of the input dims from `axis` on.
        k = int(np.prod(shape[axis:], dtype=np.int64))
        return axis, k, p.num_output

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        axis, _, n = self._split(node)
        return [(*node.bottom_shapes[0][:axis], n)]

    def param_shapes(self, node: LayerNode) -> list[Shape]:
        _, k, n = self._split(node)
        p = node.param.inner_product_param
        w = (k, n) if p.transpose else (n, k)
        return [w, (n,)] if p.bias_term else [w]

    def init_params(self, node: LayerNode, rng: np.random.Generator) -> list[np.ndarray]:
        p = node.param.inner_product_param
        out = [fill(p.weight_filler, node.param_shapes[0], rng, f"layer '{node.name}' weight_filler")]
        if p.bias_term:
            out.append(fill(p.bias_filler, node.param_shapes[1], rng, f"layer '{node.name}' bias_filler"))
        return out

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        p = node.param.inner_product_param
        axis, _, _ = self._split(node)
        x = node.bottoms[0]
        flat = g.op1("Flatten", [x], axis=axis) if len(node.bottom_shapes[0]) != 2 or axis != 1 else x
        g.stash(node, "flat", flat)
        inputs = [flat, g.param(node, 0)] + ([g.param(node, 1)] if p.bias_term else [])
        top_shape = node.top_shapes[0]
        direct = len(top_shape) == 2
        y = g.op1("Gemm", inputs, node.tops[0] if direct else None, transB=0 if p.transpose else 1)
        if not direct:
            g.op1("Reshape", [y, g.ints(top_shape)], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        p = node.param.inner_product_param
        axis, k, n = self._split(node)
        flat = g.stashed(node, "flat")
        dy = d.top[0]
        if len(node.top_shapes[0]) != 2:
            dy = g.op1("Reshape", [dy, g.ints([-1, n])])
        if d.need_param[0]:
            # InnerProductLayer::Backward_cpu: dW = dy^T . x (or x^T . dy when transposed).
            if p.transpose:
                d.param[0] = g.op1("Gemm", [flat, dy], transA=1)
            else:
                d.param[0] = g.op1("Gemm", [dy, flat], transA=1)
        if p.bias_term and d.need_param[1]:
            # The bias diff is the sum of dy over the M rows.
            d.param[1] = g.op1("ReduceSum", [dy, g.ints([0])], keepdims=0)
        if d.need_bottom[0]:
            # dx = dy . W (or dy . W^T when transposed), reshaped to the bottom.
            dx = g.op1("Gemm", [dy, g.param(node, 0)], transB=1 if p.transpose else 0)
            if len(node.bottom_shapes[0]) != 2 or axis != 1:
                dx = g.op1("Reshape", [dx, g.ints(list(node.bottom_shapes[0]))])
            d.bottom[0] = dx
