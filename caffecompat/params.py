"""pycaffe's `params` pseudo-module: `params.<Type>.<VALUE>` is an enum value of <Type>Parameter.

    from caffecompat import params as P
    P.Pooling.MAX        # caffe_pb2.PoolingParameter.MAX
    P.Eltwise.SUM        # caffe_pb2.EltwiseParameter.SUM
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    from caffecompat.net_spec import params

    return getattr(params, name)
