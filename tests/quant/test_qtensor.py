"""`QuantizedWeight`: stored codes, dequantization against a float64 reference, true byte counts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.errors import QuantizationError
from explorer.quant.config import QuantConfig
from explorer.quant.packing import unpack
from explorer.quant.primitives import block_minmax, block_size, choose_qparams, scale_dtype_for
from explorer.quant.qtensor import QuantizedWeight

GROUP = 32
CASES = [
    (bits, symmetric, granularity)
    for bits in range(2, 9)
    for symmetric in (True, False)
    for granularity in ("tensor", "channel", "group")
]


def make_config(bits: int, symmetric: bool, granularity: str, group: int = GROUP) -> QuantConfig:
    return QuantConfig(
        weight_bits=bits,
        granularity=granularity,
        group_size=group if granularity == "group" else None,
        symmetric=symmetric,
    )


def reference_codes_and_zero(
    qw: QuantizedWeight, n_blocks: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``q`` and zero points ``z`` (int64) read from the stored tensors by the documented
    format: below 8 bits a packed unsigned bitstream holding ``q + 2^(b-1)`` (symmetric) or ``q``
    (asymmetric); at 8 bits int8 holding ``q`` (symmetric) or ``q - 128`` (asymmetric), zero too.
    A symmetric weight has ``z = 0`` and stores no zero."""
    n, k = qw.shape
    bits, sym = qw.bits, qw.symmetric
    if bits == 8:
        assert qw.data.dtype == torch.int8 and qw.data.shape == (n, k)
        raw = qw.data.to(torch.int64)
        offset = 0 if sym else -128
    else:
        assert qw.data.dtype == torch.uint8 and qw.data.dim() == 1
        raw = unpack(qw.data, bits, n * k).to(torch.int64).reshape(n, k)
        offset = 2 ** (bits - 1) if sym else 0
    q = raw - offset
    if sym:
        assert qw.zero is None
        z = torch.zeros(n_blocks, dtype=torch.int64)
    elif bits == 8:
        assert qw.zero is not None and qw.zero.dtype == torch.int8
        z = qw.zero.to(torch.int64).reshape(n_blocks) + 128
    else:
        assert qw.zero is not None and qw.zero.dtype == torch.uint8
        z = unpack(qw.zero, bits, n_blocks[0] * n_blocks[1]).to(torch.int64).reshape(n_blocks)
    return q, z


