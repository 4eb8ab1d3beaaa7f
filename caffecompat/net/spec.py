"""NetSpec: a Caffe net resolved for one phase, ready to lower to ONNX.

From a NetParameter it keeps the layers of the phase/level/stages, inserts
Caffe's Split layers, gives every value a unique (SSA) name, infers every
shape, resolves parameter blobs (with ParamSpec sharing) and loss weights,
and finds the net's outputs.

Value names: the last value written to a Caffe blob is named after the blob;
earlier values of a blob rewritten in place get `<blob>@<writer layer>`.
So a graph input or output named like a Caffe blob holds what Caffe's blob
holds after a forward pass.

Layer names need not be unique, nor given, as in Caffe (HED has five layers
named `crop` and unnamed losses). Parameter tensors are `<layer>#<blob index>`;
a later layer with a name already taken gets `<layer>[<layer index>]#<i>`
instead, and a value that would repeat a name gets `[<layer index>]` too.
Weights copy to the first layer of a name (caffecompat.net.weights).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from caffecompat import gcpause
from caffecompat.errors import CaffeCompatError, NotSupportedError
from caffecompat.layers import registry
from caffecompat.layers.registry import LayerNode, Shape
from caffecompat.net.splits import insert_splits
from caffecompat.net.state import filter_layers, make_state
from caffecompat.proto import caffe_pb2

SourceShapes = Callable[[caffe_pb2.LayerParameter], list[Shape]]


@dataclass
class ParamInfo:
    """One parameter tensor: its owner blob, shape and learning settings (Caffe's learnable param)."""

    name: str
    layer: str
    index: int
    shape: Shape
    lr_mult: float
    decay_mult: float
    owner: int = -1  # index in NetSpec.layers of the layer that owns the blob (others share it)


@dataclass
class NetSpec:
    """The resolved net (see the module docstring)."""

    name: str
    phase: int
    layers: list[LayerNode]
    inputs: list[str]  # values fed from outside: tops of source layers, in layer order
    outputs: list[str]  # Caffe's net outputs: unconsumed blobs, sorted by name as Caffe's std::set
    shapes: dict[str, Shape]  # value name -> shape
    params: dict[str, ParamInfo] = field(default_factory=dict)  # tensor name -> info, in Caffe's order
    blob_values: dict[str, str] = field(default_factory=dict)  # Caffe blob name -> final value name
    force_backward: bool = False  # NetParameter.force_backward: every layer runs Backward

    def layer(self, name: str) -> LayerNode:
        """The first layer called `name`."""
        for node in self.layers:
            if node.name == name:
                return node
        raise KeyError(name)

    def source_layers(self) -> list[LayerNode]:
        """Layers whose tops are fed from outside (data layers, Input)."""
        return [n for n in self.layers if registry.get(n).source]

    def owns(self, node: LayerNode, tensor: str) -> bool:
        """Whether `tensor` is a parameter blob of `node` itself (not one it shares with an earlier layer)."""
        info = self.params.get(tensor)
        return info is not None and info.owner == node.index

    def loss_tops(self) -> list[tuple[str, float]]:
        """(value name, loss weight) of every top that contributes to the loss."""
        return [(t, w) for n in self.layers for t, w in zip(n.tops, n.loss_weights) if w]


def param_tensor_name(layer: str, index: int) -> str:
    """The tensor name of blob `index` of `layer` (as in a .caffemodel's layer.blobs[index])."""
    return f"{layer}#{index}"


def build(net: caffe_pb2.NetParameter, phase: int, *, level: int | None = None,
          stages: Iterable[str] = (), source_shapes: SourceShapes | None = None,
          source: str = "net", state: caffe_pb2.NetState | None = None) -> NetSpec:
    """Resolve `net` for `phase`. `source_shapes` gives the top shapes of data layers.

    `state`, when given, is the complete NetState (as the solver merges it);
    otherwise it is the net's own state with `phase`, `level` and `stages` set.
    `source` names the file in error messages.
    """
    with gcpause.paused():
        return _build(net, phase, level, stages, source_shapes, source, state)


def _build(net: caffe_pb2.NetParameter, phase: int, level: int | None, stages: Iterable[str],
           source_shapes: SourceShapes | None, source: str, state: caffe_pb2.NetState | None) -> NetSpec:
    state = state if state is not None else make_state(net, phase, level, stages)
    phase = state.phase
    layers = insert_splits(filter_layers(net, state, source), source)
    check_layer_types(layers, source)
    nodes: list[LayerNode] = []
    shapes: dict[str, Shape] = {}
    current: dict[str, str] = {}  # blob -> current value name
    writes: dict[str, int] = {}  # blob -> how many layers write it
    for lp in layers:
        for t in lp.top:
            writes[t] = writes.get(t, 0) + 1
    seen_writes: dict[str, int] = {}
    layer_names: set[str] = set()
    param_owners: set[str] = set()  # the `<layer>` parts of parameter tensor names given so far
    values: set[str] = set()
    inputs: list[str] = []
    consumed: set[str] = set()
    automatic_values: dict[str, str] = {}  # Net::Init lists an "(automatic)" top among its blobs, not outputs
    params: dict[str, ParamInfo] = {}
    shared: dict[str, tuple[str, Shape]] = {}  # ParamSpec name -> (tensor name, shape)

    for index, lp in enumerate(layers):
        if not lp.type:
            raise CaffeCompatError(f"{source}: layer '{lp.name}' has no type")
        # Net::Init checks no layer name: duplicates and "" are allowed; only our tensor names must differ.
        owner = lp.name
        if lp.name in layer_names or owner in param_owners:
            owner = f"{lp.name}[{index}]"
            while owner in param_owners:
                owner += "'"
        layer_names.add(lp.name)
        param_owners.add(owner)
        impl = registry.get(lp)
        node = LayerNode(param=lp, index=index, phase=phase, bottom_blobs=list(lp.bottom),
                         top_blobs=list(lp.top))
        # Net::Init's AutoTopBlobs: a loss layer given no top gets one anonymous top, "(automatic)", that no
        # later layer can read and that is no net output (its loss still counts).
        automatic = impl.loss and not lp.top and bool(impl.min_tops)
        if automatic:
            node.top_blobs = ["(automatic)"]
        impl.check_counts(node)
        for j, b in enumerate(lp.bottom):
            if b not in current:
                raise node.error(f"bottom '{b}' (bottom #{j}) is not produced by any earlier layer")
            node.bottoms.append(current[b])
            node.bottom_shapes.append(shapes[current[b]])
            consumed.add(current[b])
        for j, t in enumerate(lp.top):
            in_place = j < len(lp.bottom) and lp.bottom[j] == t
            if t in current and not in_place:
                raise node.error(f"top '{t}' is already produced by an earlier layer and this layer is "
                                 f"not in place (top #{j} must equal bottom #{j}); rename the top")
            seen_writes[t] = seen_writes.get(t, 0) + 1
            value = t if seen_writes[t] == writes[t] else f"{t}@{lp.name}"
            if value in values or value in writes and value != t:
                value = f"{t}@{lp.name}[{index}]"
            values.add(value)
            node.tops.append(value)
        if automatic:
            value = f"(automatic)@{lp.name}[{index}]"
            values.add(value)
            node.tops.append(value)
            automatic_values["(automatic)"] = value
        if len(set(lp.top)) != len(lp.top):
            raise node.error("lists the same top twice")

        if impl.source:
            if source_shapes is None and lp.type != "Input":
                raise node.error("is a data layer, but no data source was given for this net")
            node.top_shapes = impl.top_shapes(node) if lp.type == "Input" else source_shapes(lp)
            inputs.extend(node.tops)
        else:
            node.top_shapes = impl.top_shapes(node)
        if len(node.top_shapes) != len(node.tops):
            raise node.error(f"computes {len(node.top_shapes)} top shapes for {len(node.tops)} tops")
        for value, shape in zip(node.tops, node.top_shapes):
            if any(d < 0 for d in shape):
                raise node.error(f"top '{value}' would have a negative size {list(shape)}; check the "
                                 "layer's kernel, pad, stride and crop settings against its input")
            shapes[value] = tuple(int(d) for d in shape)
        for t, value in zip(lp.top, node.tops):
            current[t] = value

        _resolve_params(node, impl, params, shared, prefix=owner)
        _resolve_loss_weights(node, impl)
        nodes.append(node)

    # Net outputs: Caffe's available_blobs set (tops no later layer reads), in name order.
    outputs = [current[b] for b in sorted(current) if current[b] not in consumed]
    return NetSpec(name=net.name, phase=phase, layers=nodes, inputs=inputs, outputs=outputs,
                   shapes=shapes, params=params, blob_values={**automatic_values, **current},
                   force_backward=net.force_backward)


def check_layer_types(layers: Iterable[caffe_pb2.LayerParameter], source: str) -> None:
    """Every layer has a type caffecompat runs, else an error naming `source` and the layer.

    Done for the whole net before any layer is set up, so a misspelt type is
    reported before a data layer opens its database.
    """
    for lp in layers:
        if not lp.type:
            raise CaffeCompatError(f"{source}: layer '{lp.name}' has no type")
        try:
            registry.get(lp)
        except NotSupportedError as e:
            raise NotSupportedError(f"{str(e).removeprefix('not supported: ')} ({source})") from None
        except CaffeCompatError as e:
            raise CaffeCompatError(f"{source}: {e}") from None


def check_net_types(net: caffe_pb2.NetParameter, state: caffe_pb2.NetState, source: str) -> None:
    """`check_layer_types` for the layers of `net` that `state` keeps."""
    check_layer_types(filter_layers(net, state, source), source)


def _resolve_params(node: LayerNode, impl: registry.Layer, params: dict[str, ParamInfo],
                    shared: dict[str, tuple[str, Shape]], prefix: str) -> None:
    node.param_shapes = [tuple(int(d) for d in s) for s in impl.param_shapes(node)]
    specs = node.param.param
    if len(specs) > len(node.param_shapes):
        raise node.error(f"has {len(specs)} `param` specs but only {len(node.param_shapes)} parameter "
                         "blobs; remove the extra `param { }` entries")
    for i, shape in enumerate(node.param_shapes):
        spec = specs[i] if i < len(specs) else caffe_pb2.ParamSpec()
        own = param_tensor_name(prefix, i)
        if spec.name and spec.name in shared:
            # Net::AppendParam: a named ParamSpec seen before shares the owner's blob.
            owner, owner_shape = shared[spec.name]
            strict = spec.share_mode != caffe_pb2.ParamSpec.PERMISSIVE
            same = shape == owner_shape if strict else _count(shape) == _count(owner_shape)
            if not same:
                raise node.error(f"shares parameter '{spec.name}' with shape {list(owner_shape)} but its "
                                 f"blob #{i} has shape {list(shape)}")
            node.param_names.append(owner)
            continue
        if spec.name:
            shared[spec.name] = (own, shape)
        node.param_names.append(own)
        lr_mult = spec.lr_mult
        if impl.statistics_params:
            # BatchNormLayer::LayerSetUp masks its statistics from the solver: lr_mult 0, or an error.
            if i < len(specs) and spec.HasField("lr_mult") and spec.lr_mult != 0:
                raise node.error(f"param #{i} is a running statistic and cannot be learned; set lr_mult: 0 "
                                 "or remove its `param { }`")
            lr_mult = 0.0
        decay_mult = spec.decay_mult
        if i in impl.forced_zero_lr(node):
            lr_mult = decay_mult = 0.0
        params[own] = ParamInfo(own, node.name, i, shape, lr_mult, decay_mult, node.index)


def _resolve_loss_weights(node: LayerNode, impl: registry.Layer) -> None:
    weights = list(node.param.loss_weight)
    if weights and len(weights) != len(node.tops):
        raise node.error(f"has {len(weights)} loss_weight values for {len(node.tops)} tops; give one per top")
    if not weights:
        # LossLayer::LayerSetUp: a loss layer's first top weighs 1 by default.
        weights = [1.0 if (impl.loss and j == 0) else 0.0 for j in range(len(node.tops))]
    node.loss_weights = [float(w) for w in weights]


def _count(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
