"""Our int8 convolutions (`explorer.kernels.conv_ops`: ``int8-conv-native``, the implicit GEMM on
NHWC codes, and ``int8-dwconv-native``, the depthwise one) on every instruction-set path this
CPU has: exact integer sums against int64 arithmetic (channel tails, padding, stride 2,
dilation, a 4x4 RGB stem, extreme operands), bit-identical results across paths and memory
layouts, and close to the float reference with dynamic activations (per tensor and per pixel)."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from test_conv import GEOMETRIES, exact_case, geometry  # this folder is on sys.path (rootdir-less)
from torch import nn

from explorer.kernels import conv_ops
from explorer.kernels.conv_ops import CONV_A8, DWCONV_A8
from explorer.nn import modules
from explorer.nn.modules import QuantConv2d
from explorer.quant.config import QuantConfig

if conv_ops.unavailable_reason() is not None:
    pytest.skip(
        f"native convolution helpers unavailable: {conv_ops.unavailable_reason()}",
        allow_module_level=True,
    )

DENSE = [c for c in GEOMETRIES if c[6] == 1]  # odd channels, stride 2, dilation, the stem
DEPTHWISE = [c for c in GEOMETRIES if c[6] == c[0] == c[1]]
CASES = DENSE + DEPTHWISE + [(67, 67, (3, 3), (1, 1), (1, 1), (1, 1), 67, (5, 6))]
"""Plus 67 channels: every block width of the depthwise kernel (64, 48, 32, 16, 8, tail)."""
PATHS = {"scalar": (), "avx2": ("avx2", "fma"), "avx512_vnni": ("avx512f", "avx512_vnni")}
"""Each path of the kernels and the /proc/cpuinfo features it needs."""


@pytest.fixture(params=list(PATHS))
def isa(request: pytest.FixtureRequest):
    """Run the test on path ``request.param``, skipped where the CPU lacks its features."""
    if not conv_ops.conv_isa_supported(request.param):
        pytest.skip(f"this CPU lacks {' / '.join(PATHS[request.param])}: no {request.param} path")
    conv_ops.force_conv_isa(request.param)
    yield request.param
    conv_ops.force_conv_isa(None)


def run(kernel, spec, geom, qw, act, x: torch.Tensor) -> torch.Tensor:
    return kernel.run(kernel.prepare(spec, geom, qw, None, act), x)


@functools.cache
def exact_cases(extreme: bool) -> list[tuple]:
    """`exact_case` of every dense and depthwise geometry, built once for all paths (the int64
    reference is most of the time)."""
    return [(geometry(c)[0], *exact_case(*geometry(c), zero=3, extreme=extreme)) for c in CASES]


@pytest.mark.parametrize("extreme", [False, True])
def test_exact_on_every_path(isa: str, extreme: bool) -> None:
    """Unit scales: the float outputs are the integer sums (zero point 3, so the padding's code
    is not 0); the dense kernel runs its scalar reference wherever AVX2 and VNNI are missing,
    and on AVX2 for these weights, which hold -128 (test_conv_avx2 covers its own path)."""
    for geom, x, qw, spec, act, expected in exact_cases(extreme):
        kernel = DWCONV_A8 if geom.depthwise else CONV_A8
        for src in (x, x.contiguous(memory_format=torch.channels_last)):
            y = run(kernel, spec, geom, qw, act, src)
            assert y.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(y.double(), expected.double()), (isa, geom)


@pytest.fixture(scope="module")
def float_layers() -> list[tuple[QuantConv2d, torch.Tensor]]:
    """Float layers quantized W8A8 (dynamic activations: per tensor, per pixel; symmetric and
    not) with the reference's output and an input (bias included)."""
    torch.manual_seed(0)
    cases = [
        (nn.Conv2d(19, 13, 3, padding=1), "tensor", True),
        (nn.Conv2d(3, 17, 4, stride=2, padding=1), "tensor", False),
        (nn.Conv2d(21, 35, 1), "token", True),  # per token: a patch row is a pixel
        (nn.Conv2d(21, 35, 1), "token", False),
        (nn.Conv2d(5, 19, 3, stride=2, padding=1), "token", False),  # a patch matrix
        (nn.Conv2d(3, 17, 4, stride=2, padding=1), "token", True),
        (nn.Conv2d(21, 21, 3, stride=2, padding=1, groups=21), "tensor", True),
        (nn.Conv2d(20, 20, 3, padding=1, groups=20), "tensor", False),
    ]
    out = []
    for conv, granularity, symmetric in cases:
        config = QuantConfig(act_bits=8, act_granularity=granularity, act_symmetric=symmetric)
        q = QuantConv2d.from_float(conv, config)
        x = torch.randn(2, conv.in_channels, 9, 10) * 3 + 0.5
        q.use_kernel("reference")
        with torch.no_grad():
            ref = q(x)
        name = DWCONV_A8.name if q.geometry.depthwise else CONV_A8.name
        assert getattr(conv_ops, "DWCONV_A8" if q.geometry.depthwise else "CONV_A8").supports(
            q.conv_spec, q.geometry
        ) in (None, "needs AVX2 or AVX-512 VNNI (this CPU lacks avx2)")
        q._state = None
        q.kernel_name = name  # on CPUs without AVX2 too: the dense scalar path still runs
        out.append((q, x, ref))
    return out


