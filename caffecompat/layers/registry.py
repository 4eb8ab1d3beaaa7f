"""The one registry of Caffe layer types: type name -> shapes, parameter blobs, fillers, Forward and Backward.

Each supported type is a subclass of `Layer` decorated with `@register("Type")`,
living in the module named after it (relu.py, softmax_loss.py, batch_norm.py, ...;
Caffe's <name>_layer.cpp) or of its family (conv.py, pooling.py, ...).
Everything caffecompat knows about a layer type is in that one class: its
`lower` emits the ONNX ops of Caffe's Forward, its `backward` those of Caffe's
Backward (bottom diffs and parameter diffs from top diffs), side by side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from caffecompat.errors import CaffeCompatError, NotSupportedError
from caffecompat.proto import caffe_pb2

if TYPE_CHECKING:
    from caffecompat.layers.graph import GraphBuilder

Shape = tuple[int, ...]


@dataclass
class LayerNode:
    """One layer of a resolved net: its parameter message plus everything NetSpec derived for it."""

    param: caffe_pb2.LayerParameter
    index: int
    phase: int
    bottom_blobs: list[str]
    top_blobs: list[str]
    bottoms: list[str] = field(default_factory=list)  # ONNX value names of the bottoms
    tops: list[str] = field(default_factory=list)  # ONNX value names of the tops
    bottom_shapes: list[Shape] = field(default_factory=list)
    top_shapes: list[Shape] = field(default_factory=list)
    param_names: list[str] = field(default_factory=list)  # tensor name of each parameter blob
    param_shapes: list[Shape] = field(default_factory=list)
    loss_weights: list[float] = field(default_factory=list)  # one per top
    runtime: object | None = None  # per-net state of a type that runs outside ONNX (a Python layer's host)

    @property
    def label(self) -> str:
        """The layer's name for messages and ONNX node names (Caffe allows an empty name)."""
        return self.param.name or f"(unnamed #{self.index})"

    @property
    def name(self) -> str:
        return self.param.name

    @property
    def type(self) -> str:
        return self.param.type

    def error(self, message: str) -> CaffeCompatError:
        """A CaffeCompatError naming this layer."""
        return CaffeCompatError(f"layer '{self.name}' ({self.type}): {message}")


@dataclass
class Diffs:
    """What a layer's Backward reads and writes, as ONNX value names (Caffe's top/bottom/param diffs).

    `top` holds the diff of every top (a zeros tensor where nothing downstream
    reads the top). `backward` fills `bottom[j]` for each j with `need_bottom[j]`
    (Caffe's propagate_down) and `param[i]` for each i with `need_param[i]`
    (Caffe's param_propagate_down); entries it leaves None are zero in Caffe.
    A parameter diff is this layer's contribution only: Caffe accumulates
    diffs of shared parameters, and the net composer sums them.
    """

    top: list[str]
    need_bottom: list[bool]
    need_param: list[bool]
    bottom: list[str | None] = field(default_factory=list)
    param: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bottom = self.bottom or [None] * len(self.need_bottom)
        self.param = self.param or [None] * len(self.need_param)


