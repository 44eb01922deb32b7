"""The AVX2 path over the repacked weights (no ``vpdpbusd``; see "Repacked weights" in
``qe_kernels.c``).

W4A8 multiplies 4-bit codes with ``vpmaddubsw``, exact only because a code is at most 15: the
extreme operands (code 15 or 0 against -128 and 127, over a whole 4096 row and over groups of
32) must equal the int64 sums bit for bit.  W8A8 sign-extends the weights instead; its register
tiles of 2 to 6 rows at M > 1 are all met here, with N, K and K-block tails.  And a machine
whose best path is AVX2 prepares layers with the panels, not the row-major weights.  The
shared tests in ``test_native_packed.py`` run every layout test on this path too
(`packed_isa`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from explorer.kernels import native
from explorer.kernels.base import LinearSpec
from explorer.kernels.reference import ReferenceKernel
from explorer.kernels.select import KERNELS
from explorer.quant.config import QuantConfig
from explorer.quant.qtensor import QuantizedWeight

pytestmark = pytest.mark.skipif(not native.available(), reason="native kernels unavailable")
REF64 = ReferenceKernel(torch.float64)


@pytest.fixture
def avx2(isa_skip_reason: Callable[[str], str | None]) -> Iterator[None]:
    """Force the AVX2 path (skipped, naming the missing flag, where the CPU lacks it)."""
    reason = isa_skip_reason("avx2")
    if reason:
        pytest.skip(reason)
    try:
        assert native.set_isa("avx2") == "avx2"
        yield
    finally:
        native.set_isa(None)


def nibbles(codes: torch.Tensor) -> torch.Tensor:
    """int [N, K] in [0, 15] -> uint8 [N, K/2], element 2j in the low nibble of byte j."""
    c = codes.long()
    return (c[:, 0::2] | (c[:, 1::2] << 4)).to(torch.uint8)


@pytest.mark.parametrize(("code", "xv"), [(15, -128), (15, 127), (0, -128)])
@pytest.mark.parametrize(("m", "group"), [(1, 4096), (3, 32)])
def test_w4a8_extreme_operands_do_not_saturate(
    avx2: None, code: int, xv: int, m: int, group: int
) -> None:
    n, k = 19, 4096
    codes = torch.full((n, k), code)
    codes[5] = 15 - code  # the other extreme in one row
    ones = torch.ones(n, k // group)
    packed = native.pack_int4(nibbles(codes), ones, None, group)  # zero point 8
    zero_term = (codes.sum(1) - 8 * k).float()
    xq = torch.full((m, k), xv, dtype=torch.int8)
    y = native.w4a8_packed_linear(xq, torch.ones(m), None, packed, zero_term)
    assert torch.equal(y.double(), (xq.long() @ (codes - 8).T).double())
    assert float(y[0, 0]) == (code - 8) * xv * k


@pytest.mark.parametrize(
    ("m", "k", "threads"), [(2, 259, 1), (7, 259, 1), (11, 4099, 1), (12, 259, 2), (67, 259, 1)]
)
def test_w8a8_every_register_tile_is_exact(avx2: None, m: int, k: int, threads: int) -> None:
    """M > 1 runs row tiles of 2 to 6 rows (M = 2; 7 = 3 + 4; 11 = 5 + 6; 12 = 6 + 6; 67 = 7 x
    6 + 5 x 5, two groups of partial sums), with an N tail (a 17th column, 65 on two threads:
    each claims its next panel ahead), a K tail of 3 and, at K = 4099, two K blocks: the int64
    sums exactly, extreme operands included."""
    g = torch.Generator().manual_seed(m)
    n = 65 if threads > 1 else 17
    xq = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    wq = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    xq[0], wq[1] = -128, -128  # -128 x -128 pairs: 32768 each, beyond int16 as a pair sum
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = native.int8_gemm_packed(xq, native.pack_int8(wq))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out.long(), xq.long() @ wq.long().T)


CONFIGS = {
    "int8-w8a8-native": QuantConfig(weight_bits=8, granularity="channel", act_bits=8),
    "int4-w4a8-native": QuantConfig(weight_bits=4, granularity="group", group_size=32, act_bits=8),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_an_avx2_machine_prepares_layers_with_the_panels(avx2: None, name: str) -> None:
    """Forced to AVX2, ``prepare`` repacks (W8A8 keeps no row-major copy) and ``run`` reads
    the panels: within 1e-5 of the float64 reference at M = 1 and M = 5."""
    assert native.packed_path()
    g = torch.Generator().manual_seed(3)
    n, k = 40, 256
    w, bias = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    config, kernel = CONFIGS[name], KERNELS[name]
    qw = QuantizedWeight.from_float(w, config)
    spec = LinearSpec.from_config(config, n, k)
    state = kernel.prepare(spec, qw, bias, None)
    assert isinstance(state.packed, native.PackedInt8 | native.PackedInt4)
    assert state.call is not None  # the bound packed call, dynamic activations
    if name == "int8-w8a8-native":
        assert state.w.wq.numel() == 0
    ref_state = REF64.prepare(spec, qw, bias, None)
    for m in (1, 5):
        x = torch.randn(m, k, generator=g)
        ref = REF64.run(ref_state, x)
        err = float((kernel.run(state, x).double() - ref).norm() / ref.norm())
        assert err <= 1e-5, (m, err)


@pytest.mark.parametrize("group", [32, 128])
@pytest.mark.parametrize("asym", [False, True])
def test_m1_reads_panel_by_panel_to_the_same_floats(avx2: None, group: int, asym: bool) -> None:
    """W4A8 at M = 1 has its own AVX2 kernel, one panel at a time: over 6 panels, the last
    holding 3 rows, a row alone gives the same floats as inside M = 3 (per-token activations,
    the same per-group FMA order); and W8A8's M = 1 tiles of two panels the int64 sums."""
    g = torch.Generator().manual_seed(group + asym)
    n, k = 83, 512
    codes = nibbles(torch.randint(0, 16, (n, k), generator=g))
    scale = torch.rand(n, k // group, generator=g) * 0.01 + 1e-3
    zero = scale * torch.randint(0, 16, (n, k // group), generator=g) if asym else None
    packed = native.pack_int4(codes, scale, zero, group)
    zero_term, bias = torch.randn(n, generator=g), torch.randn(n, generator=g)
    x = torch.randn(3, k, generator=g) + (0.5 if asym else 0.0)
    kw = {"per_token": True, "symmetric": not asym, "eps": 1e-8}
    one = native.w4a8_packed_dynamic_linear(x[:1], packed, zero_term, bias, **kw)
    three = native.w4a8_packed_dynamic_linear(x, packed, zero_term, bias, **kw)
    assert torch.equal(one[0], three[0])
    xq = torch.randint(-128, 128, (1, k), generator=g, dtype=torch.int8)
    wq = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    out = native.int8_gemm_packed(xq, native.pack_int8(wq))
    assert torch.equal(out.long(), xq.long() @ wq.long().T)
