"""Fidelity of an output to its float reference. SQNR = 20·log10(‖x‖ / ‖x − y‖) in dB, as in
torchao's tests; computed in float64 so that the metric itself adds no error."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN and infinity replaced by None, through mappings, lists and tuples
    (tuples become lists). JSON has no form for non-finite numbers, and an exact layer's
    +inf SQNR is recorded as "no noise measured" (None), never as a huge number."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def sqnr_db(reference: torch.Tensor, output: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB; +inf when the output is exact."""
    ref = reference.detach().double().reshape(-1)
    out = output.detach().double().reshape(-1)
    if ref.shape != out.shape:
        raise ValueError(
            f"shapes differ: reference {tuple(reference.shape)}, output {tuple(output.shape)}"
        )
    noise = torch.linalg.vector_norm(ref - out).item()
    signal = torch.linalg.vector_norm(ref).item()
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 20.0 * math.log10(signal / noise)


def cosine_similarity(reference: torch.Tensor, output: torch.Tensor) -> float:
    ref = reference.detach().double().reshape(-1)
    out = output.detach().double().reshape(-1)
    denom = torch.linalg.vector_norm(ref) * torch.linalg.vector_norm(out)
    return 1.0 if denom == 0 else float(ref @ out / denom)
