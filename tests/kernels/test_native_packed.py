"""Repacked weights (`native.pack_int8`, `native.pack_int4`) and the instruction-set switch.

The layouts are checked byte by byte against their definition, and every path that reads them
(AVX-512 VNNI, AVX-VNNI, AVX2, scalar) against int64 references: exact for the integer products,
bit-identical to the row-major kernels for the fused epilogues. Shapes have tails: N not a
multiple of the 16-row panel, K not a multiple of the 4-byte step (int8), several groups per
row and groups that end inside a 64-element block (int4)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from explorer import machine
from explorer.errors import KernelError
from explorer.kernels import native

pytestmark = pytest.mark.skipif(not native.available(), reason="native kernels unavailable")
EPS = 1e-8


def int8s(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-128, 128, shape, generator=g, dtype=torch.int8)


def exact(xq: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
    return xq.long() @ wq.long().T


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """int [N, K] in [0, 15] -> uint8 [N, K/2], element 2j in the low nibble of byte j."""
    c = codes.long()
    return (c[:, 0::2] | (c[:, 1::2] << 4)).to(torch.uint8)


SHAPES_8 = [(1, 1, 1), (3, 15, 7), (2, 17, 64), (9, 33, 4099), (1, 16, 4096), (13, 40, 130)]


@pytest.mark.parametrize(("m", "n", "k"), SHAPES_8)
def test_int8_layout_round_trips_and_holds_row_sums(m: int, n: int, k: int) -> None:
    wq = int8s((n, k), n + k)
    packed = native.pack_int8(wq)
    panels, steps = -(-n // 16), -(-k // 4)
    assert packed.data.numel() == panels * steps * 64 + panels * 16 * 4
    assert torch.equal(native.unpack_int8(packed), wq)
    # element (n, k) sits at ((panel * steps + k // 4) * 16 + row) * 4 + k % 4
    codes = packed.data[: panels * steps * 64].view(torch.int8)
    assert (
        codes[(((n - 1) // 16 * steps + (k - 1) // 4) * 16 + (n - 1) % 16) * 4 + (k - 1) % 4]
        == (wq[n - 1, k - 1])
    )
    sums = packed.data[panels * steps * 64 :].view(torch.int32)[:n]
    assert torch.equal(sums.long(), wq.long().sum(1))


@pytest.mark.parametrize(("m", "n", "k"), SHAPES_8)
def test_int8_gemm_on_packed_weights_is_exact(packed_isa: str, m: int, n: int, k: int) -> None:
    xq, wq = int8s((m, k), k), int8s((n, k), n + k)
    out = native.int8_gemm_packed(xq, native.pack_int8(wq))
    assert out.dtype == torch.int32 and torch.equal(out.long(), exact(xq, wq))


@pytest.mark.parametrize(("xv", "wv"), [(-128, -128), (127, -128), (-128, 127), (127, 127)])
def test_packed_extremes_over_k65536_are_exact(packed_isa: str, xv: int, wv: int) -> None:
    """x + 128 times w wraps int32 past K = 65793; the row-sum correction must undo it."""
    k = 65536
    xq = torch.full((2, k), xv, dtype=torch.int8)
    wq = torch.full((17, k), wv, dtype=torch.int8)
    wq[3] = -wv if wv != -128 else 127
    out = native.int8_gemm_packed(xq, native.pack_int8(wq))
    assert torch.equal(out.long(), exact(xq, wq))


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize(("m", "n", "k"), [(1, 33, 300), (8, 48, 256), (3, 5, 7)])
def test_w8a8_packed_equals_the_row_major_kernel(
    packed_isa: str, sym: bool, m: int, n: int, k: int
) -> None:
    """Same integer sums and the same float64 epilogue: equal bit for bit."""
    g = torch.Generator().manual_seed(m + n + k)
    x = torch.randn(m, k, generator=g) + (0.0 if sym else 0.7)
    wq = int8s((n, k), k)
    ws, bias = torch.rand(n, generator=g) * 0.01, torch.randn(n, generator=g)
    wsum = native.weight_row_sums(wq)
    packed = native.pack_int8(wq)
    kw = {"per_token": True, "symmetric": sym, "eps": EPS}
    y = native.w8a8_packed_dynamic_linear(x, packed, ws, bias, **kw)
    xq, xs = int8s((m, k), 1), torch.rand(m, generator=g) * 0.1
    xz = None if sym else torch.randint(-9, 9, (m,), dtype=torch.int32, generator=g)
    y2 = native.w8a8_packed_linear(xq, xs, xz, packed, ws, bias)
    native.set_isa("scalar")
    assert torch.equal(y, native.w8a8_dynamic_linear(x, wq, ws, wsum, bias, **kw))
    assert torch.equal(y2, native.w8a8_linear(xq, xs, xz, wq, ws, wsum, bias))


def w4_operands(n: int, k: int, group: int, asym: bool, seed: int) -> dict:
    """Codes, unit scales and zero points: every output is an integer the int64 math gives."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k), generator=g)
    zero = (
        torch.randint(0, 16, (n, k // group), generator=g)
        if asym
        else torch.full((n, k // group), 8)
    )
    sums = codes.reshape(n, k // group, group).sum(-1).float()
    return {
        "codes": codes,
        "zero": zero,
        "packed": native.pack_int4(
            pack_nibbles(codes), torch.ones(n, k // group), zero.float() if asym else None, group
        ),
        "zero_term": (sums - group * zero.float()).sum(1),
    }


def test_int4_layout_puts_each_code_where_the_kernels_read_it() -> None:
    n, k, group = 19, 64, 32
    ops = w4_operands(n, k, group, asym=True, seed=1)
    data, codes = ops["packed"].data, ops["codes"]
    panels, steps = 2, k // 8
    for row, kk in [(0, 0), (5, 3), (5, 4), (18, 63), (16, 41)]:
        s, j = kk // 8, kk % 4
        byte = int(data[((row // 16 * steps + s) * 16 + row % 16) * 4 + j])
        assert (byte >> 4 if kk % 8 >= 4 else byte & 0xF) == int(codes[row, kk])
    scales = data[panels * steps * 64 :].view(torch.float32)
    assert scales.numel() == 2 * panels * (k // group) * 16  # scales, then scale x zero
    assert float(scales[(1 * 2 + 1) * 16 + 2]) == 1.0  # row 18, group 1
    assert float(scales[panels * 2 * 16 + (1 * 2 + 1) * 16 + 2]) == float(ops["zero"][18, 1])
    assert float(scales[panels * 2 * 16 + (1 * 2 + 1) * 16 + 3]) == 0.0  # row 19: padding


@pytest.mark.parametrize(
    ("m", "n", "k", "group"),
    [(1, 17, 64, 32), (5, 33, 256, 128), (2, 7, 192, 96), (1, 40, 4096, 128), (6, 16, 96, 32)],
)
@pytest.mark.parametrize("asym", [False, True])
def test_w4a8_on_packed_weights_is_exact(
    packed_isa: str, m: int, n: int, k: int, group: int, asym: bool
) -> None:
    ops = w4_operands(n, k, group, asym, seed=m + n + k)
    xq = int8s((m, k), k)
    zx = torch.randint(-5, 5, (m,), dtype=torch.int32)
    y = native.w4a8_packed_linear(xq, torch.ones(m), zx, ops["packed"], ops["zero_term"])
    w = ops["codes"] - ops["zero"].repeat_interleave(group, dim=1)
    assert torch.equal(y.double(), ((xq.long() - zx.long()[:, None]) @ w.T).double())


def test_w4a8_packed_dynamic_matches_the_row_major_kernel(packed_isa: str) -> None:
    n, k, group = 23, 256, 64
    g = torch.Generator().manual_seed(5)
    codes = pack_nibbles(torch.randint(0, 16, (n, k), generator=g))
    scale = torch.rand(n, k // group, generator=g) * 0.01 + 1e-3
    zero_term = torch.randn(n, generator=g)  # any value: both sides use the same
    x, bias = torch.randn(3, k, generator=g), torch.randn(n, generator=g)
    packed = native.pack_int4(codes, scale, None, group)
    y = native.w4a8_packed_dynamic_linear(x, packed, zero_term, bias, eps=EPS)
    native.set_isa("scalar")
    ref = native.w4a8_dynamic_linear(x, codes, scale, 8 * scale, zero_term, group, bias, eps=EPS)
    assert ((y - ref).norm() / ref.norm()).item() < 1e-6


def test_a_path_the_cpu_lacks_is_refused_naming_the_flag(
    monkeypatch: pytest.MonkeyPatch, isa_skip_reason: Callable
) -> None:
    monkeypatch.setattr(machine, "cpu_flags", lambda: frozenset({"avx2", "fma", "avx512f"}))
    assert native.missing_isa_features("avx512_vnni") == [
        "avx512bw",
        "avx512vl",
        "avx512_vnni",
    ]
    assert isa_skip_reason("avx_vnni") == (
        "avx_vnni not in /proc/cpuinfo flags: the avx_vnni kernels cannot run"
    )
    lacking = [name for name in native.ISAS if not native.isa_supported(name)]
    if not lacking:
        pytest.skip("this CPU runs every path")
    with pytest.raises(KernelError, match=f"cannot force the {lacking[0]} kernels: "):
        native.set_isa(lacking[0])
    assert native.isa() == native.supported_isas()[-1]


def test_every_path_the_cpu_has_is_reported_and_the_best_is_taken() -> None:
    have = native.supported_isas()
    assert have[0] == "scalar" and set(have) <= set(native.ISAS)
    assert native.build_info()["isa"] == have[-1] == native.isa()
    assert native.packed_path() == (have[-1] != "scalar")  # AVX2 reads the panels too


def test_bound_calls_equal_the_checked_ones(packed_isa: str) -> None:
    """A prepared layer's call binds the weights once; the outputs do not change."""
    g = torch.Generator().manual_seed(9)
    n, k = 21, 128
    x = torch.randn(2, 3, k, generator=g)
    wq, ws = int8s((n, k), 3), torch.rand(n, generator=g) * 0.01
    packed8 = native.pack_int8(wq)
    kw = {"per_token": True, "symmetric": False, "eps": EPS}
    bound8 = native.bind_w8a8_packed_dynamic(packed8, ws, None, **kw)
    assert torch.equal(bound8(x), native.w8a8_packed_dynamic_linear(x, packed8, ws, None, **kw))
    codes = pack_nibbles(torch.randint(0, 16, (n, k), generator=g))
    packed4 = native.pack_int4(codes, torch.rand(n, 4, generator=g), None, 32)
    zero_term, bias = torch.randn(n, generator=g), torch.randn(n, generator=g)
    bound4 = native.bind_w4a8_packed_dynamic(packed4, zero_term, bias, **kw)
    assert torch.equal(
        bound4(x.transpose(0, 1)),  # not contiguous: copied first
        native.w4a8_packed_dynamic_linear(
            x.transpose(0, 1).contiguous(), packed4, zero_term, bias, **kw
        ),
    )
    with pytest.raises(ValueError, match="x must have last dimension K=128, got shape"):
        bound4(torch.zeros(1, 64))


def test_int4_weights_packed_over_huge_pages_stay_exact() -> None:
    """`pack_int4` asks for huge pages as `pack_int8` does: over several 2 MiB pages the
    layout (codes, scales, scale x zero) and the products come through the collapse intact
    (M = 1 and M = 3)."""
    n, k, group = 2056, 4096, 128  # ~4.3 MiB packed: at least one whole 2 MiB page
    ops = w4_operands(n, k, group, asym=True, seed=7)
    assert ops["packed"].data.numel() > 4 << 20
    w = ops["codes"] - ops["zero"].repeat_interleave(group, dim=1)
    for m in (1, 3):
        xq = int8s((m, k), m)
        y = native.w4a8_packed_linear(xq, torch.ones(m), None, ops["packed"], ops["zero_term"])
        assert torch.equal(y.double(), (xq.long() @ w.T).double())
