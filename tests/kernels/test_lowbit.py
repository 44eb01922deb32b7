"""Tests for the 2- and 3-bit weight-only kernels (explorer.kernels.lowbit).

The layout is checked bit for bit against a reference written here; the kernel against the
float64 product of the dequantized weights, on every instruction-set path this CPU has (the
`isa` fixture; AVX-VNNI runs the AVX2 code). Tolerance: the kernel sums in float32 (tables of
up to four activations, then lookups per group, then the zero-point term), so the error is
bounded by a few float32 epsilons times the magnitudes it adds, sum_k s |u - z| |x| + ...; we
allow 1e-5 of ``|x| @ (2^bits * s)ᵀ`` (an upper bound of those magnitudes), plus 1e-6.
"""

from __future__ import annotations

import pytest
import torch

from explorer.kernels import lowbit, native
from explorer.kernels.base import LinearSpec
from explorer.kernels.select import KERNELS, candidates
from explorer.measure.bench import kernel_isa
from explorer.nn.convert import quant_modules, quantize_model
from explorer.quant.config import Plan, QuantConfig
from explorer.quant.qtensor import QuantizedWeight

pytestmark = pytest.mark.skipif(not native.available(), reason="native kernels unavailable")
REL_TOL = 1e-5


def planes_reference(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """The documented layout, built element by element: int32 [panels, K/32, bits, 16]."""
    n, k = codes.shape
    panels, blocks = -(-n // 16), -(-k // 32)
    out = [[[[0] * 16 for _ in range(bits)] for _ in range(blocks)] for _ in range(panels)]
    for row in range(n):
        for col in range(k):
            u = int(codes[row, col])
            for b in range(bits):
                if (u >> b) & 1:
                    out[row // 16][col // 32][b][row % 16] |= 1 << (col % 32)
    return torch.tensor(out, dtype=torch.int64).to(torch.int32)  # 2^31 wraps as the C words do


@pytest.mark.parametrize("bits", [2, 3])
@pytest.mark.parametrize(("n", "k"), [(1, 1), (17, 33), (16, 64), (5, 100)])
def test_planes_match_the_documented_layout(bits: int, n: int, k: int) -> None:
    codes = torch.randint(0, 1 << bits, (n, k), generator=torch.Generator().manual_seed(n + k))
    assert torch.equal(lowbit.pack_planes(codes, bits), planes_reference(codes, bits))


def test_pack_refuses_codes_wider_than_the_format() -> None:
    with pytest.raises(ValueError, match="qe_lb_pack rejected"):
        lowbit.pack_planes(torch.full((2, 8), 4), 2)


CASES = {  # name: (config, n, k)
    "w2 channel, K=100 (the group ends inside a block), N odd": (
        QuantConfig(weight_bits=2),
        37,
        100,
    ),
    "w3 channel asym, K=40": (QuantConfig(weight_bits=3, symmetric=False), 9, 40),
    "w2 g32 asym": (
        QuantConfig(weight_bits=2, granularity="group", group_size=32, symmetric=False),
        33,
        128,
    ),
    "w3 g32": (QuantConfig(weight_bits=3, granularity="group", group_size=32), 18, 96),
    "w3 g64 asym": (
        QuantConfig(weight_bits=3, granularity="group", group_size=64, symmetric=False),
        20,
        640,
    ),
    "w2 g128": (QuantConfig(weight_bits=2, granularity="group", group_size=128), 16, 256),
    "w3 g1024 (segments inside a group)": (
        QuantConfig(weight_bits=3, granularity="group", group_size=1024),
        3,
        2048,
    ),
    "w3 tensor asym": (
        QuantConfig(weight_bits=3, granularity="tensor", symmetric=False),
        17,
        96,
    ),
}


@pytest.fixture(scope="module")
def prepared() -> dict[str, tuple[QuantizedWeight, lowbit.PackedLowbit, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    out = {}
    for name, (config, n, k) in CASES.items():
        qw = QuantizedWeight.from_float(torch.randn(n, k, generator=gen), config)
        out[name] = (qw, lowbit.pack(qw), torch.randn(n, generator=gen))
    return out


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("m", [1, 6])  # 6: one 4-row tile and two single rows (AVX-512)
def test_matches_the_float64_reference(isa: str, prepared: dict, name: str, m: int) -> None:
    qw, packed, bias = prepared[name]
    n, k = qw.shape
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    y = lowbit.wo_linear(x, packed, bias)
    ref = x.double() @ qw.dequantize(torch.float64).T + bias.double()
    scale = qw.scale.double().repeat_interleave(qw.block[0], 0)
    scale = scale.repeat_interleave(qw.block[1], 1)  # [N, K]
    bound = x.double().abs() @ (scale * (1 << qw.bits)).T
    assert y.shape == (m, n)
    assert bool(((y.double() - ref).abs() <= REL_TOL * bound + 1e-6).all())
    assert lowbit.path() == {"scalar": "scalar", "avx512_vnni": "avx512"}.get(isa, "avx2")
    # what `explorer bench --json` records for these kernels: the code that ran
    assert kernel_isa("int3-wo-native") == ("avx2" if isa == "avx_vnni" else isa)


def test_more_rows_than_one_pass(prepared: dict) -> None:
    """70 rows: the kernel builds tables for 64 rows a pass, then for the remaining 6."""
    qw, packed, bias = prepared["w2 g32 asym"]
    x = torch.randn(70, qw.shape[1], generator=torch.Generator().manual_seed(2))
    ref = x.double() @ qw.dequantize(torch.float64).T + bias.double()
    y = lowbit.wo_linear(x, packed, bias)
    torch.testing.assert_close(y.double(), ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(y[64:], lowbit.wo_linear(x[64:], packed, bias), rtol=0, atol=0)


def test_batched_input_and_threads_give_the_same_rows(prepared: dict) -> None:
    qw, packed, _ = prepared["w3 g64 asym"]
    x = torch.randn(2, 3, qw.shape[1], generator=torch.Generator().manual_seed(1))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        y2 = lowbit.wo_linear(x, packed)
        torch.set_num_threads(1)
        y1 = lowbit.wo_linear(x, packed)
    finally:
        torch.set_num_threads(threads)
    assert y1.shape == (2, 3, qw.shape[0])
    assert torch.equal(y1, y2)  # every output is summed by one thread in one fixed order
    assert torch.equal(y1[1, 2], lowbit.wo_linear(x[1, 2:3], packed)[0])


def test_supports_names_what_it_cannot_run() -> None:
    kernel = KERNELS["int3-wo-native"]
    g16 = QuantConfig(weight_bits=3, granularity="group", group_size=16)
    assert kernel.supports(LinearSpec.from_config(g16, 8, 64)) == (
        "the group size must be a multiple of 32 or the whole row"
    )
    w3a8 = QuantConfig(weight_bits=3, act_bits=8)
    assert kernel.supports(LinearSpec.from_config(w3a8, 8, 64)) == "weight-only int3"
    w2 = QuantConfig(weight_bits=2, granularity="group", group_size=32)
    assert [k.name for k in candidates(LinearSpec.from_config(w2, 8, 64))] == ["int2-wo-native"]


def test_a_w3_g32_linear_row_is_no_longer_simulated() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 33), torch.nn.ReLU(), torch.nn.Linear(33, 5))
    config = QuantConfig(weight_bits=3, granularity="group", group_size=32)
    qmodel = quantize_model(model, Plan.uniform(config))
    layers = quant_modules(qmodel)
    # the second layer's K = 33 has no group of 32: it falls back to per channel, which the
    # kernel runs too (K need not be a multiple of 32 there)
    assert {name: m.kernel_name for name, m in layers.items()} == {
        "0": "int3-wo-native",
        "2": "int3-wo-native",
    }
    assert not any(m.simulated for m in layers.values())
    x = torch.randn(4, 64)
    with torch.inference_mode():
        y = qmodel[0](x)
        layers["0"].use_kernel("reference")
        ref = qmodel[0](x)
    assert float((y - ref).norm() / ref.norm()) <= 1e-5
