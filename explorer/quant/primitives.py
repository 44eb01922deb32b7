"""Quantization primitives: one code path for every granularity, driven by a block size.

A 2-D tensor ``[N, K]`` is cut into blocks of ``(bn, bk)``; each block gets one scale (and, when
asymmetric, one integer zero point). Per-tensor is the block ``(N, K)``, per-channel ``(1, K)``,
per-group ``(1, G)``, per-token activations ``(1, K)`` over the flattened tokens. The verbs come in
the order gpt-fast and torchao use: `choose_qparams` → `quantize` → `dequantize`, plus
`fake_quantize` for QAT, whose rounding passes gradients straight through (Bengio et al. 2013) and
whose scale may be learned as in LSQ (Esser et al., arXiv 1902.08153).

Conventions (assumed everywhere, tested exactly):
- codes: symmetric ``q ∈ [-2^(b-1), 2^(b-1)-1]`` with zero point 0 and ``scale = amax / qmax``;
  asymmetric ``q ∈ [0, 2^b-1]`` with an integer zero point ``z`` and ``scale = (max-min)/(2^b-1)``,
  the range always widened to include 0 so that 0 is exact.
- ``x ≈ scale * (q - z)``; rounding is round-half-to-even (``torch.round``).
- scales are rounded to their storage dtype *before* quantizing, so what is stored is what was used,
  and clamped away from zero so that all-zero and constant blocks quantize exactly, with no NaN.
"""

from __future__ import annotations

import torch

from explorer.errors import QuantizationError
from explorer.quant.config import QuantConfig

SCALE_EPS = torch.finfo(torch.float32).tiny


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    if symmetric:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def block_size(config: QuantConfig, shape: tuple[int, int]) -> tuple[int, int]:
    """The block ``(bn, bk)`` of a weight of ``shape = (N, K)`` under ``config``'s granularity."""
    n, k = shape
    if config.granularity == "tensor":
        return n, k
    if config.granularity == "channel":
        return 1, k
    assert config.group_size is not None
    return 1, config.group_size


def scale_dtype_for(config: QuantConfig) -> torch.dtype:
    """Groups store bf16 scales (16 bits per group, fp32's range so tiny weights keep their
    scale); per-tensor and per-channel scales are few and stay fp32."""
    return torch.bfloat16 if config.granularity == "group" else torch.float32


def blocks(x: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    n, k = x.shape
    bn, bk = block
    if n % bn or k % bk:
        raise QuantizationError(f"block {block} does not tile a tensor of shape {(n, k)}")
    return x.reshape(n // bn, bn, k // bk, bk)


def _expand(q: torch.Tensor) -> torch.Tensor:
    """Broadcast per-block qparams ``[N/bn, K/bk]`` to the 4-D block view."""
    return q[:, None, :, None]


FINITE_BAND = 1 << 22


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise naming ``name`` if ``x`` holds NaN or Inf. Checked 4 M values at a time: a mask of
    a whole vocabulary head, summed (as int64), would cost twice the head's fp32 bytes."""
    flat = x.reshape(-1)
    if all(
        bool(torch.isfinite(flat[i : i + FINITE_BAND]).all())
        for i in range(0, flat.numel(), FINITE_BAND)
    ):
        return
    count = int((~torch.isfinite(x)).sum())
    if count:
        nans = int(torch.isnan(x).sum())
        raise QuantizationError(
            f"{name} has {count} non-finite value(s) ({nans} NaN, {count - nans} Inf) "
            f"out of {x.numel()}; fix the weights before quantizing"
        )


def block_minmax(x: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    v = blocks(x, block)
    return v.amin(dim=(1, 3)), v.amax(dim=(1, 3))


def choose_qparams(
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    bits: int,
    symmetric: bool,
    scale_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32 values exactly representable in ``scale_dtype``) and int32 zero point."""
    qmin, qmax = qrange(bits, symmetric)
    min_val = torch.minimum(min_val.float(), torch.zeros_like(min_val, dtype=torch.float32))
    max_val = torch.maximum(max_val.float(), torch.zeros_like(max_val, dtype=torch.float32))
    if symmetric:
        amax = torch.maximum(-min_val, max_val)
        scale = amax / qmax
    else:
        scale = (max_val - min_val) / (qmax - qmin)
    scale = _store_scale(scale, scale_dtype)
    if symmetric:
        zero = torch.zeros_like(scale, dtype=torch.int32)
    else:
        zero = (qmin - torch.round(min_val / scale)).clamp(qmin, qmax).to(torch.int32)
    return scale, zero


def _store_scale(scale: torch.Tensor, scale_dtype: torch.dtype) -> torch.Tensor:
    """Round the scale to its storage dtype, *up* where rounding to nearest would shrink it: a
    smaller scale would clip the top of the block by up to 1.5 steps instead of half a step."""
    scale = scale.clamp_min(SCALE_EPS)
    if scale_dtype == torch.float32:
        return scale
    stored = scale.to(scale_dtype)
    low = stored.float() < scale
    if bool(low.any()):
        bits = stored.view(torch.int16)  # positive floats: the next pattern is the next value
        stored = torch.where(low, bits + 1, bits).view(scale_dtype)
    return stored.float().clamp_min(SCALE_EPS)


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    block: tuple[int, int],
    bits: int,
    symmetric: bool,
) -> torch.Tensor:
    """Integer codes (int32, same shape as ``x``): ``clamp(round(x / scale) + z, qmin, qmax)``."""
    qmin, qmax = qrange(bits, symmetric)
    v = blocks(x.float(), block)
    q = torch.round(v / _expand(scale)) + _expand(zero)
    return q.clamp(qmin, qmax).to(torch.int32).reshape(x.shape)


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    block: tuple[int, int],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    v = blocks(q, block).to(dtype)
    out = (v - _expand(zero).to(dtype)) * _expand(scale).to(dtype)
    return out.reshape(q.shape)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even in the forward pass, identity in the backward pass."""
    return x + (torch.round(x) - x).detach()


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    block: tuple[int, int],
    bits: int,
    symmetric: bool,
) -> torch.Tensor:
    """``dequantize(quantize(x))`` in float, differentiable: the gradient flows straight through
    the rounding to ``x`` inside the clipping range (zero outside) and, as in LSQ, to ``scale``."""
    qmin, qmax = qrange(bits, symmetric)
    v = blocks(x, block)
    s = _expand(scale)
    z = _expand(zero).to(x.dtype)
    q = torch.clamp(round_ste(v / s) + z, qmin, qmax)
    return ((q - z) * s).reshape(x.shape)
