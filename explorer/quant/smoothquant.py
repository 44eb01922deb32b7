"""SmoothQuant (Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for
Large Language Models", arXiv 2211.10438): migrate activation outliers into the weights so that
int8 activations with one scale per tensor hold.

In transformers a few hidden channels carry activations up to 20 times larger than the others
(LLM.int8(), Dettmers et al., arXiv 2208.07339), in every token. A per-tensor int8 scale is set
by those channels, and the other channels are left with a handful of levels. Weights are easy to
quantize by comparison. SmoothQuant divides each input channel ``j`` by

    s_j = max|X_j|^α / max|W_j|^(1−α)

and multiplies the weight's column ``j`` by it: ``x Wᵀ = (x / s)(W diag(s))ᵀ``. ``α`` sets how
much of the difficulty moves (0.5 splits it evenly; the paper's default). ``max|X_j|`` comes from
the calibration inputs; a channel that was always zero there keeps ``s_j = 1``.

The rescaled weight is then quantized by round-to-nearest with the config's grid, and the
activations by the config's int8 scheme (per-tensor static or dynamic, or per token). The ``1/s``
is kept on the layer as an fp32 ``input_scale`` (K,) that multiplies the input before the
kernel; in a deployment it is folded into the preceding LayerNorm, which the reference code does
for OPT/BLOOM/Llama blocks by name.

Imports: torch and `explorer.quant`.
"""

from __future__ import annotations

from typing import Any

import torch

from explorer.errors import QuantizationError
from explorer.quant.config import QuantConfig
from explorer.quant.observers import InputStatistics
from explorer.quant.primitives import check_finite
from explorer.quant.qtensor import QuantizedWeight

MIN_MAGNITUDE = 1e-5
"""Floor of the weight and activation magnitudes and of ``s`` (as the reference clamps them)."""


def smoothing_scales(act_max: torch.Tensor, w: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s_j = max|X_j|^α / max|W_j|^(1−α)`` (float32, (K,)); 1 where the input was all zero."""
    w_max = w.detach().float().abs().amax(dim=0).clamp_min(MIN_MAGNITUDE)  # (K,)
    a_max = act_max.float()
    s = (a_max.clamp_min(MIN_MAGNITUDE).pow(alpha) / w_max.pow(1.0 - alpha)).clamp_min(
        MIN_MAGNITUDE
    )
    return torch.where(a_max > 0, s, torch.ones_like(s))


def smoothquant_quantize(
    w: torch.Tensor, stats: InputStatistics, config: QuantConfig, name: str = "weight"
) -> tuple[QuantizedWeight, torch.Tensor, dict[str, Any]]:
    """The stored weight ``Q(W diag(s))`` and the input scale ``1/s`` (fp32, (K,))."""
    weight = w.detach().float()
    check_finite(weight, name)
    if tuple(stats.abs_max.shape) != (weight.shape[1],):
        raise QuantizationError(
            f"{name}: input statistics have {stats.abs_max.shape[0]} channels, "
            f"expected {weight.shape[1]}"
        )
    s = smoothing_scales(stats.abs_max, weight, config.smooth_alpha)
    qw = QuantizedWeight.from_float(weight * s, config, name)
    return qw, (1.0 / s).float(), {"max_input_ratio": _spread(stats.abs_max)}


def _spread(act_max: torch.Tensor) -> float:
    """Largest over median channel magnitude of the inputs: how outlier-heavy they were."""
    seen = act_max[act_max > 0]
    return float(seen.max() / seen.median()) if seen.numel() else 1.0
