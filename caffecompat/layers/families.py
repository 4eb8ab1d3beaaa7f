"""Imports every layer family module so that their @register decorators run."""

from caffecompat.layers import (  # noqa: F401
    accuracy,
    activations,
    conv,
    core,
    data_layers,
    dropout,
    eltwise,
    embed,
    inner_product,
    losses,
    normalization,
    pooling,
    reduction,
    scale,
    shape,
    softmax,
)
