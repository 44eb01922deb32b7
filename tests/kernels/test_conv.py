"""Convolution kernels (`explorer.kernels.conv_ops`): exact integer convolutions against int64
arithmetic (stride, padding, dilation, groups, depthwise, channel tails), bit-identical C
helpers (activation codes, im2col), the depthwise kernel on stored codes against float64, the
oneDNN exactness probe on both kinds of CPU, and the kernel each layer of a model runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explorer.kernels import conv_ops
from explorer.kernels.base import ActQParams, LinearSpec
from explorer.kernels.conv_ops import ONEDNN_CONV, ONEDNN_DWCONV, ConvGeometry
from explorer.kernels.select import CONV_KERNELS, conv_candidates
from explorer.machine import cpu_flags
from explorer.nn.convert import quantize_model, select_kernels
from explorer.nn.modules import QuantConv2d
from explorer.quant.config import Plan, QuantConfig
from explorer.quant.primitives import choose_qparams, quantize
from explorer.quant.qtensor import QuantizedWeight

if conv_ops.unavailable_reason() is not None:
    pytest.skip(
        f"native convolution helpers unavailable: {conv_ops.unavailable_reason()}",
        allow_module_level=True,
    )

REPO = Path(__file__).resolve().parents[2]
EXACT_FEATURES = ("avx512_vnni", "avx_vnni", "amx_int8")
"""CPU features with which oneDNN's int8 convolution adds u8 x s8 products without saturating."""

# (in, out, kernel, stride, padding, dilation, groups, input H x W): odd channel counts (tails
# of every SIMD block), strides that skip pixels, dilation, grouped and depthwise
GEOMETRIES = [
    (19, 13, (3, 3), (1, 1), (1, 1), (1, 1), 1, (7, 9)),
    (16, 24, (3, 2), (2, 1), (0, 1), (1, 2), 1, (9, 8)),
    (8, 5, (1, 1), (2, 2), (0, 0), (1, 1), 1, (6, 7)),  # reads every other pixel only
    (3, 17, (4, 4), (2, 2), (1, 1), (1, 1), 1, (10, 9)),  # an RGB stem: oneDNN's narrow path
    (12, 18, (3, 3), (1, 2), (2, 1), (2, 1), 3, (8, 8)),
    (21, 21, (3, 3), (2, 2), (1, 1), (1, 1), 21, (9, 10)),
    (20, 20, (5, 3), (1, 1), (2, 0), (1, 3), 20, (8, 11)),
]


def geometry(case: tuple) -> tuple[ConvGeometry, tuple[int, int]]:
    *g, hw = case
    return ConvGeometry(*g), hw


def int64_conv(x: torch.Tensor, w: torch.Tensor, geom: ConvGeometry) -> torch.Tensor:
    """Integer convolution in int64 (patches by unfold, exact for integers below 2^53)."""
    b, _, h, wd = x.shape
    ho, wo = geom.out_hw(h, wd)
    g = geom.groups
    outs = []
    for xg, wg in zip(x.chunk(g, 1), w.chunk(g, 0), strict=True):
        cols = F.unfold(xg.double(), geom.kernel_size, geom.dilation, geom.padding, geom.stride)
        cols = cols.round().long()  # (B, K, L)
        outs.append(torch.einsum("ok,bkl->bol", wg.reshape(wg.shape[0], -1).long(), cols))
    return torch.cat(outs, 1).reshape(b, -1, ho, wo)


def exact_case(
    geom: ConvGeometry, hw: tuple[int, int], zero: int, extreme: bool
) -> tuple[torch.Tensor, QuantizedWeight, LinearSpec, ActQParams, torch.Tensor]:
    """Integer-valued activations and int8 codes with unit scales: the float output of an exact
    kernel is the int32 sum, which int64 arithmetic gives."""
    g = torch.Generator().manual_seed(geom.in_channels * 7 + zero)
    cin = geom.in_channels // geom.groups
    k = cin * geom.kernel_size[0] * geom.kernel_size[1]
    if extreme:  # pairs of products that saturate int16: 255 x -128, 255 x 127 (uint8 domain)
        w = torch.where(torch.rand(geom.out_channels, k, generator=g) < 0.5, -128, 127)
        xq = torch.where(torch.rand(2, geom.in_channels, *hw, generator=g) < 0.1, 0, 255)
    else:
        w = torch.randint(-128, 128, (geom.out_channels, k), generator=g)
        xq = torch.randint(0, 256, (2, geom.in_channels, *hw), generator=g)
    config = QuantConfig(
        act_bits=8, act_granularity="tensor", act_mode="static", act_symmetric=False
    )
    qw = QuantizedWeight.from_codes(w, torch.ones(geom.out_channels, 1), None, 8, True, (1, k))
    spec = LinearSpec.from_config(config, geom.out_channels, k)
    x = (xq - zero).float()  # at scale 1 and zero point `zero`, its codes are xq
    w4 = w.reshape(geom.out_channels, cin, *geom.kernel_size)
    return x, qw, spec, ActQParams(1.0, zero), int64_conv(xq - zero, w4, geom)


