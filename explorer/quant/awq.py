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

Differences from the reference: the error is measured at the layer's output, not at the output
of the transformer block (the reference searches one scale for q, k and v together against the
attention output), and the reference's second step, a per-group clipping search, is left to the
config's own calibration (``calibration="mse"`` searches the clipping range per group).

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
from explorer.quant.observers import InputStatistics
from explorer.quant.primitives import check_finite
from explorer.quant.qtensor import QuantizedWeight, round_to_nearest

MIN_SALIENCE = 1e-4
"""Smallest scale before normalisation (the reference clamps ``mean|x|^α`` here)."""


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


def awq_quantize(
    w: torch.Tensor, stats: InputStatistics, config: QuantConfig, name: str = "weight"
) -> tuple[QuantizedWeight, torch.Tensor, dict[str, Any]]:
    """The stored weight ``Q(W diag(s))`` and the input scale ``1/s`` (fp32, (K,)); the report
    gives the chosen ``alpha``."""
    weight = w.detach().float()
    check_finite(weight, name)
    if tuple(stats.abs_sum.shape) != (weight.shape[1],):
        raise QuantizationError(
            f"{name}: input statistics have {stats.abs_sum.shape[0]} channels, "
            f"expected {weight.shape[1]}"
        )
    s, alpha, _ = awq_search(weight, stats, config)
    qw = QuantizedWeight.from_float(weight * s, config, name)
    return qw, (1.0 / s).float(), {"alpha": alpha}
