"""GraphBuilder: what a layer's `lower` and `backward` use to emit ONNX nodes, constants and parameter references.

Parameter blobs are referenced by tensor name (`g.param(node, i)`); whether
they end up as initializers (convert, training) or as graph inputs fed at
run time (TEST nets sharing the solver's weights) is the exporter's choice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

from caffecompat.layers.registry import LayerNode


@dataclass
class FedInput:
    """A graph input the runtime draws before every pass (e.g. a Dropout mask from the solver's generator)."""

    shape: tuple[int, ...]
    dtype: Any
    draw: Callable[[np.random.Generator], np.ndarray]
    # A state carried between passes: the runtime feeds this output of the previous forward instead of `draw`
    # (a recurrent layer's h_T becoming the next pass's h_0).
    carry: str | None = None


class GraphBuilder:
    """Collects ONNX nodes and constant initializers for one net."""

    def __init__(self, opset: int, training: bool, carry_state: bool = False) -> None:
        self.opset = opset
        # True when the runtime keeps state between passes (fed inputs with `carry`); convert's models are pure.
        self.carry_state = carry_state
        # True when lowering the TRAIN-phase graph for gradient training
        # (Dropout active, BatchNorm on batch statistics).
        self.training = training
        self.nodes: list[NodeProto] = []
        self.constants: list[TensorProto] = []
        self.used_params: set[str] = set()
        # Extra graph outputs a lowering asks for, e.g. BatchNorm batch statistics
        # the solver needs: value name -> (layer name, what).
        self.side_outputs: dict[str, tuple[int, str]] = {}
        # Graph inputs drawn by the runtime before each pass: value name -> how to draw it.
        self.fed_inputs: dict[str, FedInput] = {}
        # Forward values a layer's backward reads (MaxPool indices, softmax probabilities, ...).
        self._stash: dict[tuple[int, str], str] = {}
        self._names: set[str] = set()
        self._counter = 0
        self._layer = ""

    # -- naming -------------------------------------------------------------
    def begin_layer(self, node: LayerNode, backward: bool = False) -> None:
        """Name the temporaries and nodes that follow after `node` (`<layer>/backward` for its Backward)."""
        self._layer = node.label + ("/backward" if backward else "")

    def reserve(self, names: list[str]) -> None:
        """Mark value names (graph inputs, blob values) as taken."""
        self._names.update(names)

    def tmp(self, hint: str = "t") -> str:
        """A fresh value name for an intermediate result of the current layer."""
        while True:
            self._counter += 1
            name = f"{self._layer}/{hint}#{self._counter}"
            if name not in self._names:
                self._names.add(name)
                return name

    def subgraph(self) -> GraphBuilder:
        """A builder for a control-flow body (Loop, If): fresh nodes, this graph's names and constants."""
        body = GraphBuilder(self.opset, self.training)
        body._names = self._names
        body.constants = self.constants  # outer-scope initializers, which a body may read
        body._layer = self._layer
        body._counter = self._counter + 100000  # its node names stay apart from the outer graph's
        return body

    # -- emitting -----------------------------------------------------------
    def op(self, op_type: str, inputs: list[str], outputs: list[str] | int = 1, **attrs: Any) -> list[str]:
        """Add one ONNX node; `outputs` is a list of names or a count of fresh names. Returns the outputs."""
        outs = [self.tmp(op_type.lower()) for _ in range(outputs)] if isinstance(outputs, int) else outputs
        self._counter += 1
        self.nodes.append(
            helper.make_node(op_type, inputs, outs, name=f"{self._layer}/{op_type}#{self._counter}",
                             **{k: v for k, v in attrs.items() if v is not None})
        )
        return outs

    def op1(self, op_type: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        """Add a single-output node and return its output name."""
        return self.op(op_type, inputs, [output] if output else 1, **attrs)[0]

    def const(self, value: np.ndarray | float | list, dtype: Any = np.float32, hint: str = "const") -> str:
        """A constant tensor (an initializer that is not a parameter)."""
        name = self.tmp(hint)
        self.constants.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(self, values: list[int] | tuple[int, ...], hint: str = "ints") -> str:
        """A 1-D int64 constant (shapes, axes, slice bounds)."""
        return self.const(np.asarray(list(values), dtype=np.int64), np.int64, hint)

    def scalar(self, value: float, hint: str = "scalar") -> str:
        """A float32 scalar constant."""
        return self.const(np.float32(value), np.float32, hint)

    def param(self, node: LayerNode, index: int) -> str:
        """The tensor name of parameter blob `index` of `node` (shared blobs resolve to their owner)."""
        name = node.param_names[index]
        self.used_params.add(name)
        return name

    def side_output(self, value: str, node: LayerNode, what: str) -> None:
        """Expose `value` as an extra graph output tagged (layer index, what), e.g. BatchNorm's batch mean."""
        self.side_outputs[value] = (node.index, what)

    def identity(self, src: str, dst: str) -> str:
        """dst = src."""
        return self.op1("Identity", [src], dst)

    def zeros(self, shape: tuple[int, ...] | list[int], hint: str = "zeros") -> str:
        """A float32 tensor of zeros of a static shape (made at run time, not stored in the model)."""
        value = helper.make_tensor("value", FLOAT, [1], [0.0])
        return self.op1("ConstantOfShape", [self.ints(list(shape), hint + "_shape")], value=value)

    def stash(self, node: LayerNode, key: str, value: str) -> None:
        """Keep a forward value of `node` for its backward (e.g. `indices` of a MaxPool)."""
        self._stash[(node.index, key)] = value

    def stashed(self, node: LayerNode, key: str) -> str | None:
        """A value `node`'s forward stashed under `key`, or None."""
        return self._stash.get((node.index, key))

    def fed_input(self, node: LayerNode, hint: str, shape: tuple[int, ...], dtype: Any,
                  draw: Callable[[np.random.Generator], np.ndarray]) -> str:
        """A graph input drawn by the runtime before every pass with `draw(rng)` (e.g. a Dropout mask)."""
        name = f"{node.label}/{hint}"
        self.reserve([name])
        self.fed_inputs[name] = FedInput(tuple(int(d) for d in shape), dtype, draw)
        return name


    def carried_input(self, node: LayerNode, hint: str, shape: tuple[int, ...]) -> str:
        """A float32 state input the runtime feeds from the previous pass (zeros at first); `set_carry`
        names the value that becomes the next pass's."""
        return self.fed_input(node, hint, shape, np.float32, lambda rng: np.zeros(shape, np.float32))

    def set_carry(self, name: str, value: str) -> None:
        """Make `value` (computed this pass) the next pass's value of carried input `name`."""
        self.fed_inputs[name].carry = value


FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