def oneDNN_for(geom: ConvGeometry) -> conv_ops.OnednnConvKernel:
    return ONEDNN_DWCONV if geom.depthwise else ONEDNN_CONV


@pytest.fixture(scope="module")
def exact_onednn() -> None:
    if not any(f in cpu_flags() for f in EXACT_FEATURES):
        pytest.skip(
            f"none of {', '.join(EXACT_FEATURES)} in /proc/cpuinfo flags: oneDNN's dense int8 "
            "convolution is not exact on this CPU (tested in a subprocess as AVX2 instead)"
        )


@pytest.mark.parametrize("case", GEOMETRIES, ids=lambda c: f"{c[0]}x{c[1]}g{c[6]}")
@pytest.mark.parametrize("extreme", [False, True])
def test_every_int8_conv_kernel_is_exact(case: tuple, extreme: bool) -> None:
    """oneDNN (dense where exact, depthwise) and im2col + every integer linear kernel."""
    geom, hw = geometry(case)
    x, qw, spec, act, expected = exact_case(geom, hw, zero=3, extreme=extreme)
    assert expected.abs().max() < 2**24  # float32 outputs hold the sums exactly
    kernels = [k for k in conv_candidates(spec, geom) if k.name != "dwconv-wo-native"]
    if geom.groups == 1 or geom.depthwise:
        assert kernels, conv_ops.unavailable_reason()
    for kernel in kernels:
        y = kernel.run(kernel.prepare(spec, geom, qw, None, act), x)
        assert torch.equal(y.double(), expected.double()), kernel.name


def test_onednn_conv_is_exact_with_vnni(exact_onednn: None) -> None:
    for case in GEOMETRIES[:2] + GEOMETRIES[3:4] + GEOMETRIES[5:6]:
        geom, hw = geometry(case)
        for zero in (0, 128, 201):
            x, qw, spec, act, expected = exact_case(geom, hw, zero, extreme=True)
            kernel = oneDNN_for(geom)
            assert kernel.supports(spec, geom) is None
            y = kernel.run(kernel.prepare(spec, geom, qw, None, act), x)
            assert torch.equal(y.double(), expected.double())


