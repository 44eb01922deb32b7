"""Bit packing for every width from 2 to 8, so that stored size is true for every width.

Codes are unsigned integers in ``[0, 2**bits)``. They are written as one little-endian bitstream,
least significant bit first: element ``i`` occupies bits ``[i*bits, (i+1)*bits)``. For 4 bits this
is the familiar two-per-byte layout (element ``2j`` in the low nibble of byte ``j``), for 2 bits
four per byte; 3, 5, 6 and 7 bits straddle byte boundaries. ``packed_nbytes`` is ``ceil(n*bits/8)``.
"""

from __future__ import annotations

import math

import torch

from explorer.errors import QuantizationError


def packed_nbytes(numel: int, bits: int) -> int:
    return math.ceil(numel * bits / 8)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned ``codes`` (any integer dtype, any shape) into a flat uint8 tensor."""
    _check_bits(bits)
    flat = codes.reshape(-1)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise QuantizationError(
            f"codes must lie in [0, {(1 << bits) - 1}] to pack at {bits} bits, "
            f"got range [{int(flat.min())}, {int(flat.max())}]"
        )
    if bits == 8:
        return flat.to(torch.uint8).clone()
    n = flat.numel()
    padded = torch.zeros(math.ceil(n / 8) * 8, dtype=torch.int64, device=codes.device)
    padded[:n] = flat.to(torch.int64)
    # Eight codes of `bits` bits make exactly `bits` bytes: build each 8-code word, then split it.
    shifts = torch.arange(8, device=codes.device, dtype=torch.int64) * bits
    words = (padded.view(-1, 8) << shifts).sum(dim=1)  # (n/8,) < 2**56
    byte_shifts = torch.arange(bits, device=codes.device, dtype=torch.int64) * 8
    out = ((words[:, None] >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)
    return out[: packed_nbytes(n, bits)].clone()


def unpack(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of `pack`: the first ``numel`` codes as a flat uint8 tensor."""
    _check_bits(bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise QuantizationError(
            f"packed data must be a flat uint8 tensor, got {packed.dtype} "
            f"of shape {tuple(packed.shape)}"
        )
    if packed.numel() != packed_nbytes(numel, bits):
        raise QuantizationError(
            f"{numel} codes at {bits} bits need {packed_nbytes(numel, bits)} bytes, "
            f"got {packed.numel()}"
        )
    if bits == 8:
        return packed.clone()
    groups = math.ceil(numel / 8)
    padded = torch.zeros(groups * bits, dtype=torch.int64, device=packed.device)
    padded[: packed.numel()] = packed.to(torch.int64)
    byte_shifts = torch.arange(bits, device=packed.device, dtype=torch.int64) * 8
    words = (padded.view(groups, bits) << byte_shifts).sum(dim=1)
    shifts = torch.arange(8, device=packed.device, dtype=torch.int64) * bits
    codes = (words[:, None] >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1)[:numel].to(torch.uint8)


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise QuantizationError(f"bits must be an integer from 2 to 8, got {bits!r}")
