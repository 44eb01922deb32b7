"""Fidelity of an output to its float reference. SQNR = 20·log10(‖x‖ / ‖x − y‖) in dB, as in
torchao's tests; computed in float64 so that the metric itself adds no error."""

from __future__ import annotations

import math

import torch


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
