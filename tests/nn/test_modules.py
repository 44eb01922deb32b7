"""QuantLinear / QuantConv2d: every kernel a layer can run agrees with the layer's reference path;
convolutions (im2col for dense, oneDNN for depthwise) against float64 F.conv2d."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explorer.kernels.activation import act_qparams
from explorer.kernels.base import ActQParams
from explorer.kernels.select import candidates
from explorer.nn.modules import QuantConv2d, QuantLinear
from explorer.quant.config import QuantConfig

CONFIGS = [
    QuantConfig(),
    QuantConfig(weight_bits=4, granularity="group", group_size=32),
    QuantConfig(act_bits=8),
    QuantConfig(act_bits=8, act_granularity="tensor", act_symmetric=False),
]
TOL = {"int8-wo-int8pack-bf16": 2e-2, "int4-wo-tinygemm-bf16": 2e-2}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_dense_conv_kernels_match_float64_conv(config: QuantConfig) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 48, 3, stride=2, padding=1)
    x = torch.randn(2, 32, 9, 9)
    q = QuantConv2d.from_float(conv, config)
    q.use_kernel("reference")
    ref = q(x)
    if config.act_bits is None:  # weight-only: the reference is a plain conv of dequantized weights
        w = q.qweight_view().dequantize(torch.float64).reshape(conv.weight.shape)
        expected = F.conv2d(x.double(), w, conv.bias.double(), 2, 1)
        assert rel(ref, expected) < 1e-5
    names = [k.name for k in candidates(q.spec)]
    assert names, "dense convolutions must have a real kernel"
    for name in names:
        q.use_kernel(name)
        assert rel(q(x), ref) <= TOL.get(name, 1e-4), name


@pytest.mark.parametrize("act_symmetric", [True, False])
@pytest.mark.parametrize("act_mode", ["dynamic", "static"])
def test_depthwise_conv_runs_on_onednn_and_matches(act_symmetric: bool, act_mode: str) -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(24, 24, 3, padding=1, groups=24)
    x = torch.randn(2, 24, 10, 10) * 2 + 0.5
    config = QuantConfig(
        act_bits=8, act_granularity="tensor", act_mode=act_mode, act_symmetric=act_symmetric
    )
    act = None
    if act_mode == "static":
        s, z = act_qparams(x.reshape(1, -1), q_spec(conv, config), None)
        act = ActQParams(float(s[0, 0]) * 0.9, int(z[0, 0]))  # slightly clipping, on purpose
    q = QuantConv2d.from_float(conv, config, act)
    assert q.kernel_name == "int8-dwconv-onednn" and not q.simulated
    # float64 reference: per-tensor fake-quantized input, dequantized weight
    flat = x.reshape(1, -1)
    scale, zero = act_qparams(flat, q.spec, q.act_qparams())
    qmin, qmax = (-128, 127) if act_symmetric else (0, 255)
    xq = (torch.round(x / scale[0, 0]) + zero[0, 0]).clamp(qmin, qmax)
    xd = (xq.double() - zero[0, 0]) * scale[0, 0].double()
    w = q.qweight_view().dequantize(torch.float64).reshape(conv.weight.shape)
    expected = F.conv2d(xd, w, conv.bias.double(), 1, 1, 1, 24)
    assert rel(q(x), expected) < 1e-5


def q_spec(conv: nn.Conv2d, config: QuantConfig):
    return QuantConv2d.from_float(conv, config.with_(act_mode="dynamic")).spec


def test_depthwise_kernels_and_a_simulated_one_with_a_real_twin() -> None:
    conv = nn.Conv2d(16, 16, 3, padding=1, groups=16)
    q = QuantConv2d.from_float(conv, QuantConfig(weight_bits=4))  # float activations
    assert q.kernel_name == "dwconv-wo-native" and not q.simulated
    q8 = QuantConv2d.from_float(conv, QuantConfig(act_bits=8))  # grouped: per tensor anyway
    assert q8.kernel_name == "int8-dwconv-onednn" and not q8.simulated
    q4 = QuantConv2d.from_float(conv, QuantConfig(act_bits=4))  # no 4-bit activation kernel
    assert q4.simulated
    twin = q4.timing_twin()
    assert isinstance(twin, QuantConv2d) and twin.kernel_name == "int8-dwconv-onednn"
    x = torch.randn(1, 16, 6, 6)
    assert q(x).shape == q8(x).shape == q4(x).shape == twin(x).shape == (1, 16, 6, 6)


def test_linear_accepts_any_leading_dims() -> None:
    lin = nn.Linear(64, 32)
    q = QuantLinear.from_float(lin, QuantConfig())
    x = torch.randn(2, 3, 5, 64)
    y = q(x)
    assert y.shape == (2, 3, 5, 32)
    torch.testing.assert_close(y, lin(x), rtol=0.05, atol=0.05)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation"),
    [
        ((3, 3), (1, 1), (1, 1), (1, 1)),
        ((3, 5), (2, 1), (0, 2), (1, 2)),
        ((1, 1), (3, 3), (0, 0), (1, 1)),
    ],
)
def test_conv_out_hw_matches_pytorch(kernel, stride, padding, dilation) -> None:
    from explorer.nn.modules import conv_out_hw

    conv = torch.nn.Conv2d(2, 3, kernel, stride, padding, dilation)
    geometry = {"kernel_size": kernel, "stride": stride, "padding": padding, "dilation": dilation}
    for h, w in ((7, 9), (16, 11)):
        assert conv_out_hw(h, w, geometry) == tuple(conv(torch.zeros(1, 2, h, w)).shape[-2:])
