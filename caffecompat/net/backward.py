"""Net::Backward as ONNX: which layers need a backward (Net::Init's rules), and the diffs they compose.

After the forward lowering, `lower_backward` walks the layers in reverse and
asks each registry entry that needs a backward for its bottom and parameter
diffs, exactly as Net::BackwardFromTo calls Layer::Backward. Every value has
at most one consumer (Caffe's splits are inserted), so a value's diff is the
bottom diff its consumer wrote; a loss top's diff is its loss weight; a
Split's bottom diff is the sum of its tops' diffs (SplitLayer::Backward);
diffs of a parameter shared by ParamSpec name add up, as Caffe accumulates
them into the owner's diff.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from caffecompat.layers import registry
from caffecompat.layers.graph import GraphBuilder
from caffecompat.layers.registry import Diffs
from caffecompat.net.spec import NetSpec


@dataclass
class BackwardPlan:
    """Net::Init's backward decisions, per layer (indexes of spec.layers)."""

    layer_need: list[bool]
    bottom_need: list[list[bool]]
    param_need: list[list[bool]]  # Layer::param_propagate_down per parameter blob

    def layers(self) -> list[int]:
        """Indexes of the layers whose Backward runs."""
        return [i for i, need in enumerate(self.layer_need) if need]


@dataclass
class BackwardGraph:
    """What lower_backward emitted: diff values of learnable parameters and of Caffe blobs."""

    param_diffs: dict[str, str] = field(default_factory=dict)  # parameter tensor -> diff value
    blob_diffs: dict[str, str] = field(default_factory=dict)  # Caffe blob name -> diff value
    value_diffs: dict[str, str] = field(default_factory=dict)  # value -> the diff its consumer's Backward wrote
    param_parts: dict[tuple[int, int], str] = field(default_factory=dict)  # (layer, blob) -> that layer's diff


def _own_lr_mult(node: registry.LayerNode, i: int) -> float:
    # Net::Init reads the layer's own ParamSpec (default lr_mult 1), not the sharing owner's.
    specs = node.param.param
    return specs[i].lr_mult if i < len(specs) else 1.0


def plan(spec: NetSpec, force_backward: bool | None = None) -> BackwardPlan:
    """Net::Init's need_backward, bottom_need_backward and param_propagate_down for `spec`."""
    force = spec.force_backward if force_backward is None else force_backward
    blob_need: dict[str, bool] = {}
    layer_need: list[bool] = []
    bottom_need: list[list[bool]] = []
    param_need: list[list[bool]] = []
    for node in spec.layers:
        need = False
        bneed = []
        propagate = list(node.param.propagate_down)
        for j, blob in enumerate(node.bottom_blobs):
            # AppendBottom: a bottom needs backward when its blob does, unless propagate_down says otherwise.
            need |= blob_need.get(blob, False)
            bneed.append(bool(propagate[j]) if propagate else blob_need.get(blob, False))
        pneed = [_own_lr_mult(node, i) != 0 for i in range(len(node.param_names))]
        need |= any(pneed)
        if need:
            for blob in node.top_blobs:
                blob_need[blob] = True
        layer_need.append(need)
        bottom_need.append(bneed)
        param_need.append(pneed)

    # Net::Init walks back from the losses: a layer none of whose tops reaches a loss needs no backward.
    under_loss: set[str] = set()
    skip: set[str] = set()
    for i in range(len(spec.layers) - 1, -1, -1):
        node = spec.layers[i]
        contributes = any(w != 0 or blob in under_loss for blob, w in zip(node.top_blobs, node.loss_weights))
        skip_down = all(blob in skip for blob in node.top_blobs)
        if layer_need[i] and skip_down:
            layer_need[i] = False
            bottom_need[i] = [False] * len(bottom_need[i])
        if not contributes:
            layer_need[i] = False
        for j, blob in enumerate(node.bottom_blobs):
            if contributes:
                under_loss.add(blob)
            else:
                bottom_need[i][j] = False
            if not bottom_need[i][j]:
                skip.add(blob)

    if force:
        # force_backward: every layer runs Backward, for every bottom its type allows.
        for i, node in enumerate(spec.layers):
            impl = registry.get(node)
            layer_need[i] = True
            bottom_need[i] = [b or impl.allow_force_backward(node, j) for j, b in enumerate(bottom_need[i])]
            param_need[i] = [True] * len(param_need[i])
    return BackwardPlan(layer_need, bottom_need, param_need)


