"""Imports every layer family module so that their @register decorators run."""

from caffecompat.layers import (  # noqa: F401
    activations,
    conv,
    core,
    inner_product,
    pooling,
)
