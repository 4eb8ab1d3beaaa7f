"""Caffe's InsertSplits: a top read by several bottoms is copied by an automatic Split layer.

Caffe names the split layer `<blob>_<layer>_<top index>_split` and its tops
`<blob>_<layer>_<top index>_split_<k>`; each consumer reads its own copy, so
an in-place consumer never changes what the other consumers see. We insert
the same layers with the same names, so every Caffe blob name exists here too.
"""

from __future__ import annotations

from collections import defaultdict

from caffecompat.errors import CaffeCompatError
from caffecompat.proto import caffe_pb2


def split_blob_name(layer: str, blob: str, top_index: int, k: int) -> str:
    """Name of the k-th copy of `blob` (top `top_index` of `layer`)."""
    return f"{blob}_{layer}_{top_index}_split_{k}"


def insert_splits(layers: list[caffe_pb2.LayerParameter], source: str = "net") -> list[caffe_pb2.LayerParameter]:
    """The layers with Split layers inserted after every top consumed more than once."""
    last_top: dict[str, tuple[int, int]] = {}
    source_of: dict[tuple[int, int], tuple[int, int]] = {}
    consumers: dict[tuple[int, int], int] = defaultdict(int)
    loss_weight: dict[tuple[int, int], float] = {}
    for i, layer in enumerate(layers):
        for j, blob in enumerate(layer.bottom):
            if blob not in last_top:
                raise CaffeCompatError(
                    f"{source}: layer '{layer.name}' reads bottom '{blob}' (bottom #{j}) that no earlier "
                    "layer produces; check the blob name and the layers' include/exclude rules"
                )
            source_of[(i, j)] = last_top[blob]
            consumers[last_top[blob]] += 1
        for j, blob in enumerate(layer.top):
            last_top[blob] = (i, j)
        # A top used as a loss counts as one more consumer.
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            top = last_top[layer.top[j]]
            loss_weight[top] = layer.loss_weight[j]
            if layer.loss_weight[j]:
                consumers[top] += 1

    out: list[caffe_pb2.LayerParameter] = []
    next_copy: dict[tuple[int, int], int] = defaultdict(int)
    for i, original in enumerate(layers):
        layer = caffe_pb2.LayerParameter()
        layer.CopyFrom(original)
        out.append(layer)
        for j, blob in enumerate(layer.bottom):
            top = source_of[(i, j)]
            if consumers[top] > 1:
                producer = layers[top[0]].name
                layer.bottom[j] = split_blob_name(producer, blob, top[1], next_copy[top])
                next_copy[top] += 1
        for j, blob in enumerate(layer.top):
            count = consumers[(i, j)]
            if count <= 1:
                continue
            split = caffe_pb2.LayerParameter(name=f"{blob}_{layer.name}_{j}_split", type="Split")
            split.bottom.append(blob)
            weight = loss_weight.get((i, j), 0.0)
            for k in range(count):
                split.top.append(split_blob_name(layer.name, blob, j, k))
                if weight:
                    split.loss_weight.append(weight if k == 0 else 0.0)
            if weight:
                # The loss moves to the split's first copy.
                del layer.loss_weight[:]
                next_copy[(i, j)] += 1
            out.append(split)
    return out
