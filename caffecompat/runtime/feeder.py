"""A net together with its data: NetSpec built with data-layer shapes, and batches for its inputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np

from caffecompat.layers.labels import LabelRule, check_labels, label_rules
from caffecompat.layers.registry import LayerNode
from caffecompat.net import setup_log
from caffecompat.net import spec as netspec
from caffecompat.net.memory import check_net_memory
from caffecompat.net.spec import NetSpec
from caffecompat.proto import caffe_pb2
from caffecompat.runtime.python_layers import PythonLayers, has_python_layers


def source_key(layer: caffe_pb2.LayerParameter) -> tuple[str, ...]:
    """What tells a net's data layers apart: their tops. Caffe lets two layers share a name (LRCN's ImageData
    and HDF5Data are both "data"), but never lets two layers produce one top (Net::AppendTop)."""
    return tuple(layer.top)


@dataclass
class Feeder:
    """The batches for a NetSpec's graph inputs, one call per forward pass."""

    spec: NetSpec
    sources: dict[tuple[str, ...], object] = field(default_factory=dict)  # source_key(layer) -> DataSource
    python: PythonLayers | None = None  # the net's Python layers (they and the runtime share its blobs)
    net: caffe_pb2.NetParameter | None = None  # what `rebuild` resolves again
    state: caffe_pb2.NetState | None = None
    source: str = "net"
    _rules: list[LabelRule] = field(default_factory=list, repr=False)
    _rules_of: NetSpec | None = field(default=None, repr=False)  # the spec _rules were made for

    def next_inputs(self) -> dict[str, np.ndarray]:
        """One batch for every graph input. Input layers (no data source) get zeros, what their blobs hold
        when nothing writes them (`caffecompat train`/`test`); runtime.segments, which pycaffe's nets and
        solvers run on, ignores those and leaves the blobs as the script wrote them."""
        feed: dict[str, np.ndarray] = {}
        fed_by: dict[str, object] = {}
        for node in self.spec.source_layers():
            source = self.source_of(node)
            if source is None:
                for value, shape in zip(node.tops, node.top_shapes):
                    feed[value] = np.zeros(shape, np.float32)
                continue
            for value, array in zip(node.tops, source.next_batch()):
                feed[value] = array
                fed_by[value] = source
        self._check_labels(feed, fed_by)
        return feed

    def _check_labels(self, feed: dict[str, np.ndarray], fed_by: dict[str, object]) -> None:
        if self._rules_of is not self.spec:
            self._rules, self._rules_of = label_rules(self.spec), self.spec

        def origin(rule: LabelRule, i: int) -> str:
            source = fed_by.get(rule.value)
            record_of = getattr(source, "record_of", None)
            return record_of(feed[rule.value], i) if record_of is not None else ""

        check_labels(self._rules, lambda rule: feed.get(rule.value), origin)

    def source_of(self, node: LayerNode) -> object | None:
        """The data source feeding the data layer `node` (None: an Input layer, or a layer with no source)."""
        return self.sources.get(source_key(node.param))

    def rebuild(self, input_shapes: Mapping[str, tuple[int, ...]] | None = None,
                call_reshape: bool = False) -> NetSpec:
        """Resolve the net again after a shape changed: Input tops get `input_shapes`, data layers keep
        their sources' shapes, Python layers report their tops' shapes (with call_reshape, after their
        reshape(): Net::Reshape)."""
        net = self.net
        if input_shapes:
            net = caffe_pb2.NetParameter()
            net.CopyFrom(self.net)
            for lp in net.layer:
                if lp.type == "Input" and lp.top and all(t in input_shapes for t in lp.top):
                    del lp.input_param.shape[:]
                    for t in lp.top:
                        lp.input_param.shape.add().dim.extend(input_shapes[t])

        def shapes(layer: caffe_pb2.LayerParameter) -> list[tuple[int, ...]]:
            return self.sources[source_key(layer)].top_shapes()

        with self.python.active(call_reshape) if self.python else nullcontext():
            self.spec = netspec.build(net, self.state.phase, state=self.state, source_shapes=shapes,
                                      source=self.source)
        return self.spec

    def close(self) -> None:
        """Stop the data sources' prefetch threads."""
        for source in self.sources.values():
            source.close()
        self.sources.clear()


def build_with_data(net: caffe_pb2.NetParameter, state: caffe_pb2.NetState, rng: np.random.Generator,
                    source: str = "net", make: Callable | None = None) -> Feeder:
    """Resolve `net` in `state`, opening a data source for each data layer to learn its shapes.

    `make(layer, phase, rng)` makes the sources (default caffecompat.data.make_source). Python layers are
    imported and set up here (caffecompat.runtime.python_layers).
    """
    from caffecompat.data import make_source

    make = make or make_source
    sources: dict[tuple[str, ...], object] = {}
    python = PythonLayers(state.phase, {}) if has_python_layers(net) else None

    def shapes(layer: caffe_pb2.LayerParameter) -> list[tuple[int, ...]]:
        src = make(layer, state.phase, rng)
        sources[source_key(layer)] = src
        return src.top_shapes()

    try:
        # Net::Init's log: the rules and the net, then (after the data layers opened) each layer's set-up.
        setup_log.log_net_init(net, state, source)
        with python.active() if python else nullcontext():
            spec = netspec.build(net, state.phase, state=state, source_shapes=shapes, source=source)
        setup_log.log_net_setup(spec)
        check_net_memory(spec, source, log=False)
    except BaseException:
        for src in sources.values():
            src.close()
        raise
    return Feeder(spec, sources, python, net, state, source)
