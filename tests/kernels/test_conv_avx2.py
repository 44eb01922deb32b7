"""The AVX2 path of ``int8-conv-native`` (`explorer.kernels.conv_ops`, ``qc_conv_avx2`` in
``qe_conv.c``): ``vpmaddubsw`` would add its uint8 x int8 pairs into saturating int16s, so the
path multiplies int16 codes by int16 weights with ``vpmaddwd`` (int32 pairs). Its int32 sums
must equal int64 arithmetic bit for bit: symmetric and asymmetric activations, extreme operands
(255 x -128 and 255 x 127: the pairs that saturate ``vpmaddubsw``), channel counts that are not
a multiple of 4, odd sizes, stride, padding, dilation, the narrow patch-matrix route and
per-token rows; and its activation codes are the scalar path's."""

from __future__ import annotations

import pytest
import torch
from test_conv import int64_conv  # this folder is on sys.path (rootdir-less)
from torch import nn

from explorer.kernels import conv_ops
from explorer.kernels.base import ActQParams, LinearSpec
from explorer.kernels.conv_ops import CONV_A8, ConvGeometry
from explorer.nn.modules import QuantConv2d
from explorer.quant.config import QuantConfig
from explorer.quant.primitives import quantize
from explorer.quant.qtensor import QuantizedWeight

if conv_ops.unavailable_reason() is not None:
    pytest.skip(
        f"native convolution helpers unavailable: {conv_ops.unavailable_reason()}",
        allow_module_level=True,
    )
if not conv_ops.conv_isa_supported("avx2"):
    pytest.skip("this CPU lacks avx2 / fma: no avx2 path", allow_module_level=True)

# (in, out, kernel, stride, padding, dilation, input H x W): channel tails (C_in % 4 != 0,
# O % 16 != 0), odd sizes, a strided window with uneven padding and dilation, a 1x1 stride 2,
# and a 3-channel stem (C_in padded to 4 <= 16: the patch-matrix route)
GEOMETRIES = [
    (19, 13, (3, 3), (1, 1), (1, 1), (1, 1), (7, 9)),
    (6, 40, (3, 2), (2, 1), (0, 1), (1, 2), (9, 7)),
    (8, 5, (1, 1), (2, 2), (0, 0), (1, 1), (5, 7)),
    (3, 17, (4, 4), (2, 2), (1, 1), (1, 1), (11, 9)),
]


@pytest.fixture
def avx2():
    conv_ops.force_conv_isa("avx2")
    yield
    conv_ops.force_conv_isa(None)


def integer_case(
    case: tuple, symmetric: bool, extreme: bool
) -> tuple[ConvGeometry, torch.Tensor, QuantizedWeight, LinearSpec, ActQParams, torch.Tensor]:
    """Integer activations at scale 1 (static qparams) and int8 weight codes with unit scales:
    the kernel's float output is its int32 sum; the int64 one is the reference."""
    *g, hw = case
    geom = ConvGeometry(*g, 1)
    k = geom.in_channels * geom.kernel_size[0] * geom.kernel_size[1]
    gen = torch.Generator().manual_seed(k + 11 * symmetric + 7 * extreme)
    lo, hi, zero = (-128, 127, 0) if symmetric else (0, 255, 5)
    if extreme:  # all-or-nothing codes against -128 / 127: every vpmaddubsw pair saturates
        w = torch.where(torch.rand(geom.out_channels, k, generator=gen) < 0.5, -128, 127)
        x = torch.where(torch.rand(2, geom.in_channels, *hw, generator=gen) < 0.2, lo, hi)
    else:
        w = torch.randint(-128, 128, (geom.out_channels, k), generator=gen)
        x = torch.randint(lo, hi + 1, (2, geom.in_channels, *hw), generator=gen)
    config = QuantConfig(
        act_bits=8, act_granularity="tensor", act_mode="static", act_symmetric=symmetric
    )
    qw = QuantizedWeight.from_codes(w, torch.ones(geom.out_channels, 1), None, 8, True, (1, k))
    spec = LinearSpec.from_config(config, geom.out_channels, k)
    expected = int64_conv(x - zero, w.reshape(geom.out_channels, -1, *geom.kernel_size), geom)
    return geom, (x - zero).float(), qw, spec, ActQParams(1.0, zero), expected


