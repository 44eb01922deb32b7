"""Activation-aware weight scaling (AWQ; Lin et al., "AWQ: Activation-aware Weight Quantization
for LLM Compression and Acceleration", arXiv 2306.00978).

A few input channels carry much larger activations than the rest, and the weights they multiply
matter most: their rounding error is multiplied by those large inputs. Scaling such a weight
column up by ``s_j`` before rounding and the input down by ``s_j`` leaves the float function
unchanged (``x W ᵀ = (x / s) (W diag(s))ᵀ``) but shrinks the column's *relative* rounding error,
as long as the group's scale, set by its largest weight, does not grow with it.

AWQ picks ``s = mean|x|^α`` per input channel (normalised by ``sqrt(max s · min s)``, as the
reference code does) and searches ``α`` on a grid ``0, 1/n, …, (n−1)/n`` for the one whose
rounded, rescaled weight ``Q(W diag(s)) diag(s)⁻¹`` gives the smallest output error on the
calibration inputs. ``α = 0`` is plain round-to-nearest, so the search never does worse than RTN
on the calibration set. The output error of a weight off by ``Δ`` is ``tr(Δ H Δᵀ)`` with
``H = XᵀX`` (`InputStatistics.output_error`), so the search uses every calibration row at the
cost of one (N, K)·(K, K) product per grid point, and never keeps the inputs themselves.

AWQ's second step searches the clipping range of every weight group (every row, per channel)
the same way: the range the config's calibration picks (the full range for ``minmax``) is shrunk
by ``1, 0.95, …, 0.55`` and each group keeps the factor with the smallest error of *its* share of
the output, ``e_g H_gg e_gᵀ`` with ``H_gg`` the group's diagonal block of the Gram matrix, as the
reference computes it on sampled tokens. Per-tensor grids skip it (one range for every group).

One difference from the reference: the error is measured at the layer's output, not at the
output of the transformer block (the reference searches one scale for q, k and v together,
against the attention output).

The ``1/s`` has to reach the input. Folding it into the previous operation (a LayerNorm whose
output feeds only these layers) is free at run time but needs the model's graph; here it is kept
on the layer as an fp32 ``input_scale`` (K,) that multiplies the input before the kernel, stored
and counted in the size like every other buffer.

Imports: torch and `explorer.quant`.
"""

from __future__ import annotations

from typing import Any

import torch

from explorer.errors import QuantizationError
from explorer.quant.config import QuantConfig
from explorer.quant.observers import InputStatistics, weight_range
from explorer.quant.primitives import (
    block_size,
    blocks,
    check_finite,
    choose_qparams,
    dequantize,
    quantize,
    scale_dtype_for,
)
from explorer.quant.qtensor import QuantizedWeight, round_to_nearest

MIN_SALIENCE = 1e-4
"""Smallest scale before normalisation (the reference clamps ``mean|x|^α`` here)."""
CLIP_SHRINK = tuple(1.0 - 0.05 * i for i in range(10))
"""Clipping factors searched per group (the reference's ``max_shrink=0.5`` over a grid of 20)."""


def awq_candidate_scales(mean_abs: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = max(mean|x|^α, 1e-4)``, normalised so that ``max s · min s = 1`` (float32, (K,))."""
    s = mean_abs.float().pow(alpha).clamp_min(MIN_SALIENCE)
    return s / (s.max() * s.min()).sqrt()


def awq_search(
    w: torch.Tensor, stats: InputStatistics, config: QuantConfig
) -> tuple[torch.Tensor, float, list[float]]:
    """The per-input-channel scales (K,) with the smallest calibration output error, their
    ``α``, and the output error (mean over rows of ``‖xΔᵀ‖²``) at every grid point."""
    if stats.gram is None:
        raise QuantizationError("AWQ needs the Gram matrix of the layer's inputs")
    weight = w.detach().float()  # (N, K)
    gram = stats.gram.float()  # (K, K)
    mean_abs = stats.mean_abs
    errors: list[float] = []
    best: tuple[float, torch.Tensor, float] | None = None
    for i in range(config.awq_grid):
        alpha = i / config.awq_grid
        s = awq_candidate_scales(mean_abs, alpha)  # (K,)
        delta = weight - round_to_nearest(weight * s, config) / s  # (N, K)
        error = float(((delta @ gram) * delta).sum()) / stats.rows
        errors.append(error)
        if best is None or error < best[0]:
            best = (error, s, alpha)
    assert best is not None
    return best[1], best[2], errors


def awq_clip(
    w: torch.Tensor, gram: torch.Tensor, config: QuantConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group scale and zero point (as `choose_qparams` lays them out) of the clipping factor
    in `CLIP_SHRINK` whose rounding error ``e_g`` gives each group's smallest ``e_g H_gg e_gᵀ``.
    ``w`` (N, K) is the weight as it will be rounded (already rescaled); ``gram`` (K, K) is the
    Gram matrix of the inputs it will see (rescaled likewise)."""
    assert config.weight_bits is not None
    bits, sym, sdtype = config.weight_bits, config.symmetric, scale_dtype_for(config)
    n, k = w.shape
    block = block_size(config, (n, k))
    lo, hi = weight_range(w, config, block)  # (N/bn, K/bk)
    if block[0] != 1:  # per-tensor: one range for every group, nothing to choose per group
        return choose_qparams(lo, hi, bits, sym, sdtype)
    g = block[1]
    h_blocks = torch.stack([gram[i : i + g, i : i + g] for i in range(0, k, g)])  # (G, g, g)
    v = blocks(w, block)  # (N, 1, G, g)
    best_err = torch.full_like(lo, float("inf"))
    best = choose_qparams(lo, hi, bits, sym, sdtype)
    for shrink in CLIP_SHRINK:
        scale, zero = choose_qparams(lo * shrink, hi * shrink, bits, sym, sdtype)
        deq = dequantize(quantize(w, scale, zero, block, bits, sym), scale, zero, block)
        e = (v - blocks(deq, block))[:, 0]  # (N, G, g)
        err = torch.einsum("ngi,gij,ngj->ng", e, h_blocks, e)  # (N, G)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = (torch.where(better, scale, best[0]), torch.where(better, zero, best[1]))
    return best


def awq_quantize(
    w: torch.Tensor, stats: InputStatistics, config: QuantConfig, name: str = "weight"
) -> tuple[QuantizedWeight, torch.Tensor, dict[str, Any]]:
    """The stored weight ``Q(W diag(s))`` (scales searched, then clipping ranges) and the input
    scale ``1/s`` (fp32, (K,)); the report gives the chosen ``alpha``."""
    assert config.weight_bits is not None
    weight = w.detach().float()
    check_finite(weight, name)
    if tuple(stats.abs_sum.shape) != (weight.shape[1],):
        raise QuantizationError(
            f"{name}: input statistics have {stats.abs_sum.shape[0]} channels, "
            f"expected {weight.shape[1]}"
        )
    s, alpha, _ = awq_search(weight, stats, config)
    scaled = weight * s  # (N, K)
    gram = stats.gram.float() / (s[:, None] * s[None, :])  # of the inputs x / s
    scale, zero = awq_clip(scaled, gram, config)
    bits, sym = config.weight_bits, config.symmetric
    block = block_size(config, tuple(scaled.shape))
    q = quantize(scaled, scale, zero, block, bits, sym)
    qw = QuantizedWeight.from_codes(
        q, scale.to(scale_dtype_for(config)), None if sym else zero, bits, sym, block
    )
    return qw, (1.0 / s).float(), {"alpha": alpha}
