"""`QuantizedWeight`: a 2-D weight as it is stored, packed codes plus scales plus zero points.

Stored codes are unsigned for widths below 8 (``u = q + 2^(b-1)`` when symmetric, so that 4-bit
symmetric codes are the offset-binary nibbles every int4 kernel reads) and signed int8 at 8 bits
(asymmetric 8-bit codes are shifted by -128, zero point too). Either way the weight is
``scale * (stored_code - stored_zero)``, where a symmetric weight's stored zero is the constant
offset and is not stored. Everything a kernel needs can be rebuilt from `tensors()`, and those are
exactly the bytes that ship.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from explorer.quant import packing
from explorer.quant.config import QuantConfig
from explorer.quant.observers import weight_range
from explorer.quant.primitives import (
    block_size,
    check_finite,
    choose_qparams,
    dequantize,
    quantize,
    scale_dtype_for,
)


def code_offset(bits: int, symmetric: bool) -> int:
    """What is added to a code ``q`` before it is stored."""
    if bits == 8:
        return 0 if symmetric else -128
    return (1 << (bits - 1)) if symmetric else 0


@dataclass
class QuantizedWeight:
    shape: tuple[int, int]
    bits: int
    symmetric: bool
    block: tuple[int, int]
    data: torch.Tensor  # int8 [N, K] at 8 bits, else flat uint8 bitstream
    scale: torch.Tensor  # [N/bn, K/bk] in its storage dtype (bf16 for groups, else fp32)
    zero: torch.Tensor | None  # stored zero points, same layout as data; None when symmetric

    @classmethod
    def from_float(
        cls,
        w: torch.Tensor,
        config: QuantConfig,
        name: str = "weight",
        qparams: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> QuantizedWeight:
        """Quantize a 2-D float weight. ``qparams`` (scale, zero) overrides calibration (QAT)."""
        assert config.weight_bits is not None
        w = w.detach().float()
        check_finite(w, name)
        bits, sym = config.weight_bits, config.symmetric
        block = block_size(config, tuple(w.shape))
        sdtype = scale_dtype_for(config)
        if qparams is None:
            lo, hi = weight_range(w, config, block)
            scale, zero = choose_qparams(lo, hi, bits, sym, sdtype)
        else:
            scale = qparams[0].detach().float().clamp_min(torch.finfo(torch.float32).tiny)
            scale = scale.to(sdtype).float()
            zero = qparams[1].detach().round().to(torch.int32)
        rows = _chunk_rows(tuple(w.shape), block)
        if rows >= w.shape[0]:
            q = quantize(w, scale, zero, block, bits, sym)
            return cls.from_codes(q, scale.to(sdtype), None if sym else zero, bits, sym, block)
        # A large matrix (a 151,936-row vocabulary head) is quantized and packed a band of rows
        # at a time: the float intermediates, the int32 codes and the packer's int64 words of
        # one band are alive at once, not of the whole matrix (each would be 0.5-1 GB there).
        # Bands hold a multiple of 8 codes, so their packed bytes concatenate into the stream
        # one call would write.
        off = code_offset(bits, sym)
        parts = []
        for start in range(0, w.shape[0], rows):
            band = slice(start, start + rows)
            s, z = (scale, zero) if block[0] != 1 else (scale[band], zero[band])
            n_rows = min(rows, w.shape[0] - start)
            band_block = (n_rows, block[1]) if block[0] != 1 else block
            q = quantize(w[band], s, z, band_block, bits, sym) + off
            parts.append(q.to(torch.int8) if bits == 8 else packing.pack(q, bits))
        zdata = None
        if not sym:
            zs = zero.to(torch.int32) + off
            zdata = zs.to(torch.int8) if bits == 8 else packing.pack(zs, bits)
        data = torch.cat(parts) if bits != 8 else torch.cat(parts).reshape(w.shape)
        return cls(tuple(w.shape), bits, sym, block, data, scale.to(sdtype), zdata)

    @classmethod
    def from_codes(
        cls,
        q: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor | None,
        bits: int,
        symmetric: bool,
        block: tuple[int, int],
    ) -> QuantizedWeight:
        off = code_offset(bits, symmetric)
        stored = q.to(torch.int32) + off
        zs = None if symmetric else zero.to(torch.int32) + off
        if bits == 8:
            data = stored.to(torch.int8)
            zdata = None if zs is None else zs.to(torch.int8)
        else:
            data = packing.pack(stored, bits)
            zdata = None if zs is None else packing.pack(zs, bits)
        return cls(tuple(q.shape), bits, symmetric, block, data, scale, zdata)

    # --- views -------------------------------------------------------------------------------
    @property
    def n_blocks(self) -> tuple[int, int]:
        return self.shape[0] // self.block[0], self.shape[1] // self.block[1]

    def stored_codes(self) -> torch.Tensor:
        """Stored codes as int32 ``[N, K]`` (unsigned below 8 bits, signed int8 values at 8)."""
        if self.bits == 8:
            return self.data.to(torch.int32)
        n, k = self.shape
        return packing.unpack(self.data, self.bits, n * k).to(torch.int32).reshape(n, k)

    def stored_zero(self) -> torch.Tensor:
        """Stored zero point per block, int32 ``[N/bn, K/bk]`` (the offset when symmetric)."""
        nb = self.n_blocks
        if self.zero is None:
            return torch.full(nb, code_offset(self.bits, True), dtype=torch.int32)
        if self.bits == 8:
            return self.zero.to(torch.int32).reshape(nb)
        return packing.unpack(self.zero, self.bits, nb[0] * nb[1]).to(torch.int32).reshape(nb)

    def codes(self) -> torch.Tensor:
        """The codes ``q`` (int32) before the storage offset."""
        return self.stored_codes() - code_offset(self.bits, self.symmetric)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        n, k = self.shape
        rows = _chunk_rows(self.shape, self.block)
        if rows >= n:
            return dequantize(
                self.stored_codes(), self.scale.float(), self.stored_zero(), self.block, dtype
            )
        # in bands of rows, as `from_float` quantizes: only the output is whole
        out = torch.empty(n, k, dtype=dtype)
        scale, zero = self.scale.float(), self.stored_zero()
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            if self.bits == 8:
                codes = self.data[start:stop].to(torch.int32)
            else:
                first, count = start * k * self.bits // 8, (stop - start) * k
                band = self.data[first : first + packing.packed_nbytes(count, self.bits)]
                codes = packing.unpack(band, self.bits, count).to(torch.int32).view(-1, k)
            if self.block[0] == 1:
                s, z, block = scale[start:stop], zero[start:stop], self.block
            else:
                s, z, block = scale, zero, (stop - start, self.block[1])
            out[start:stop] = dequantize(codes, s, z, block, dtype)
        return out

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        out = {f"{prefix}qweight": self.data, f"{prefix}scale": self.scale}
        if self.zero is not None:
            out[f"{prefix}zero"] = self.zero
        return out

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


BAND_ELEMENTS = 1 << 24
"""Codes quantized and packed at once by `QuantizedWeight.from_float` (16 M: 64 MB of fp32, above
glibc's largest dynamic mmap threshold of 32 MB, so every band's buffers go back to the system
when freed instead of staying in the heap as resident memory)."""


def _chunk_rows(shape: tuple[int, int], block: tuple[int, int]) -> int:
    """Rows per band of `QuantizedWeight.from_float`: all of them for a small matrix, or for a
    block spanning some but not all rows; else a multiple of 8 rows near `BAND_ELEMENTS`."""
    n, k = shape
    if n * k <= 2 * BAND_ELEMENTS or block[0] not in (1, n):
        return n
    return max(8, BAND_ELEMENTS // k // 8 * 8)


def round_to_nearest(w: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """The float weight that round-to-nearest stores for ``w`` under ``config``: equal, bit for
    bit, to ``QuantizedWeight.from_float(w, config).dequantize()``, without packing. The
    error-compensating algorithms compare against it and search with it."""
    assert config.weight_bits is not None
    w = w.detach().float()
    block = block_size(config, tuple(w.shape))
    lo, hi = weight_range(w, config, block)
    scale, zero = choose_qparams(
        lo, hi, config.weight_bits, config.symmetric, scale_dtype_for(config)
    )
    q = quantize(w, scale, zero, block, config.weight_bits, config.symmetric)
    return dequantize(q, scale, zero, block)
