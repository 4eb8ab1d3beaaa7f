"""The "Python" layer type: a user's Python class run between ONNX segments (caffecompat.runtime.python_layers).

Its shapes and parameter blobs come from the user's layer itself: the net
being built hands the registry its PythonLayers, which sets the layer up.
It has no ONNX lowering: the segmented runtime calls the layer's forward and
backward in Python, so a net with Python layers cannot become an ONNX file.
"""

from __future__ import annotations

import numpy as np

from caffecompat.errors import NotSupportedError
from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Diffs, Layer, LayerNode, Shape, register


@register("Python")
class Python(Layer):
    """Caffe's PythonLayer: setup/reshape/forward/backward of a class named by python_param."""

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        from caffecompat.runtime.python_layers import host_of

        return host_of(node).top_shapes(node)

    def param_shapes(self, node: LayerNode) -> list[Shape]:
        from caffecompat.runtime.python_layers import host_of

        return [b.shape for b in host_of(node).param_blobs(node)]

    def init_params(self, node: LayerNode, rng: np.random.Generator) -> list[np.ndarray]:
        from caffecompat.runtime.python_layers import host_of, param_arrays

        return param_arrays(host_of(node), node)

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        raise NotSupportedError(f"layer {node.label} of type Python in an ONNX graph: Python layers run in "
                                "caffecompat.Net, the solvers and caffecompat train/test/time, not in an ONNX file")

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        self.lower(node, g)