class Layer:
    """Base of every layer type. Subclasses override what their type needs."""

    type_name: ClassVar[str] = ""
    # Tops come from outside the graph (data layers, Input): they become graph inputs.
    source: ClassVar[bool] = False
    # Caffe's LossLayer: top 0 gets loss_weight 1 unless the prototxt says otherwise.
    loss: ClassVar[bool] = False
    # Caffe's ExactNum/MinNum/MaxNum Bottom/Top blob checks (None: no limit).
    min_bottoms: ClassVar[int | None] = None
    max_bottoms: ClassVar[int | None] = None
    min_tops: ClassVar[int | None] = None
    max_tops: ClassVar[int | None] = None
    # Parameter blobs are running statistics, never learned (BatchNorm forces their lr_mult to 0).
    statistics_params: ClassVar[bool] = False
    # Caffe's EqualNumBottomTopBlobs (ReLU-like layers that map each bottom to one top).
    equal_bottoms_tops: ClassVar[bool] = False
    # False for the types whose Backward Caffe leaves unimplemented (Accuracy, ArgMax, Threshold,
    # data layers): asking them for a bottom diff is an error, as in Caffe.
    has_backward: ClassVar[bool] = True
    # Axes of the tops whose size depends on the data (DetectionOutput's detections): `top_shapes` gives the
    # size the fork's Reshape sets up (a placeholder) and the ONNX graph declares these axes symbolic.
    data_dependent_axes: ClassVar[tuple[int, ...]] = ()

    def check_counts(self, node: LayerNode) -> None:
        """Caffe's bottom/top count checks, as errors naming the layer."""
        nb, nt = len(node.bottom_blobs), len(node.top_blobs)
        for what, n, lo, hi in (("bottom", nb, self.min_bottoms, self.max_bottoms),
                                ("top", nt, self.min_tops, self.max_tops)):
            if lo is not None and lo == hi and n != lo:
                raise node.error(f"takes exactly {lo} {what} blob(s), got {n}")
            if lo is not None and n < lo:
                raise node.error(f"takes at least {lo} {what} blob(s), got {n}")
            if hi is not None and n > hi:
                raise node.error(f"takes at most {hi} {what} blob(s), got {n}")
        if self.equal_bottoms_tops and nb != nt:
            raise node.error(f"needs as many tops as bottoms, got {nb} bottoms and {nt} tops")

    def top_shapes(self, node: LayerNode) -> list[Shape]:
        """Shapes of the tops, from node.bottom_shapes and the layer's parameters."""
        raise NotImplementedError(f"{type(self).__name__}.top_shapes")

    def forced_zero_lr(self, node: LayerNode) -> set[int]:
        """Parameter blobs whose lr_mult and decay_mult the layer's LayerSetUp sets to 0, whatever the prototxt
        says (the fork BN's statistics)."""
        return set()

    def param_shapes(self, node: LayerNode) -> list[Shape]:
        """Shapes of the layer's parameter blobs (weights, biases, statistics), in Caffe's order."""
        return []

    def init_params(self, node: LayerNode, rng: np.random.Generator) -> list[np.ndarray]:
        """Initial values of the parameter blobs (the fillers Caffe would run)."""
        if node.param_shapes:
            raise NotImplementedError(f"{type(self).__name__}.init_params")
        return []

    def lower(self, node: LayerNode, g: GraphBuilder) -> None:
        """Forward: emit ONNX nodes computing node.tops from node.bottoms and the parameter tensors."""
        raise NotImplementedError(f"{type(self).__name__}.lower")

    def allow_force_backward(self, node: LayerNode, bottom_index: int) -> bool:
        """Layer::AllowForceBackward: whether force_backward may ask for this bottom's diff."""
        # LossLayer::AllowForceBackward: a loss never propagates to its labels (bottom 1).
        return not (self.loss and bottom_index == 1)

    def backward(self, node: LayerNode, g: GraphBuilder, d: Diffs) -> None:
        """Backward: emit ONNX nodes filling d.bottom / d.param from d.top, as Caffe's Backward_cpu.

        The forward values (node.bottoms, node.tops, anything `lower` stashed with
        g.stash) are in the same graph and may be read.
        """
        raise NotSupportedError(f"backward of layer {node.label} of type {node.type}")


_REGISTRY: dict[str, Layer] = {}


def register(type_name: str) -> Callable[[type[Layer]], type[Layer]]:
    """Class decorator: make `cls` the implementation of Caffe layer type `type_name`."""

    def deco(cls: type[Layer]) -> type[Layer]:
        if type_name in _REGISTRY:
            raise RuntimeError(f"layer type {type_name} registered twice")
        cls.type_name = type_name
        _REGISTRY[type_name] = cls()
        return cls

    return deco


def get(node_or_param: LayerNode | caffe_pb2.LayerParameter) -> Layer:
    """The implementation of a layer's type; a Caffe type we lack is `not supported: layer <name> of type <T>`,
    any other type an error naming the closest known types."""
    _load_all()
    param = node_or_param.param if isinstance(node_or_param, LayerNode) else node_or_param
    impl = _REGISTRY.get(param.type)
    if impl is None:
        from caffecompat.layers.caffe_types import unknown_type_error

        raise unknown_type_error(param.name, param.type, _REGISTRY)
    return impl


def supported_types() -> list[str]:
    """Every registered layer type name, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def _load_all() -> None:
    # Importing the family modules runs their @register decorators.
    from caffecompat.layers import families  # noqa: F401
