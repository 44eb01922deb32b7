"""Activation quantization for integer-activation kernels: dynamic (per token or per tensor, from
the batch itself) or static (per tensor, from calibration). Same primitives as the weights, so the
reference path and every integer kernel see the same codes."""

from __future__ import annotations

import torch

from explorer.kernels.base import ActQParams, LinearSpec
from explorer.quant.primitives import block_minmax, choose_qparams, dequantize, quantize


def act_qparams(
    x: torch.Tensor, spec: LinearSpec, static: ActQParams | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per row of ``x`` (``[M, 1]`` each; per-tensor rows share one)."""
    assert spec.act_bits is not None
    m = x.shape[0]
    if spec.act_static:
        if static is None:
            raise ValueError("static activation quantization needs calibrated qparams")
        scale = torch.full((m, 1), static.scale, dtype=torch.float32, device=x.device)
        zero = torch.full((m, 1), static.zero, dtype=torch.int32, device=x.device)
        return scale, zero
    block = (1, x.shape[1]) if spec.act_granularity == "token" else tuple(x.shape)
    lo, hi = block_minmax(x, block)
    scale, zero = choose_qparams(lo, hi, spec.act_bits, spec.act_symmetric)
    if spec.act_granularity == "tensor":
        scale, zero = scale.expand(m, 1), zero.expand(m, 1)
    return scale, zero


def quantize_activation(
    x: torch.Tensor, spec: LinearSpec, static: ActQParams | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes ``q`` (int32 ``[M, K]``), scale and zero point (``[M, 1]``): ``x ≈ s * (q - z)``."""
    assert spec.act_bits is not None
    scale, zero = act_qparams(x, spec, static)
    q = quantize(x, scale, zero, (1, x.shape[1]), spec.act_bits, spec.act_symmetric)
    return q, scale, zero


def to_int8_domain(
    q: torch.Tensor, zero: torch.Tensor, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric 8-bit codes live in [0, 255]; shift codes and zero point by -128 into int8."""
    if symmetric:
        return q.to(torch.int8), zero
    return (q - 128).to(torch.int8), zero - 128


def fake_quantize_activation(
    x: torch.Tensor, spec: LinearSpec, static: ActQParams | None
) -> torch.Tensor:
    q, scale, zero = quantize_activation(x, spec, static)
    return dequantize(q, scale, zero, (1, x.shape[1]))
