"""A net together with its data: NetSpec built with data-layer shapes, and batches for its inputs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from caffecompat.net import spec as netspec
from caffecompat.net.spec import NetSpec
from caffecompat.proto import caffe_pb2


@dataclass
class Feeder:
    """The batches for a NetSpec's graph inputs, one call per forward pass."""

    spec: NetSpec
    sources: dict[str, object] = field(default_factory=dict)  # data layer name -> DataSource

    def next_inputs(self) -> dict[str, np.ndarray]:
        """One batch for every graph input; Input layers (no data source) are fed zeros, as Caffe leaves them."""
        feed: dict[str, np.ndarray] = {}
        for node in self.spec.source_layers():
            source = self.sources.get(node.name)
            if source is None:
                for value, shape in zip(node.tops, node.top_shapes):
                    feed[value] = np.zeros(shape, np.float32)
                continue
            for value, array in zip(node.tops, source.next_batch()):
                feed[value] = array
        return feed

    def close(self) -> None:
        """Stop the data sources' prefetch threads."""
        for source in self.sources.values():
            source.close()
        self.sources.clear()


def build_with_data(net: caffe_pb2.NetParameter, state: caffe_pb2.NetState, rng: np.random.Generator,
                    source: str = "net") -> Feeder:
    """Resolve `net` in `state`, opening a data source for each data layer to learn its shapes."""
    from caffecompat.data import make_source

    sources: dict[str, object] = {}

    def shapes(layer: caffe_pb2.LayerParameter) -> list[tuple[int, ...]]:
        src = make_source(layer, state.phase, rng)
        sources[layer.name] = src
        return src.top_shapes()

    try:
        spec = netspec.build(net, state.phase, state=state, source_shapes=shapes, source=source)
    except BaseException:
        for src in sources.values():
            src.close()
        raise
    return Feeder(spec, sources)
