"""Which layers a net has for a phase, level and stages (Caffe's Net::FilterNet / StateMeetsRule)."""

from __future__ import annotations

from collections.abc import Iterable

from caffecompat.errors import CaffeCompatError
from caffecompat.proto import caffe_pb2


def make_state(net: caffe_pb2.NetParameter, phase: int, level: int | None = None,
               stages: Iterable[str] = ()) -> caffe_pb2.NetState:
    """The NetState a net runs in: the file's own `state`, with phase set and level/stages added."""
    state = caffe_pb2.NetState()
    state.CopyFrom(net.state)
    state.phase = phase
    if level is not None:
        state.level = level
    state.stage.extend(stages)
    return state


def meets_rule(state: caffe_pb2.NetState, rule: caffe_pb2.NetStateRule) -> bool:
    """StateMeetsRule: phase equal, level within [min_level, max_level], all stages, no not_stages."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def filter_layers(net: caffe_pb2.NetParameter, state: caffe_pb2.NetState,
                  source: str = "net") -> list[caffe_pb2.LayerParameter]:
    """FilterNet: a layer with include rules is kept if one is met; else dropped if an exclude is met."""
    kept = []
    for layer in net.layer:
        if layer.include and layer.exclude:
            raise CaffeCompatError(
                f"{source}: layer '{layer.name}' has both include and exclude rules; Caffe allows only "
                "one kind per layer"
            )
        if layer.include:
            keep = any(meets_rule(state, r) for r in layer.include)
        else:
            keep = not any(meets_rule(state, r) for r in layer.exclude)
        if keep:
            kept.append(layer)
    return kept
