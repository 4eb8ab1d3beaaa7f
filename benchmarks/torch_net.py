"""A PyTorch module built from a caffecompat NetSpec, for benchmarks/bench_peer.py only.

It covers the layer types of CaffeNet and ResNet-50 (Convolution, InnerProduct,
ReLU, Pooling, LRN, Dropout, BatchNorm, Scale, Eltwise, Split, Softmax,
SoftmaxWithLoss) with the same shapes as our lowering, so both systems do the
same arithmetic (a BatchNorm followed by its Scale becomes one affine BatchNorm2d, as
PyTorch nets are written); weights come from PyTorch's own initialisation (speed does not
depend on them). Source layers (Data, DummyData, Input) become the module's
inputs. Anything else raises "not supported" rather than running a different net.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from caffecompat.errors import NotSupportedError
from caffecompat.proto import caffe_pb2

SOURCES = ("Data", "DummyData", "Input", "ImageData", "MemoryData", "HDF5Data")


def _pair(values, default: int) -> tuple[int, int]:
    values = list(values)
    if not values:
        return default, default
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _conv_geometry(p: caffe_pb2.ConvolutionParameter) -> dict:
    kh, kw = (p.kernel_h, p.kernel_w) if p.kernel_h else _pair(p.kernel_size, 1)
    sh, sw = (p.stride_h, p.stride_w) if p.stride_h else _pair(p.stride, 1)
    ph, pw = (p.pad_h, p.pad_w) if p.pad_h or p.pad_w else _pair(p.pad, 0)
    return {"kernel_size": (kh, kw), "stride": (sh, sw), "padding": (ph, pw), "dilation": _pair(p.dilation, 1)}


class TorchNet(nn.Module):
    """Runs the spec's layers in order on a dict of values; forward(inputs) returns (loss or None, values)."""

    def __init__(self, spec) -> None:
        super().__init__()
        self.steps: list[tuple] = []
        self.inputs = [t for n in spec.layers if n.type in SOURCES for t in n.tops]
        self.mods = nn.ModuleDict()
        self.profile_ranges = False  # bench_layers.py: a caffe::<type> profiler range around each layer
        for node in spec.layers:
            kind = node.type
            if kind in SOURCES:
                continue
            key = f"l{node.index}"
            lp = node.param
            if kind == "Convolution":
                p = lp.convolution_param
                w = node.param_shapes[0]
                self.mods[key] = nn.Conv2d(w[1] * p.group, w[0], groups=p.group, bias=p.bias_term,
                                           **_conv_geometry(p))
            elif kind == "InnerProduct":
                w = node.param_shapes[0]
                self.mods[key] = nn.Linear(w[1], w[0], bias=lp.inner_product_param.bias_term)
            elif kind == "BatchNorm":
                channels = node.bottom_shapes[0][1]
                # Caffe's BatchNorm has no affine part (Scale follows it); eps from the prototxt.
                self.mods[key] = nn.BatchNorm2d(channels, eps=lp.batch_norm_param.eps, affine=False,
                                                track_running_stats=True)
            elif kind == "Scale" and self.steps and self.steps[-1][0] == "BatchNorm" \
                    and self.steps[-1][3] == node.bottoms and lp.scale_param.bias_term and len(node.bottoms) == 1:
                # BatchNorm then Scale (with bias) on its top is what a PyTorch user writes as one affine
                # BatchNorm2d: fold the Scale into it, so PyTorch runs its fused kernel.
                prev = self.mods[self.steps[-1][1]]
                self.mods[self.steps[-1][1]] = nn.BatchNorm2d(prev.num_features, eps=prev.eps, affine=True)
                self.steps[-1] = (*self.steps[-1][:3], node.tops, *self.steps[-1][4:])
                continue
            elif kind == "Scale":
                channels = node.bottom_shapes[0][1]
                self.mods[key] = _Scale(channels, lp.scale_param.bias_term)
            elif kind == "LRN":
                p = lp.lrn_param
                if p.norm_region != caffe_pb2.LRNParameter.ACROSS_CHANNELS:
                    raise NotSupportedError(f"layer {node.label}: not supported in torch_net: WITHIN_CHANNEL LRN")
                self.mods[key] = nn.LocalResponseNorm(p.local_size, alpha=p.alpha, beta=p.beta, k=p.k)
            elif kind not in ("ReLU", "Pooling", "Dropout", "Eltwise", "Split", "Softmax", "SoftmaxWithLoss"):
                raise NotSupportedError(f"layer {node.label}: not supported in torch_net: type {kind}")
            self.steps.append((kind, key, node.bottoms, node.tops, lp, node.bottom_shapes))

    def forward(self, feeds: dict[str, torch.Tensor]):
        values = dict(feeds)
        loss = None
        for kind, key, bottoms, tops, lp, shapes in self.steps:
            if self.profile_ranges:
                with torch.profiler.record_function(f"caffe::{kind}"):
                    loss = self._layer(values, loss, kind, key, bottoms, tops, lp, shapes)
            else:
                loss = self._layer(values, loss, kind, key, bottoms, tops, lp, shapes)
        return loss, values

    def _layer(self, values: dict, loss, kind: str, key: str, bottoms: list, tops: list, lp, shapes):
        """Run one layer on `values` in place; returns the loss (set by SoftmaxWithLoss)."""
        x = values[bottoms[0]]
        if kind in ("Convolution", "BatchNorm", "Scale", "LRN"):
            y = self.mods[key](x)
        elif kind == "InnerProduct":
            y = self.mods[key](torch.flatten(x, 1))
        elif kind == "ReLU":
            y = F.relu(x) if not lp.relu_param.negative_slope else F.leaky_relu(x, lp.relu_param.negative_slope)
        elif kind == "Dropout":
            y = F.dropout(x, lp.dropout_param.dropout_ratio, self.training)
        elif kind == "Pooling":
            y = _pool(x, lp.pooling_param, shapes[0])
        elif kind == "Eltwise":
            if lp.eltwise_param.operation != caffe_pb2.EltwiseParameter.SUM or lp.eltwise_param.coeff:
                raise NotSupportedError("torch_net: only Eltwise SUM without coefficients")
            y = x
            for b in bottoms[1:]:
                y = y + values[b]
        elif kind == "Split":
            for t in tops:
                values[t] = x
            return loss
        elif kind == "Softmax":
            y = F.softmax(x, dim=1)
        else:  # SoftmaxWithLoss
            y = F.cross_entropy(x, values[bottoms[1]].long())
            loss = y
        values[tops[0]] = y
        return loss


class _Scale(nn.Module):
    """Caffe's Scale along axis 1 with a learned per-channel factor (and bias)."""

    def __init__(self, channels: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias, x, self.weight) if self.bias is not None else x * self.weight


def _pool(x: torch.Tensor, p: caffe_pb2.PoolingParameter, shape) -> torch.Tensor:
    if p.global_pooling:
        k, s, pad = (shape[2], shape[3]), (1, 1), (0, 0)
    else:
        k = (p.kernel_h, p.kernel_w) if p.kernel_h else (p.kernel_size, p.kernel_size)
        s = (p.stride_h, p.stride_w) if p.stride_h else (p.stride, p.stride)
        pad = (p.pad_h, p.pad_w) if p.pad_h or p.pad_w else (p.pad, p.pad)
    # Caffe's pooled size rounds up (ceil_mode), as our lowering does.
    if p.pool == caffe_pb2.PoolingParameter.MAX:
        return F.max_pool2d(x, k, s, pad, ceil_mode=True)
    if p.pool == caffe_pb2.PoolingParameter.AVE:
        return F.avg_pool2d(x, k, s, pad, ceil_mode=True, count_include_pad=True)
    raise NotSupportedError("torch_net: STOCHASTIC pooling")
