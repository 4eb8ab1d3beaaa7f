"""Which nets a SolverParameter names, and the NetState each runs in (Solver::InitTrainNet/InitTestNets)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from caffecompat.errors import CaffeCompatError
from caffecompat.formats.net import read_net_prototxt
from caffecompat.proto import caffe_pb2


@dataclass
class NetSource:
    """A net definition, where it came from (for logs and errors), and its NetState."""

    net: caffe_pb2.NetParameter
    source: str
    state: caffe_pb2.NetState


def check_net_files(param: caffe_pb2.SolverParameter, solver_file: str) -> None:
    """Each net file the solver names (net, train_net, test_net) exists, or an error naming the solver and field.

    Caffe opens them relative to the working directory, not to the solver file.
    """
    named = [(f, getattr(param, f)) for f in ("net", "train_net") if param.HasField(f)]
    named += [(f"test_net #{i}", path) for i, path in enumerate(param.test_net)]
    for field, path in named:
        p = Path(path)
        if p.is_file():
            continue
        what = "is a folder, not a net prototxt" if p.is_dir() else "no such net prototxt"
        message = f"{solver_file}: {field}: \"{path}\": {what}"
        beside = Path(solver_file).parent / path
        if not p.is_absolute() and not p.exists() and beside.is_file():
            message += (f" in the working directory {Path.cwd()} (Caffe reads it from there); it exists beside the "
                        f"solver as {beside}: run from {Path(solver_file).parent} or give that path")
        elif not p.is_absolute():
            message += f" (relative paths are read from the working directory {Path.cwd()}, as Caffe does)"
        raise CaffeCompatError(message)


def _merged_state(phase: int, net: caffe_pb2.NetParameter, override: caffe_pb2.NetState | None) -> caffe_pb2.NetState:
    # Solver nets: phase, then the net file's own state, then the solver's train_state/test_state win.
    state = caffe_pb2.NetState(phase=phase)
    state.MergeFrom(net.state)
    if override is not None:
        state.MergeFrom(override)
    return state


def train_net(param: caffe_pb2.SolverParameter, solver_file: str, level: int | None = None,
              stages: Iterable[str] = ()) -> NetSource:
    """The training net: exactly one of net, net_param, train_net, train_net_param."""
    given = [f for f in ("net", "net_param", "train_net", "train_net_param") if param.HasField(f)]
    if not given:
        raise CaffeCompatError(f"{solver_file}: the solver names no net; set `net: \"train_val.prototxt\"` "
                               "(or one of net_param, train_net, train_net_param)")
    if len(given) > 1:
        raise CaffeCompatError(f"{solver_file}: the solver names its training net twice ({', '.join(given)}); "
                               "keep one")
    field = given[0]
    if field.endswith("_param"):
        net = caffe_pb2.NetParameter()
        net.CopyFrom(getattr(param, field))
        source = f"{solver_file} ({field})"
        label = f"Creating training net specified in {field}."
    else:
        path = getattr(param, field)
        net = read_net_prototxt(path)
        source = path
        label = f"Creating training net from {'train_net' if field == 'train_net' else 'net'} file: {path}"
    override = caffe_pb2.NetState()
    override.CopyFrom(param.train_state)
    if level is not None:
        override.level = level
    override.stage.extend(stages)
    from caffecompat import glog

    glog.info("solver.cpp:102", label)
    return NetSource(net, source, _merged_state(caffe_pb2.TRAIN, net, override))


def test_nets(param: caffe_pb2.SolverParameter, solver_file: str) -> list[NetSource]:
    """The test nets: test_net_param, then test_net files, then the generic net once per remaining test_iter."""
    generic = [f for f in ("net", "net_param") if param.HasField(f)]
    if len(generic) > 1:
        raise CaffeCompatError(f"{solver_file}: both net and net_param are given; keep one")
    specific = len(param.test_net_param) + len(param.test_net)
    # Solver::InitTestNets: one test_iter per test net (generic nets take the remaining ones).
    if (generic and len(param.test_iter) < specific) or (not generic and len(param.test_iter) != specific):
        raise CaffeCompatError(f"{solver_file}: test_iter must be given once for each test net "
                               f"({specific} test nets named, {len(param.test_iter)} test_iter)")
    count = len(param.test_iter)
    if param.test_state and len(param.test_state) != count:
        raise CaffeCompatError(f"{solver_file}: test_state must be unspecified or given once per test net "
                               f"({count} test nets, {len(param.test_state)} test_state)")
    if count and param.test_interval <= 0:
        raise CaffeCompatError(f"{solver_file}: test nets need test_interval > 0; set test_interval or "
                               "remove test_iter")
    defs: list[tuple[caffe_pb2.NetParameter, str]] = []
    for p in param.test_net_param:
        defs.append((p, "test_net_param"))
    for path in param.test_net:
        defs.append((read_net_prototxt(path), f"test_net file: {path}"))
    remaining = count - len(defs)
    if generic and remaining > 0:
        if param.HasField("net_param"):
            defs += [(param.net_param, "net_param")] * remaining
        else:
            net = read_net_prototxt(param.net)
            defs += [(net, f"net file: {param.net}")] * remaining
    out = []
    for i, (net, source) in enumerate(defs):
        override = param.test_state[i] if param.test_state else None
        copy = caffe_pb2.NetParameter()
        copy.CopyFrom(net)
        out.append(NetSource(copy, source, _merged_state(caffe_pb2.TEST, copy, override)))
    return out
