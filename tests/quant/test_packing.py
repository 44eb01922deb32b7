"""Bit packing: exact round trips and the documented LSB-first bitstream layout, every width."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.errors import QuantizationError
from explorer.quant.packing import pack, packed_nbytes, unpack

WIDTHS = range(2, 9)
EDGE_SIZES = [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65]


def reference_pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """The documented layout, written independently: element ``i`` occupies bits
    ``[i*bits, (i+1)*bits)`` of one little-endian bitstream, least significant bit first."""
    codes = codes.astype(np.int64).reshape(-1)
    stream = ((codes[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1)
    return np.packbits(stream, bitorder="little")


def random_codes(n: int, bits: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 1 << bits, (n,), generator=torch.Generator().manual_seed(seed))


@settings(deadline=None, max_examples=150)
@given(
    bits=st.integers(2, 8),
    n=st.sampled_from(EDGE_SIZES) | st.integers(0, 5000),
    seed=st.integers(0, 2**31),
)
def test_round_trip_and_layout_every_width(bits: int, n: int, seed: int) -> None:
    codes = random_codes(n, bits, seed)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.dim() == 1
    assert packed.numel() == (n * bits + 7) // 8 == packed_nbytes(n, bits)
    np.testing.assert_array_equal(packed.numpy(), reference_pack(codes.numpy(), bits))
    out = unpack(packed, bits, n)
    assert out.dtype == torch.uint8
    assert torch.equal(out.to(torch.int64), codes)


@pytest.mark.parametrize("bits", WIDTHS)
def test_round_trip_large_and_extreme_codes(bits: int) -> None:
    n = 1_000_003  # not a multiple of 8: the last word is partial
    codes = random_codes(n, bits, seed=bits)
    codes[:8] = (1 << bits) - 1  # all ones: no carry may leak between neighbours
    codes[8:16] = 0
    packed = pack(codes, bits)
    assert packed.numel() == (n * bits + 7) // 8
    np.testing.assert_array_equal(packed.numpy(), reference_pack(codes.numpy(), bits))
    assert torch.equal(unpack(packed, bits, n).to(torch.int64), codes)


@settings(deadline=None, max_examples=100)
@given(n=st.integers(0, 10**12), bits=st.integers(2, 8))
def test_packed_nbytes_is_ceil_of_bits_over_8(n: int, bits: int) -> None:
    assert packed_nbytes(n, bits) == -(-n * bits // 8)


def test_4bit_layout_by_hand() -> None:
    # Element 2j in the low nibble of byte j, element 2j+1 in the high nibble; odd tail zero-padded.
    packed = pack(torch.tensor([1, 2, 3, 4, 5]), 4)
    assert packed.tolist() == [0x21, 0x43, 0x05]
    assert pack(torch.tensor([15, 0, 0, 15]), 4).tolist() == [0x0F, 0xF0]
    by_hand = torch.tensor([0x21, 0x43, 0x05], dtype=torch.uint8)
    assert unpack(by_hand, 4, 5).tolist() == [1, 2, 3, 4, 5]


def test_2bit_and_3bit_layout_by_hand() -> None:
    # 2 bits: [1, 2, 3, 0 | 3] -> 0b00_11_10_01, then 0b11.
    assert pack(torch.tensor([1, 2, 3, 0, 3]), 2).tolist() == [0b00111001, 0b11]
    # 3 bits straddle bytes: 5 | 3 << 3 | 6 << 6 = 413 = 0x19D -> bytes 0x9D, 0x01.
    assert pack(torch.tensor([5, 3, 6]), 3).tolist() == [0x9D, 0x01]
    assert unpack(torch.tensor([0x9D, 0x01], dtype=torch.uint8), 3, 3).tolist() == [5, 3, 6]
    # 8 bits is the identity.
    assert pack(torch.tensor([0, 255, 17]), 8).tolist() == [0, 255, 17]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_pack_accepts_any_integer_dtype_and_shape(dtype: torch.dtype) -> None:
    codes = random_codes(15, 3, seed=7)
    expected = pack(codes, 3)
    assert torch.equal(pack(codes.to(dtype).reshape(3, 5), 3), expected)


def test_pack_does_not_alias_its_input() -> None:
    codes = torch.tensor([1, 2, 3], dtype=torch.uint8)
    packed = pack(codes, 8)
    packed[0] = 99
    assert codes.tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    ("codes", "bits", "bad"),
    [
        ([0, 16], 4, "16"),
        ([-1, 3], 4, "-1"),
        ([4, 0], 2, "4"),
        ([0, 8], 3, "8"),
        ([256], 8, "256"),
        ([-1], 8, "-1"),
        ([128], 7, "128"),
    ],
)
def test_out_of_range_codes_raise(codes: list[int], bits: int, bad: str) -> None:
    with pytest.raises(QuantizationError) as info:
        pack(torch.tensor(codes, dtype=torch.int32), bits)
    assert bad in str(info.value)
    assert str(bits) in str(info.value)


@pytest.mark.parametrize("bits", WIDTHS)
@pytest.mark.parametrize("n", [1, 9, 100])
def test_wrong_byte_count_raises(bits: int, n: int) -> None:
    packed = pack(random_codes(n, bits, seed=n), bits)
    need = packed_nbytes(n, bits)
    for wrong in (packed[:-1], torch.cat([packed, torch.zeros(1, dtype=torch.uint8)])):
        with pytest.raises(QuantizationError) as info:
            unpack(wrong, bits, n)
        assert f"need {need} bytes" in str(info.value)
        assert f"got {wrong.numel()}" in str(info.value)


def test_unpack_rejects_wrong_dtype_or_shape() -> None:
    packed = pack(torch.tensor([1, 2, 3, 4]), 4)
    with pytest.raises(QuantizationError, match="int8"):
        unpack(packed.to(torch.int8), 4, 4)
    with pytest.raises(QuantizationError, match=r"\(1, 2\)"):
        unpack(packed.reshape(1, 2), 4, 4)


@pytest.mark.parametrize("bits", [0, 1, 9, 16])
def test_unsupported_widths_raise(bits: int) -> None:
    with pytest.raises(QuantizationError, match=f"got {bits}"):
        pack(torch.tensor([0, 1]), bits)
    with pytest.raises(QuantizationError, match=f"got {bits}"):
        unpack(torch.zeros(1, dtype=torch.uint8), bits, 1)