def expand(p: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    return p.repeat_interleave(block[0], dim=0).repeat_interleave(block[1], dim=1)


@pytest.mark.parametrize(("bits", "symmetric", "granularity"), CASES)
@settings(deadline=None, max_examples=4)
@given(
    n=st.integers(1, 9),
    groups=st.integers(1, 5),
    magnitude=st.sampled_from([1e-6, 1.0, 300.0]),
    seed=st.integers(0, 2**31),
)
def test_from_float_codes_dequantize_and_bytes(
    bits: int, symmetric: bool, granularity: str, n: int, groups: int, magnitude: float, seed: int
) -> None:
    k = GROUP * groups
    cfg = make_config(bits, symmetric, granularity)
    w = torch.randn((n, k), generator=torch.Generator().manual_seed(seed)) * magnitude
    w_before = w.clone()
    qw = QuantizedWeight.from_float(w, cfg, name="blocks.0.mlp.fc1")
    assert torch.equal(w, w_before)  # the input is not modified

    block = block_size(cfg, (n, k))
    n_blocks = (n // block[0], k // block[1])
    assert qw.shape == (n, k) and qw.bits == bits and qw.block == block
    assert qw.scale.shape == n_blocks
    assert qw.scale.dtype == (torch.bfloat16 if granularity == "group" else torch.float32)

    # Codes: read back by the documented format, within the code range.
    q, z = reference_codes_and_zero(qw, n_blocks)
    codes = qw.codes()
    assert codes.dtype == torch.int32 and codes.shape == (n, k)
    assert torch.equal(codes.to(torch.int64), q)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    assert int(q.min()) >= lo and int(q.max()) <= hi
    assert int(z.min()) >= lo and int(z.max()) <= hi

    # Dequantization: scale * (q - z) in float64; fp32 rounds the exact product once (rtol 2^-23).
    ref = (q - expand(z, block)).double() * expand(qw.scale.double(), block)
    torch.testing.assert_close(qw.dequantize().double(), ref, rtol=2**-23, atol=0.0)
    # And it is a faithful quantization of w: within half a step, plus at the ends of a group the
    # range lost to a bf16 scale rounded down (unit roundoff 2^-8, times the 2^b - 1 steps);
    # 1e-6 of |w| covers fp32 rounding of w / s and of the product.
    s = expand(qw.scale.double(), block)
    err = (w.double() - ref).abs()
    slack = (2**bits - 1) * 2.0**-8 * 1.01 if granularity == "group" else 0.0
    assert torch.all(err <= s * (0.5 + slack) * (1 + 1e-6) + 1e-6 * w.double().abs())

    # Bytes: what tensors() ships, and the formula.
    shipped = sum(t.numel() * t.element_size() for t in qw.tensors().values())
    n_scales = n_blocks[0] * n_blocks[1]
    scale_bytes = n_scales * (2 if granularity == "group" else 4)
    zero_bytes = 0 if symmetric else -(-n_scales * bits // 8)
    assert qw.nbytes == shipped == -(-n * k * bits // 8) + scale_bytes + zero_bytes
    names = set(qw.tensors("fc1.").keys())
    assert names == ({"fc1.qweight", "fc1.scale"} | (set() if symmetric else {"fc1.zero"}))


@pytest.mark.parametrize(
    ("symmetric", "group", "bits_per_weight"),
    [
        (True, 32, 4.5),  # 4 + 16/32: one bf16 scale per 32 weights
        (True, 128, 4.125),  # 4 + 16/128
        (False, 32, 4.625),  # 4 + 16/32 + 4/32: plus a packed 4-bit zero point
        (False, 128, 4.15625),  # 4 + 16/128 + 4/128
    ],
)
def test_int4_bits_per_weight(symmetric: bool, group: int, bits_per_weight: float) -> None:
    n, k = 64, 4096
    w = torch.randn((n, k), generator=torch.Generator().manual_seed(9))
    qw = QuantizedWeight.from_float(w, make_config(4, symmetric, "group", group))
    assert qw.nbytes * 8 / (n * k) == bits_per_weight


def test_int8_per_channel_bytes() -> None:
    n, k = 16, 256
    w = torch.randn((n, k), generator=torch.Generator().manual_seed(10))
    assert QuantizedWeight.from_float(w, make_config(8, True, "channel")).nbytes == n * k + 4 * n
    asym = QuantizedWeight.from_float(w, make_config(8, False, "channel"))
    assert asym.nbytes == n * k + 4 * n + n


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weight_names_the_layer(bad: float) -> None:
    w = torch.randn(4, 64)
    w[2, 5] = bad
    with pytest.raises(QuantizationError) as info:
        QuantizedWeight.from_float(w, make_config(4, True, "group"), name="blocks.7.attn.qkv")
    assert "blocks.7.attn.qkv" in str(info.value)
    assert "1 non-finite" in str(info.value)


def test_group_that_does_not_tile_raises() -> None:
    w = torch.randn(4, 100)
    with pytest.raises(QuantizationError, match="100"):
        QuantizedWeight.from_float(w, make_config(4, True, "group"))


@pytest.mark.parametrize("symmetric", [True, False])
def test_explicit_qparams_override_calibration(symmetric: bool) -> None:
    """Passing the qparams calibration would choose gives the same stored weight (QAT path)."""
    w = torch.randn((8, 128), generator=torch.Generator().manual_seed(11))
    cfg = make_config(4, symmetric, "group")
    block = block_size(cfg, (8, 128))
    lo, hi = block_minmax(w, block)
    scale, zero = choose_qparams(lo, hi, 4, symmetric, scale_dtype_for(cfg))
    a = QuantizedWeight.from_float(w, cfg)
    b = QuantizedWeight.from_float(w, cfg, qparams=(scale, zero))
    assert torch.equal(a.data, b.data) and torch.equal(a.scale, b.scale)
    assert (a.zero is None) == (b.zero is None)
    if a.zero is not None and b.zero is not None:
        assert torch.equal(a.zero, b.zero)
    # Halving the scale doubles the codes (until they clip).
    c = QuantizedWeight.from_float(w, cfg, qparams=(scale / 2, zero))
    assert torch.equal(c.scale.float(), (scale / 2).to(torch.bfloat16).float())
    assert not torch.equal(c.codes(), a.codes())


@pytest.mark.parametrize(
    "config",
    [
        QuantConfig(weight_bits=8),
        QuantConfig(weight_bits=4, granularity="group", group_size=32),
        QuantConfig(weight_bits=3, granularity="group", group_size=128, symmetric=False),
        QuantConfig(weight_bits=4, granularity="tensor"),
        QuantConfig(weight_bits=2, symmetric=False),
    ],
    ids=lambda c: c.name,
)
def test_a_large_matrix_quantized_in_bands_stores_the_same_bytes(
    config: QuantConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bands of rows (so that a vocabulary head's intermediates never exist whole) give the
    bytes one call over the whole matrix gives: 1,001 rows in bands of 64, the last one short."""
    import explorer.quant.qtensor as qtensor

    w = torch.randn(1001, 256, generator=torch.Generator().manual_seed(0)) * 0.05
    monkeypatch.setattr(qtensor, "BAND_ELEMENTS", 64 * 256)
    assert qtensor._chunk_rows(tuple(w.shape), (1, 32)) == 64
    banded = QuantizedWeight.from_float(w, config)
    monkeypatch.setattr(qtensor, "BAND_ELEMENTS", 1 << 40)
    whole = QuantizedWeight.from_float(w, config)
    assert banded.shape == whole.shape and banded.block == whole.block
    for a, b in ((banded.data, whole.data), (banded.scale, whole.scale)):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert (banded.zero is None) == config.symmetric == (whole.zero is None)
    if banded.zero is not None:
        assert torch.equal(banded.zero, whole.zero)
    whole_float, whole_bf16 = whole.dequantize(), whole.dequantize(torch.bfloat16)
    monkeypatch.setattr(qtensor, "BAND_ELEMENTS", 64 * 256)  # dequantized in bands too
    assert torch.equal(banded.dequantize(), whole_float)
    assert torch.equal(banded.dequantize(torch.bfloat16), whole_bf16)