def test_dynamic_activations_match_the_reference_and_every_path(float_layers) -> None:
    """The codes and qparams come from C (range, scale, rounding); the outputs are close to the
    float reference's and bit-identical on every path the CPU has."""
    paths = [p for p in PATHS if conv_ops.conv_isa_supported(p)]
    for q, x, ref in float_layers:
        outs = []
        for path in paths:
            conv_ops.force_conv_isa(path)
            try:
                with torch.no_grad():
                    outs.append(q(x))
            finally:
                conv_ops.force_conv_isa(None)
        torch.testing.assert_close(outs[0], ref, rtol=1e-4, atol=1e-4, msg=q.kernel_name)
        for path, y in zip(paths[1:], outs[1:], strict=True):
            assert torch.equal(y, outs[0]), (q.kernel_name, path)


def test_what_they_refuse() -> None:
    geom3, _ = geometry(DENSE[0])
    _, _, spec, _, _ = exact_case(geom3, (5, 5), 0, False)
    wide = conv_ops.ConvGeometry(4, 4, (9, 9), (1, 1), (4, 4), (1, 1), 4)
    _, _, wspec, _, _ = exact_case(wide, (9, 9), 0, False)
    assert (
        DWCONV_A8.supports(wspec, wide) == "at most 64 taps (kh * kw): sums stay exact in float32"
    )
    assert DWCONV_A8.supports(spec, geom3).startswith("depthwise convolutions only")
    huge = conv_ops.ConvGeometry(7282, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1)  # K' = 65,592
    hspec = dataclasses.replace(spec, n=4, k=7282 * 9, block=(1, 7282 * 9))
    why = CONV_A8.supports(hspec, huge)
    assert why == "K (taps x channels, padded to 4) above 65536: int32 sums could overflow"


def test_kernel_choice_is_timed_in_the_input_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer fed channels-last activations (what these kernels hand on) has its kernels
    timed on channels-last input: oneDNN's activation codes cost a transpose on NCHW only."""
    seen = []
    monkeypatch.setattr(
        modules, "choose_conv", lambda *a, channels_last=False, **k: seen.append(channels_last)
    )
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    q = QuantConv2d.from_float(conv, QuantConfig(act_bits=8, act_granularity="tensor"))
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        for src in (x, x.contiguous(memory_format=torch.channels_last)):
            q(src)
            q.select_kernel(36)
    assert seen == [False, True]