def seed_input_name(value: str) -> str:
    """The graph input that carries the given diff of `value` (see lower_backward's `seeds`)."""
    return f"{value}#diff"


def lower_backward(spec: NetSpec, g: GraphBuilder, bplan: BackwardPlan, *, blob_diffs: bool = False,
                   params: list[str] | None = None, seeds: list[str] = ()) -> BackwardGraph:
    """Emit Net::Backward after the forward nodes already in `g`.

    params: the parameter tensors whose diffs to output (default: those with lr_mult != 0).
    blob_diffs: also name the diff of every Caffe blob (what Blob::diff holds after Backward).
    seeds: values whose diff is a graph input (`seed_input_name`), as pycaffe's `backward(**diffs)` sets
        a top blob's diff before Net::Backward; it replaces a loss top's loss-weight seed.
    """
    diff: dict[str, str] = {}  # value -> its diff
    for node in spec.layers:
        for value, weight in zip(node.tops, node.loss_weights):
            if weight and value not in seeds:
                # Layer::SetLossWeights: a loss top's diff is filled with its loss weight.
                g.begin_layer(node, backward=True)
                diff[value] = g.op1("Expand", [g.scalar(weight), g.ints(list(spec.shapes[value]))])
    for value in seeds:
        diff[value] = seed_input_name(value)
        g.reserve([diff[value]])

    out = BackwardGraph()
    contributions: dict[str, list[str]] = {}
    for i in reversed(bplan.layers()):
        node = spec.layers[i]
        impl = registry.get(node)
        g.begin_layer(node, backward=True)
        need_bottom = bplan.bottom_need[i]
        if not impl.has_backward:
            if any(need_bottom):

                raise node.error("Caffe implements no Backward for this layer type, but a bottom needs a diff; "
                                 "set propagate_down: false on it or remove force_backward")
            continue
        tops = [diff[t] if t in diff else g.zeros(spec.shapes[t]) for t in node.tops]
        d = Diffs(top=tops, need_bottom=list(need_bottom), need_param=list(bplan.param_need[i]))
        impl.backward(node, g, d)
        for j, value in enumerate(node.bottoms):
            if d.bottom[j] is not None and need_bottom[j]:
                diff[value] = d.bottom[j]
            elif j < len(node.top_blobs) and node.bottom_blobs[j] == node.top_blobs[j] and node.tops[j] in diff:
                # In place without a bottom diff: Caffe's bottom and top share one diff buffer.
                diff[value] = diff[node.tops[j]]
        for k, name in enumerate(node.param_names):
            if d.param[k] is not None and bplan.param_need[i][k]:
                contributions.setdefault(name, []).append(d.param[k])
                out.param_parts[(i, k)] = d.param[k]

    out.value_diffs = dict(diff)
    wanted = params if params is not None else [p for p, info in spec.params.items() if info.lr_mult != 0]
    g._layer = "param_diffs"
    for name in wanted:
        parts = contributions.get(name)
        if not parts:
            out.param_diffs[name] = g.zeros(spec.params[name].shape)
            continue
        acc = parts[-1]
        # Net::Backward runs from the last layer down, each adding into the shared diff.
        for part in reversed(parts[:-1]):
            acc = g.op1("Add", [acc, part])
        out.param_diffs[name] = acc
    if blob_diffs:
        first_value: dict[str, str] = {}
        for node in spec.layers:
            for blob, value in zip(node.top_blobs, node.tops):
                first_value.setdefault(blob, value)
        for blob, value in first_value.items():
            # In place, Caffe's blob diff ends as the diff of the value the first writer produced.
            out.blob_diffs[blob] = diff.get(value) or g.zeros(spec.shapes[value])
    return out
