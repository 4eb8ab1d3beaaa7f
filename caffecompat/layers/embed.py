"""Embed: a lookup table; each bottom value is a row index into the input_dim x num_output weights."""

from __future__ import annotations

import numpy as np

from caffecompat.errors import NotSupportedError
from caffecompat.layers.graph import INT64, GraphBuilder
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register
from caffecompat.net.fillers import fill


@register("Embed")
class Embed(Layer):
    """top[..., :] = W[int(bottom[...]), :] (+ b); top shape is the bottom shape plus num_output."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def _dims(self, node: LayerNode) -> tuple[int, int]:
        p = node.param.embed_param
        # EmbedLayer::LayerSetUp: num_output and input_dim must be positive.
        if p.num_output <= 0:
            raise node.error("embed_param.num_output must be given and positive")
        if p.input_dim <= 0:
            raise node.error("embed_param.input_dim must be given and positive")
        return p.input_dim, p.num_output

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        _, n = self._dims(node)
        return [(*node.bottom_shapes[0], n)]

    def param_shapes(self, node: LayerNode) -> list[Shape]:
        k, n = self._dims(node)
        # The weights are input_dim x num_output (InnerProduct's layout transposed).
        return [(k, n), (n,)] if node.param.embed_param.bias_term else [(k, n)]

    def init_params(self, node: LayerNode, rng: np.random.Generator) -> list[np.ndarray]:
        p = node.param.embed_param
        out = [fill(p.weight_filler, node.param_shapes[0], rng, f"layer '{node.name}' weight_filler")]
        if p.bias_term:
            out.append(fill(p.bias_filler, node.param_shapes[1], rng, f"layer '{node.name}' bias_filler"))
        return out

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        k, _ = self._dims(node)
        # EmbedLayer::Forward: the index is the value cast to int (truncation toward zero).
        index = g.op1("Cast", [node.bottoms[0]], to=INT64)
        # Caffe requires 0 <= index < input_dim. ONNX Gather would wrap negative indices, so send them
        # to input_dim instead: Gather then fails with an out-of-bounds error, as it does for >= input_dim.
        negative = g.op1("Less", [index, g.const(np.int64(0), np.int64)])
        index = g.op1("Where", [negative, g.const(np.int64(k), np.int64), index])
        g.stash(node, "index", index)
        bias = node.param.embed_param.bias_term
        rows = g.op1("Gather", [g.param(node, 0), index], None if bias else node.tops[0], axis=0)
        if bias:
            g.op1("Add", [rows, g.param(node, 1)], node.tops[0])

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        if d.need_bottom[0]:
            # EmbedLayer::Backward_cpu aborts: "Can't backpropagate to EmbedLayer input."
            raise node.error("Caffe can't backpropagate to an Embed layer's input: the net must not set "
                             "force_backward, and a bottom computed by layers that need backward needs "
                             "propagate_down: false")
        if not any(d.need_param):
            return
        if g.opset < 16:
            raise NotSupportedError(f"backward of layer {node.label} of type Embed before opset 16 "
                                    "(ScatterND with reduction): export with opset >= 16")
        k, n = self._dims(node)
        dy = g.op1("Reshape", [d.top[0], g.ints([-1, n])])
        if d.need_param[0]:
            # The weight diff: each top row added into the row of its index, in order.
            index = g.op1("Reshape", [g.stashed(node, "index"), g.ints([-1, 1])])
            d.param[0] = g.op1("ScatterND", [g.zeros((k, n)), index, dy], reduction="add")
        if node.param.embed_param.bias_term and d.need_param[1]:
            # The bias diff: the top diff summed over every index.
            d.param[1] = g.op1("ReduceSum", [dy, g.ints([0])], keepdims=0)
