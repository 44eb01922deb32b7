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
from explorer.kernels.base import ActQParams, LinearSpec
from explorer.kernels.native_ops import int8_activations
from explorer.kernels.reference import ReferenceKernel
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


def bytes_reference(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """The documented byte layout of the int8-activation kernels, element by element."""
    n, k = codes.shape
    out = torch.zeros(-(-n // 16), -(-k // 32), bits, 16, dtype=torch.int64)
    for row in range(n):
        for col in range(k):
            u, off = int(codes[row, col]), col % 32
            words = out[row // 16, col // 32, :, row % 16]
            words[off // 16] |= (u & 3) << (8 * (off % 4) + 2 * ((off % 16) // 4))
            if bits == 3:
                words[2] |= ((u >> 2) & 1) << (8 * (off % 4) + off // 4)
    return out.to(torch.int32)


@pytest.mark.parametrize("bits", [2, 3])
@pytest.mark.parametrize(("n", "k"), [(1, 1), (17, 33), (16, 64), (5, 100)])
def test_planes_match_the_documented_layouts(bits: int, n: int, k: int) -> None:
    codes = torch.randint(0, 1 << bits, (n, k), generator=torch.Generator().manual_seed(n + k))
    assert torch.equal(lowbit.pack_planes(codes, bits), planes_reference(codes, bits))
    in_bytes = lowbit.pack_planes(codes, bits, byte_layout=True)
    assert torch.equal(in_bytes, bytes_reference(codes, bits))


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
    assert float((y.double() - ref).abs().max()) <= 1e-4
    assert torch.equal(y[64:], lowbit.wo_linear(x[64:], packed, bias))


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


# --- int8 activations ------------------------------------------------------------------------

A8_CASES = {  # name: (config, n, k); activation modes vary with the weights
    "w2a8 channel, K=100, per token": (QuantConfig(weight_bits=2, act_bits=8), 37, 100),
    "w3a8 g32 asym, per tensor asym": (
        QuantConfig(
            weight_bits=3,
            granularity="group",
            group_size=32,
            symmetric=False,
            act_bits=8,
            act_granularity="tensor",
            act_symmetric=False,
        ),
        33,
        128,
    ),
    "w2a8 g64 asym, static asym": (
        QuantConfig(
            weight_bits=2,
            granularity="group",
            group_size=64,
            symmetric=False,
            act_bits=8,
            act_granularity="tensor",
            act_symmetric=False,
            act_mode="static",
        ),
        20,
        640,
    ),
    "w3a8 tensor, per token asym": (
        QuantConfig(weight_bits=3, granularity="tensor", act_bits=8, act_symmetric=False),
        17,
        96,
    ),
}
REF64 = ReferenceKernel(torch.float64)


def exact_a8(x: torch.Tensor, spec: LinearSpec, act, qw: QuantizedWeight, bias: torch.Tensor):
    """The kernel's function in int64 then float64: xs * sum_g s * sum_k (u - z)(xq - zx) + b."""
    xq, xs, _, zx = int8_activations(x, spec, act)
    zx = torch.zeros(x.shape[0], dtype=torch.int64) if zx is None else zx.long()
    xs = xs.reshape(-1).double().expand(x.shape[0])
    n, k = qw.shape
    g = qw.block[1]
    u = (
        qw.stored_codes().long()
        - qw.stored_zero().long().repeat_interleave(qw.block[0], 0)[:, torch.arange(k) // g]
    )
    xc = xq.long() - zx[:, None]  # [M, K]
    dots = (xc[:, None, :] * u[None]).reshape(x.shape[0], n, k // g, g).sum(-1)  # exact
    scale = qw.scale.double().repeat_interleave(qw.block[0], 0)  # [N, K/G]
    return xs[:, None] * (dots.double() * scale[None]).sum(-1) + bias.double()


@pytest.mark.parametrize("name", list(A8_CASES))
@pytest.mark.parametrize("m", [1, 15])  # 15: register tiles of 8, 4 and 2 rows, then one row
def test_a8_matches_int64_and_the_float64_reference(isa: str, name: str, m: int) -> None:
    """Integer part exact: against the int64 sums within float32's rounding of the per-group
    scale products (rel 1e-6); against the float64 reference (fake-quantized activations)
    within 1e-5 of the output's norm, as for W4A8. N = 37, 33: two panels at a time, then one;
    dynamic activations are quantized in C, static ones in torch."""
    config, n, k = A8_CASES[name]
    gen = torch.Generator().manual_seed(n + k)
    qw = QuantizedWeight.from_float(torch.randn(n, k, generator=gen), config)
    bias = torch.randn(n, generator=gen)
    spec = LinearSpec.from_config(config, n, k)
    act = ActQParams(scale=0.02, zero=3) if config.act_mode == "static" else None
    kernel = KERNELS[f"int{config.weight_bits}-w{config.weight_bits}a8-native"]
    x = torch.randn(m, k, generator=gen)
    y = kernel.run(kernel.prepare(spec, qw, bias, act), x).double()
    exact = exact_a8(x, spec, act, qw, bias)
    assert bool(((y - exact).abs() <= 1e-6 * exact.abs().max() + 1e-6).all())
    ref = REF64.run(REF64.prepare(spec, qw, bias, act), x).double()
    assert float((y - ref).norm() / ref.norm()) <= 1e-5


@pytest.mark.parametrize("name", [n for n, (c, _, _) in A8_CASES.items() if c.act_mode != "static"])
def test_a8_quantizing_in_c_gives_the_torch_paths_outputs(name: str) -> None:
    """Dynamic activations quantized in C (qe_lb8_dyn_linear) make the codes, scales and zero
    points the torch quantizer makes, so the outputs are the same bit for bit; leading
    dimensions are kept, and two threads (units of two panels each) give the same bits."""
    config, n, k = A8_CASES[name]
    gen = torch.Generator().manual_seed(7)
    qw = QuantizedWeight.from_float(torch.randn(n, k, generator=gen), config)
    bias = torch.randn(n, generator=gen)
    spec = LinearSpec.from_config(config, n, k)
    kernel = KERNELS[f"int{config.weight_bits}-w{config.weight_bits}a8-native"]
    state = kernel.prepare(spec, qw, bias, None)
    assert state.call is not None
    x = torch.randn(2, 5, k, generator=gen)
    xq, xs, _, zx = int8_activations(x.reshape(10, k), spec, None)
    in_torch = lowbit.a8_linear(xq, xs, zx, state.packed, state.bias)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = kernel.run(state, x)
        torch.set_num_threads(2)
        y2 = kernel.run(state, x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(y1, in_torch.reshape(2, 5, n))
    assert torch.equal(y1, y2)


def test_a8_extreme_codes_and_activations_are_exact(isa: str) -> None:
    """All codes 7 (3-bit) against activations -128 over K = 4096 in one group: the sums the
    kernel keeps (u * 4^s * x, up to 192 * 128 a product, in the one-row kernel) reach their
    largest. 9 rows: one 8-row tile and the one-row kernel."""
    n, k = 16, 4096
    qw = QuantizedWeight.from_codes(
        torch.full((n, k), 7), torch.ones(n, 1), torch.zeros(n, 1), 3, False, (1, k)
    )
    xq = torch.full((9, k), -128, dtype=torch.int8)
    y = lowbit.a8_linear(xq, torch.ones(9), None, lowbit.pack_a8(qw))
    assert torch.equal(y, torch.full((9, n), float(7 * -128 * k)))


def test_supports_names_what_it_cannot_run() -> None:
    kernel = KERNELS["int3-wo-native"]
    g16 = QuantConfig(weight_bits=3, granularity="group", group_size=16)
    assert kernel.supports(LinearSpec.from_config(g16, 8, 64)) == (
        "the group size must be a multiple of 32 or the whole row"
    )
    w3a8 = QuantConfig(weight_bits=3, act_bits=8)
    assert kernel.supports(LinearSpec.from_config(w3a8, 8, 64)) == "weight-only int3"
    assert [k.name for k in candidates(LinearSpec.from_config(w3a8, 8, 64))] == ["int3-w3a8-native"]
    w3a4 = QuantConfig(weight_bits=3, act_bits=4)
    assert KERNELS["int3-w3a8-native"].supports(LinearSpec.from_config(w3a4, 8, 64)) == (
        "int8 activations × int3 weights"
    )
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
