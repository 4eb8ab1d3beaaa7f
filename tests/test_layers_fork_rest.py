"""The remaining fork layers: BN (PSPNet), ROIPooling (Fast R-CNN), PSROIPooling (R-FCN), one-bottom Upsample
(YOLOv3 ports), Reorg and Region (YOLOv2 ports).

Forward against OpenCV's Caffe importer where it implements the type as the fork does, otherwise against the
fork's loops written out here in numpy; every Backward against central differences (tests/gradients.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from caffecompat.proto import caffe_pb2
from tests.gradients import check_layer_gradients
from tests.layer_nets import forward, make_net, net_text, random_params, relative_error


def _layer(name: str, type_: str, extra: str = "", bottoms: tuple[str, ...] = ("data",)) -> str:
    b = " ".join(f'bottom: "{x}"' for x in bottoms)
    return f'layer {{ name: "{name}" type: "{type_}" {b} top: "{name}" {extra} }}\n'


def _x(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _has_field(message: str, field: str) -> bool:
    d = caffe_pb2.DESCRIPTOR.message_types_by_name.get(message)
    return d is not None and field in d.fields_by_name


# ---------------------------------------------------------------------------------------------------- BN

BN_FILLERS = 'slope_filler { type: "uniform" min: 0.5 max: 2 } bias_filler { type: "uniform" min: -1 max: 1 }'


def _bn_params(spec, seed: int = 0) -> dict[str, np.ndarray]:
    params = random_params(spec, seed)
    rng = np.random.default_rng(seed + 7)
    for name, v in params.items():
        if name.endswith("#2"):
            params[name] = rng.normal(size=v.shape).astype(np.float32)
    return params


@pytest.mark.parametrize("phase,frozen", [(caffe_pb2.TEST, False), (caffe_pb2.TRAIN, False),
                                          (caffe_pb2.TRAIN, True)])
def test_bn_forward_matches_the_forks_formula(phase: int, frozen: bool) -> None:
    shape = (3, 4, 5, 6)
    spec = make_net(_layer("bn", "BN", f"bn_param {{ {BN_FILLERS} eps: 0.01 frozen: {str(frozen).lower()} }}"),
                    {"data": shape}, phase)
    params = _bn_params(spec)
    x = _x(shape) * 2 + 1
    got = forward(spec, params, {"data": x}, ["bn"])["bn"]
    slope, bias, mean, var = (params[f"bn#{i}"].astype(np.float64) for i in range(4))
    if phase == caffe_pb2.TRAIN and not frozen:
        # The fork's batch statistics: mean over N, H, W, then the mean of the squared deviations (biased).
        mean = x.mean(axis=(0, 2, 3), keepdims=True)
        var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    want = slope * (x - mean) / np.sqrt(var + 0.01) + bias
    assert relative_error(got, want) < 1e-5


@pytest.mark.parametrize("phase,frozen", [(caffe_pb2.TRAIN, False), (caffe_pb2.TRAIN, True)])
def test_bn_backward_by_finite_differences(phase: int, frozen: bool) -> None:
    shape = (2, 3, 3, 4)
    spec = make_net(_layer("bn", "BN", f"bn_param {{ {BN_FILLERS} frozen: {str(frozen).lower()} }}"),
                    {"data": shape}, phase)
    params = _bn_params(spec, 3)
    # Only what the fork lets learn: slope and bias unless frozen, never the statistics.
    assert [spec.params[f"bn#{i}"].lr_mult for i in range(4)] == ([0, 0, 0, 0] if frozen else [1, 1, 0, 0])
    assert [spec.params[f"bn#{i}"].decay_mult for i in range(4)] == ([0, 0, 0, 0] if frozen else [1, 1, 0, 0])
    wrt = ["data"] if frozen else ["data", "bn#0", "bn#1"]
    check_layer_gradients(spec, params, {"data": _x(shape, 1)}, ["bn"], wrt=wrt, training=True)


def test_bn_moving_averages_follow_the_forks_momentum(tmp_path) -> None:
    import caffecompat as caffe

    shape = (2, 3, 4, 4)
    text = net_text(_layer("bn", "BN", f"bn_param {{ {BN_FILLERS} momentum: 0.75 }}"), {"data": shape})
    (tmp_path / "bn.prototxt").write_text(text)
    net = caffe.Net(str(tmp_path / "bn.prototxt"), caffe.TRAIN)
    x = _x(shape, 4) * 3 + 2
    for _ in range(2):
        net.forward(data=x)
    mean, var = net.params["bn"][2].data, net.params["bn"][3].data
    bm = x.astype(np.float64).mean(axis=(0, 2, 3)).reshape(1, 3, 1, 1)
    bv = ((x - bm) ** 2).mean(axis=(0, 2, 3)).reshape(1, 3, 1, 1)
    # Two forwards of stored = 0.25 * batch + 0.75 * stored from 0.
    assert np.allclose(mean, 0.25 * bm + 0.75 * 0.25 * bm, rtol=1e-5)
    assert np.allclose(var, 0.25 * bv + 0.75 * 0.25 * bv, rtol=1e-5)
    # A frozen BN keeps its statistics.
    (tmp_path / "frozen.prototxt").write_text(text.replace("momentum: 0.75", "frozen: true"))
    frozen = caffe.Net(str(tmp_path / "frozen.prototxt"), caffe.TRAIN)
    frozen.forward(data=x)
    assert np.all(frozen.params["bn"][2].data == 0) and np.all(frozen.params["bn"][3].data == 1)