@pytest.mark.parametrize("case", GEOMETRIES, ids=lambda c: f"{c[0]}x{c[1]}k{c[2][0]}{c[2][1]}")
def test_avx2_sums_equal_int64(avx2, case: tuple) -> None:
    assert conv_ops.conv_isa() == "avx2"
    for symmetric in (False, True):
        for extreme in (False, True):
            geom, x, qw, spec, act, expected = integer_case(case, symmetric, extreme)
            assert CONV_A8.supports(spec, geom) is None
            state = CONV_A8.prepare(spec, geom, qw, None, act)
            for src in (x, x.contiguous(memory_format=torch.channels_last)):
                y = CONV_A8.run(state, src)
                assert torch.equal(y.double(), expected.double()), (case, symmetric, extreme)


def test_dynamic_activations_bit_identical_to_scalar_and_close_to_reference() -> None:
    """Dynamic qparams per tensor and per token (per pixel on a 1x1, a quantized patch matrix
    on a 3x3), symmetric and not, with bias: the AVX2 path's outputs equal the scalar
    reference path's bit for bit (the same int32 sums and float epilogue) and are close to the
    float reference module's."""
    torch.manual_seed(0)
    cases = [
        (nn.Conv2d(19, 21, 3, padding=1), "tensor", False),
        (nn.Conv2d(18, 20, 3, stride=2, padding=1), "tensor", True),
        (nn.Conv2d(21, 35, 1), "token", True),
        (nn.Conv2d(5, 19, 3, stride=2, padding=1), "token", False),
    ]
    for conv, granularity, symmetric in cases:
        config = QuantConfig(act_bits=8, act_granularity=granularity, act_symmetric=symmetric)
        q = QuantConv2d.from_float(conv, config)
        x = torch.randn(2, conv.in_channels, 9, 7) * 3 + 0.5
        q.use_kernel("reference")
        with torch.no_grad():
            ref = q(x)
        state = CONV_A8.prepare(q.conv_spec, q.geometry, q.qweight_view(), q.bias, None)
        outs = {}
        for path in ("scalar", "avx2"):
            conv_ops.force_conv_isa(path)
            try:
                outs[path] = CONV_A8.run(state, x)
            finally:
                conv_ops.force_conv_isa(None)
        assert torch.equal(outs["avx2"], outs["scalar"]), (granularity, symmetric)
        torch.testing.assert_close(outs["avx2"], ref, rtol=1e-4, atol=1e-4)


def test_offered_on_avx2_not_on_the_scalar_reference() -> None:
    geom, _, _, spec, _, _ = integer_case(GEOMETRIES[0], True, False)
    try:
        conv_ops.force_conv_isa("avx2")
        assert CONV_A8.supports(spec, geom) is None
        conv_ops.force_conv_isa("scalar")
        assert CONV_A8.supports(spec, geom) == (
            "needs AVX2 or AVX-512 VNNI (the kernels' path is forced to scalar)"
        )
    finally:
        conv_ops.force_conv_isa(None)


@pytest.mark.parametrize("symmetric", [True, False])
def test_activation_codes_identical_on_every_path(symmetric: bool) -> None:
    """The AVX2 path quantizes with intrinsics (GCC does not vectorize the scalar loop's
    narrowing for AVX2): ties, both clamps, huge values, infinities, NaN (to the low code) and
    -0.0 give the scalar path's codes, in both memory layouts and with tails of every block
    (37 channels, 30 pixels); finite values also match `quantize`'s."""
    g = torch.Generator().manual_seed(2)
    x = torch.randint(-300, 300, (2, 37, 5, 6), generator=g).float() / 2  # many exact halves
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e30, -0.0, 3e6, 4e6])
    x.view(-1)[: special.numel() * 40 : 40] = special
    paths = [p for p in ("scalar", "avx2", "avx512_vnni") if conv_ops.conv_isa_supported(p)]
    outs = {}
    for path in paths:
        conv_ops.force_conv_isa(path)
        try:
            outs[path] = [
                conv_ops.quantize_u8_nhwc(src, 0.75, 0 if symmetric else 131, 8, symmetric)
                for src in (x, x.contiguous(memory_format=torch.channels_last))
            ]
        finally:
            conv_ops.force_conv_isa(None)
    for path in paths[1:]:
        for got, want in zip(outs[path], outs["scalar"], strict=True):
            assert torch.equal(got, want), path
    nan_at = x.isnan()
    assert (outs["avx2"][0][nan_at] == 0).all()  # the low code (plus 128 when symmetric)
    finite = x.isfinite()
    zero = 0 if symmetric else 131
    flat = x.nan_to_num().reshape(1, -1)
    want = quantize(flat, torch.tensor([[0.75]]), torch.tensor([[zero]]), flat.shape, 8, symmetric)
    want = (want.reshape(x.shape) + (128 if symmetric else 0)).to(torch.uint8)
    assert torch.equal(outs["avx2"][0][finite], want[finite])