@pytest.mark.slow
def test_without_vnni_dense_onednn_is_refused_and_im2col_stays_exact() -> None:
    """oneDNN restricted to AVX2 (``ONEDNN_MAX_CPU_ISA``, read at its first use) saturates; the
    probe sees it, the dense kernel is refused with that reason and the layer runs exactly on
    im2col instead. Depthwise stays on oneDNN (its AVX2 code does not saturate)."""
    if "avx2" not in cpu_flags():
        pytest.skip("avx2 not in /proc/cpuinfo flags: oneDNN's AVX2 code cannot run here")
    code = textwrap.dedent(
        """
        import torch
        from explorer.kernels import conv_ops
        from explorer.kernels.select import conv_candidates
        import tests.kernels.test_conv as t
        print(conv_ops.onednn_exact(False))
        assert conv_ops.onednn_exact(True) is None
        for case in t.GEOMETRIES:
            geom, hw = t.geometry(case)
            x, qw, spec, act, expected = t.exact_case(geom, hw, 3, extreme=True)
            found = conv_candidates(spec, geom)
            assert "int8-conv-onednn" not in [k.name for k in found]
            # torch._int_mm (int8-w8a8-intmm) is oneDNN's matmul: restricted to AVX2 it
            # saturates too, a matter of the linear kernels' own probe
            ours = [k for k in found if k.name != "int8-w8a8-intmm"]
            assert ours or geom.groups not in (1, geom.in_channels), case
            for k in ours:
                y = k.run(k.prepare(spec, geom, qw, None, act), x)
                assert torch.equal(y.double(), expected.double()), (case, k.name)
        """
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "is not exact on this CPU" in proc.stdout and "saturate" in proc.stdout


@pytest.mark.parametrize("symmetric", [True, False])
def test_activation_codes_are_those_of_quantize(symmetric: bool) -> None:
    """Ties (k + 0.5 at scale 1 round to even), clamping at both ends, either memory layout."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-300, 300, (2, 37, 5, 6), generator=g).float() / 2  # many exact halves
    scale, zero = 0.75, (0 if symmetric else 131)
    lo, hi = (-128, 127) if symmetric else (0, 255)
    flat = x.reshape(1, -1)
    want = quantize(flat, torch.tensor([[scale]]), torch.tensor([[zero]]), flat.shape, 8, symmetric)
    want = (want.reshape(x.shape) + (128 if symmetric else 0)).to(torch.uint8)
    assert want.min() == lo + (128 if symmetric else 0)  # both clamps are exercised
    assert want.max() == hi + (128 if symmetric else 0)
    for src in (x, x.contiguous(memory_format=torch.channels_last)):
        got = conv_ops.quantize_u8_nhwc(src, scale, zero, 8, symmetric)
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(got, want)


@pytest.mark.parametrize("case", GEOMETRIES[:3], ids=str)
def test_im2col_is_unfold_with_zero_padding_columns(case: tuple) -> None:
    geom, hw = geometry(case)
    x = torch.randn(2, geom.in_channels, *hw)
    k = geom.in_channels * geom.kernel_size[0] * geom.kernel_size[1]
    cols = F.unfold(x, geom.kernel_size, geom.dilation, geom.padding, geom.stride)
    want = cols.transpose(1, 2).reshape(-1, k)
    got = conv_ops.im2col(x, geom, k + 5)
    assert torch.equal(got[:, :k], want)
    assert not got[:, k:].any()


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
@pytest.mark.parametrize("symmetric", [True, False])
def test_depthwise_on_stored_codes_matches_float64(bits: int, symmetric: bool) -> None:
    torch.manual_seed(bits)
    for case in GEOMETRIES[5:]:
        geom, hw = geometry(case)
        conv = nn.Conv2d(geom.in_channels, geom.out_channels, geom.kernel_size, geom.stride,
                         geom.padding, geom.dilation, geom.groups)  # fmt: skip
        q = QuantConv2d.from_float(conv, QuantConfig(weight_bits=bits, symmetric=symmetric))
        assert q.kernel_name == "dwconv-wo-native" and not q.simulated
        x = torch.randn(2, geom.in_channels, *hw)
        w = q.qweight_view().dequantize(torch.float64).reshape(conv.weight.shape)
        expected = F.conv2d(x.double(), w, conv.bias.double(), geom.stride, geom.padding,
                            geom.dilation, geom.groups)  # fmt: skip
        torch.testing.assert_close(q(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_per_tensor_range_is_over_the_pixels_read() -> None:
    """A 1x1 stride-2 convolution reads every other pixel: oneDNN's per-tensor dynamic scale is
    taken over those, as the im2col reference's is, so both compute the same function."""
    torch.manual_seed(3)
    conv = nn.Conv2d(8, 6, 1, stride=2)
    x = torch.randn(1, 8, 6, 6)
    x[:, :, 1, 1] = 50.0  # never read: must not set the scale
    q = QuantConv2d.from_float(conv, QuantConfig(act_bits=8, act_granularity="tensor"))
    q.use_kernel("reference")
    ref = q(x)
    for kernel in conv_candidates(q.conv_spec, q.geometry):
        q.use_kernel(kernel.name)
        torch.testing.assert_close(q(x), ref, rtol=1e-5, atol=1e-5, msg=kernel.name)


class TinyCNN(nn.Module):
    """A stem whose K (3 x 4 x 4 = 48) needs padding for the weight-only kernels, a depthwise
    and a pointwise convolution, a classifier: the layer kinds of mobile-cnn."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=2, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.pw(torch.relu(self.dw(torch.relu(self.stem(x))))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize(
    ("config", "stem", "dw"),
    [
        (QuantConfig(weight_bits=8, granularity="tensor"), "int8-wo", "dwconv-wo-native"),
        (QuantConfig(weight_bits=4), "int4-wo", "dwconv-wo-native"),
        (QuantConfig(act_bits=8, act_granularity="tensor"), "int8-", "int8-dwconv-"),
        (QuantConfig(act_bits=8), "int8-", "int8-dwconv-"),  # per token
    ],
    ids=lambda v: v.name if isinstance(v, QuantConfig) else "",
)
def test_every_layer_of_a_small_cnn_runs_a_real_kernel(config: QuantConfig, stem: str, dw: str):
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.randn(2, 3, 16, 16)
    q = quantize_model(model, Plan.uniform(config))
    chosen = select_kernels(q, x)
    assert not [n for n, m in q.named_modules() if getattr(m, "simulated", False)]
    assert chosen["stem"].startswith(stem) and chosen["dw"].startswith(dw), chosen
    assert set(chosen.values()) <= {*CONV_KERNELS, *chosen.values()}
    with torch.no_grad():
        y = q(x)
        for layer in (q.stem, q.dw, q.pw):
            layer.use_kernel("reference")
        ref = q(x)
    tol = 2e-2 if any("bf16" in name for name in chosen.values()) else 1e-4  # bf16 activations
    assert float((y - ref).norm() / ref.norm()) < tol


@pytest.mark.parametrize("symmetric", [True, False])
def test_dynamic_qparams_are_those_of_choose_qparams(symmetric: bool) -> None:
    g = torch.Generator().manual_seed(5)
    cases = [
        torch.randn(3, 7, 5, 5, generator=g) * 3,
        torch.rand(2, 4, 9, 9, generator=g) + 0.5,  # all positive: the range still holds 0
        -torch.rand(1, 3, 4, 4, generator=g) * 1e-3,
        torch.zeros(1, 2, 3, 3),  # scale clamps to its floor
        torch.randn(1, 300, 30, 30, generator=g),  # large enough to split across threads
    ]
    for x in cases:
        lo, hi = x.min().reshape(1, 1), x.max().reshape(1, 1)
        scale, zero = choose_qparams(lo, hi, 8, symmetric)
        for src in (x, x.contiguous(memory_format=torch.channels_last)):
            assert conv_ops.dynamic_qparams(src, symmetric) == (float(scale), int(zero))
