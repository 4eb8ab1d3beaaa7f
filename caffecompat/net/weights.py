"""Parameter values of a NetSpec: filler initialization and Caffe's copy of trained layers by name."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from caffecompat import glog
from caffecompat.errors import CaffeCompatError
from caffecompat.layers import registry
from caffecompat.net.spec import NetSpec


def init_params(spec: NetSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every parameter tensor of `spec`, filled as Caffe's layer setup would (in Caffe's order)."""
    values: dict[str, np.ndarray] = {}
    for node in spec.layers:
        owned = [i for i, n in enumerate(node.param_names) if spec.owns(node, n)]
        if not owned:
            continue
        arrays = registry.get(node).init_params(node, rng)
        for i in owned:
            a = arrays[i]
            if isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.owndata \
                    and a.flags.writeable:
                # The filler's own new array: a copy would double the peak memory of a big net.
                values[node.param_names[i]] = a
                continue
            # np.array, not np.ascontiguousarray: the latter turns 0-axis blobs (shared PReLU slope) 1-D.
            values[node.param_names[i]] = np.array(a, dtype=np.float32, order="C")
    return values


def _legacy_equal(source_shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    # Blob::ShapeEquals for legacy 4-D blobs: the target padded with leading 1s to 4 axes.
    return len(target) <= 4 and (1,) * (4 - len(target)) + tuple(target) == tuple(source_shape)


def copy_trained_layers(spec: NetSpec, values: dict[str, np.ndarray],
                        source_blobs: Mapping[str, list[np.ndarray]] | Iterable[tuple[str, list[np.ndarray]]],
                        source_file: str, legacy_layers: frozenset[str] = frozenset()) -> list[str]:
    """Net::CopyTrainedLayersFrom: copy blobs of layers found by name; returns the copied layer names.

    `source_blobs` maps layer names to blobs, or lists (name, blobs) in the
    weights file's order, duplicates included. Source layers absent from the net
    are logged as `Ignoring source layer X`. `legacy_layers` names source layers
    whose blobs used num/channels/height/width.
    """
    by_name: dict[str, registry.LayerNode] = {}
    for n in spec.layers:
        # Net::CopyTrainedLayersFrom looks a source layer up from the net's first layer on: the FIRST
        # layer of a name gets the blobs (a second source layer of that name overwrites the first).
        by_name.setdefault(n.name, n)
    pairs = source_blobs.items() if isinstance(source_blobs, Mapping) else source_blobs
    copied = []
    for lname, blobs in pairs:
        node = by_name.get(lname)
        if node is None:
            glog.info("net.cpp:746", f"Ignoring source layer {lname}")
            continue
        if len(blobs) != len(node.param_names):
            raise CaffeCompatError(
                f"{source_file}: layer '{lname}' has {len(blobs)} blobs in the weights file but "
                f"{len(node.param_names)} in the net; rename the layer to learn it from scratch"
            )
        for j, blob in enumerate(blobs):
            target = node.param_shapes[j]
            if tuple(blob.shape) != target:
                if not (lname in legacy_layers and _legacy_equal(tuple(blob.shape), target)):
                    raise CaffeCompatError(
                        f"{source_file}: cannot copy param {j} of layer '{lname}': shape mismatch, the "
                        f"weights file has {list(blob.shape)} and the net needs {list(target)}. To learn "
                        "this layer's parameters from scratch rather than copying them, rename the layer"
                    )
            values[node.param_names[j]] = np.ascontiguousarray(blob, dtype=np.float32).reshape(target)
        if lname not in copied:
            copied.append(lname)
    return copied


def load_caffemodel(spec: NetSpec, values: dict[str, np.ndarray], path: str) -> list[str]:
    """Copy the layers of the .caffemodel at `path` into `values` by layer name (Net::CopyTrainedLayersFrom)."""
    from caffecompat.formats.caffemodel import read_weights
    from caffecompat.formats.hdf5_snapshot import is_hdf5

    # Net::CopyTrainedLayersFrom: an HDF5 file (H5Fis_hdf5) is read as Net::ToHDF5 wrote it.
    if is_hdf5(path):
        return copy_hdf5_layers(spec, values, path)
    weights = read_weights(path)
    layers = list(weights.net.layer) or list(weights.net.layers)
    # Blobs written before BlobShape carry num/channels/height/width (Blob::ShapeEquals' legacy case).
    legacy = frozenset(lp.name for lp in layers if any(not b.HasField("shape") for b in lp.blobs))
    return copy_trained_layers(spec, values, weights.layers, path, legacy)


def copy_hdf5_layers(spec: NetSpec, values: dict[str, np.ndarray], path: str) -> list[str]:
    """Net::CopyTrainedLayersFromHDF5: copy `data/<layer>/<j>` into the net's LAST layer of each name."""
    from caffecompat.formats.hdf5_snapshot import read_hdf5_weights

    last = {node.name: node for node in spec.layers}
    copied = []
    for lname, blobs in read_hdf5_weights(path):
        node = last.get(lname)
        if node is None:
            glog.info("net.cpp:801", f"Ignoring source layer {lname}")
            continue
        if len(blobs) > len(node.param_names):
            raise CaffeCompatError(f"{path}: layer '{lname}' has {len(blobs)} blobs in the weights file but "
                                   f"{len(node.param_names)} in the net; rename the layer to learn it from scratch")
        for j, name in enumerate(node.param_names):
            if j not in blobs:
                # CopyTrainedLayersFromHDF5: a blob may be absent only where the net shares it.
                if spec.owns(node, name):
                    raise CaffeCompatError(f"{path}: layer '{lname}' has no blob {j} in the weights file; "
                                           "rename the layer to learn it from scratch")
                continue
            target = node.param_shapes[j]
            if tuple(blobs[j].shape) != tuple(target):
                raise CaffeCompatError(
                    f"{path}: cannot copy param {j} of layer '{lname}': shape mismatch, the weights file has "
                    f"{list(blobs[j].shape)} and the net needs {list(target)}. To learn this layer's "
                    "parameters from scratch rather than copying them, rename the layer")
            values[name] = np.ascontiguousarray(blobs[j], dtype=np.float32)
        copied.append(lname)
    return copied
