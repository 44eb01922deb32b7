"""Calibration: choosing the clipping range that a scale is computed from.

- ``minmax``: the full range. No clipping error, but one outlier stretches the grid for everyone.
- ``percentile``: clip to the p-th percentile of each block (and the (100-p)-th below), trading
  clipping error on a few outliers for rounding error on everything else.
- ``mse``: search a shrink factor per block that minimises the squared quantization error, the
  MSE-optimal clipping of Banner et al. (arXiv 1810.05723) and Krishnamoorthi 2018, section 3.

`weight_range` works per block on a weight; `ActivationObserver` accumulates statistics over
calibration batches for a static per-tensor activation scale; `InputStatistics` accumulates what
the error-compensating PTQ algorithms read from a linear layer's inputs (the Gram matrix
``H = XᵀX`` for GPTQ and AWQ, per-channel mean and max magnitudes for AWQ and SmoothQuant).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from explorer.errors import QuantizationError
from explorer.quant.config import QuantConfig
from explorer.quant.primitives import block_minmax, blocks, choose_qparams, dequantize, quantize

MSE_GRID = tuple(1.0 - 0.025 * i for i in range(21))  # shrink factors 1.0 … 0.5
ACT_SAMPLE_LIMIT = 1 << 20  # values kept for activation percentile / MSE statistics


def weight_range(
    w: torch.Tensor, config: QuantConfig, block: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block clipping range ``(lo, hi)`` of the 2-D weight ``w`` by ``config.calibration``."""
    assert config.weight_bits is not None
    return _range(
        w, block, config.calibration, config.percentile, config.weight_bits, config.symmetric
    )


def _range(
    x: torch.Tensor,
    block: tuple[int, int],
    calibration: str,
    percentile: float,
    bits: int,
    symmetric: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    if calibration == "minmax":
        return block_minmax(x, block)
    if calibration == "percentile":
        return _percentile_range(x, block, percentile)
    if calibration == "mse":
        return _mse_range(x, block, bits, symmetric)
    raise QuantizationError(f"unknown calibration {calibration!r}")


def _percentile_range(
    x: torch.Tensor, block: tuple[int, int], percentile: float
) -> tuple[torch.Tensor, torch.Tensor]:
    v = blocks(x.float(), block)
    nb, bn, kb, bk = v.shape
    flat = v.permute(0, 2, 1, 3).reshape(nb * kb, bn * bk)
    ordered = flat.sort(dim=1).values
    last = flat.shape[1] - 1
    hi_idx = round(percentile / 100.0 * last)
    lo_idx = last - hi_idx
    lo = ordered[:, lo_idx].reshape(nb, kb)
    hi = ordered[:, hi_idx].reshape(nb, kb)
    return lo, hi


def _mse_range(
    x: torch.Tensor, block: tuple[int, int], bits: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = block_minmax(x, block)
    v = blocks(x.float(), block)
    best_err = torch.full_like(lo, float("inf"))
    best_clip = torch.ones_like(lo)
    for clip in MSE_GRID:
        scale, zero = choose_qparams(lo * clip, hi * clip, bits, symmetric)
        y = dequantize(quantize(x, scale, zero, block, bits, symmetric), scale, zero, block)
        err = ((v - blocks(y, block)) ** 2).sum(dim=(1, 3))
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_clip = torch.where(better, torch.full_like(best_clip, clip), best_clip)
    return lo * best_clip, hi * best_clip


class ActivationObserver:
    """Running statistics of one activation over calibration batches (per-tensor).

    Min and max are exact over every batch; percentile and MSE work on an evenly strided sample of
    at most ``ACT_SAMPLE_LIMIT`` values, enough for the 99.99th percentile to be stable.
    """

    def __init__(self, calibration: str, percentile: float, bits: int, symmetric: bool) -> None:
        self.calibration = calibration
        self.percentile = percentile
        self.bits = bits
        self.symmetric = symmetric
        self.batches = 0
        self.min = float("inf")
        self.max = float("-inf")
        self._samples: list[torch.Tensor] = []
        self._kept = 0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1)
        if x.numel() == 0:
            return
        if not bool(torch.isfinite(x).all()):
            raise QuantizationError("calibration activations contain NaN or Inf")
        self.batches += 1
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        if self.calibration != "minmax" and self._kept < ACT_SAMPLE_LIMIT:
            step = max(1, x.numel() // (ACT_SAMPLE_LIMIT // 16))
            sample = x[::step][: ACT_SAMPLE_LIMIT - self._kept].clone()
            self._samples.append(sample)
            self._kept += sample.numel()

    def range(self) -> tuple[float, float]:
        if self.batches == 0:
            raise QuantizationError("activation observer saw no calibration data")
        if self.calibration == "minmax" or not self._samples:
            return self.min, self.max
        sample = torch.cat(self._samples)[None, :]
        lo, hi = _range(
            sample,
            (1, sample.shape[1]),
            self.calibration,
            self.percentile,
            self.bits,
            self.symmetric,
        )
        return float(lo), float(hi)


@dataclass
class InputStatistics:
    """Per-input-channel statistics of one linear layer's inputs ``x`` (rows of K features) over
    calibration batches. ``gram`` is ``Σ xᵀx`` (K, K), each batch's product computed in float32
    and accumulated in float64 (None unless asked for: it is K² numbers); ``abs_sum`` and
    ``abs_max`` are per channel (K,). ``rows``: how many rows (tokens) were seen."""

    features: int
    gram: torch.Tensor | None
    abs_sum: torch.Tensor
    abs_max: torch.Tensor
    rows: int = 0

    @classmethod
    def empty(cls, features: int, gram: bool = True) -> InputStatistics:
        return cls(
            features=features,
            gram=torch.zeros(features, features, dtype=torch.float64) if gram else None,
            abs_sum=torch.zeros(features, dtype=torch.float64),
            abs_max=torch.zeros(features, dtype=torch.float32),
        )

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1, self.features)  # (rows, K)
        if x.shape[0] == 0:
            return
        a = x.abs()
        batch_max = a.amax(dim=0)  # (K,): NaN or Inf anywhere in x shows here
        if not bool(torch.isfinite(batch_max).all()):
            raise QuantizationError("calibration activations contain NaN or Inf")
        if self.gram is not None:
            self.gram += (x.T @ x).double()  # (K, K)
        self.abs_sum += a.sum(dim=0).double()
        self.abs_max = torch.maximum(self.abs_max, batch_max)
        self.rows += x.shape[0]

    @property
    def mean_abs(self) -> torch.Tensor:
        """Mean |x| per input channel (float32, (K,)): AWQ's activation salience."""
        if self.rows == 0:
            raise QuantizationError("input statistics saw no calibration data")
        return (self.abs_sum / self.rows).float()

    def output_error(self, delta: torch.Tensor) -> float:
        """Mean over the calibration rows of ``‖x Δᵀ‖²``: the squared output error of a layer
        whose weight is off by ``delta`` (N, K), from the Gram matrix alone (``tr(Δ H Δᵀ)``)."""
        if self.gram is None:
            raise QuantizationError("these input statistics were collected without the Gram matrix")
        if self.rows == 0:
            raise QuantizationError("input statistics saw no calibration data")
        d = delta.detach().float()  # (N, K)
        return float(((d @ self.gram.float()) * d).sum(dtype=torch.float64)) / self.rows
