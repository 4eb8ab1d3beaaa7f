"""Caffe layer types: the registry (registry.py), the graph builder (graph.py) and one module per family.

For pycaffe's net_spec, `caffecompat.layers.<Type>(...)` (a CamelCase name; the
submodules here are lowercase) is a layer call of caffecompat.net_spec, so
`from caffecompat import layers as L; L.Convolution(...)` works as in pycaffe.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Only layer type names: lowercase names stay submodules (the import system asks for them here first).
    if not name[:1].isupper():
        raise AttributeError(f"module 'caffecompat.layers' has no attribute {name!r}")
    from caffecompat.net_spec import layers

    return getattr(layers, name)
