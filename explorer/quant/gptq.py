"""GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers", arXiv 2210.17323): round one column at a time and push each column's rounding
error onto the columns not yet rounded, so that the layer's *output* stays close to float.

The idea (Optimal Brain Quantization, Frantar & Alistarh, arXiv 2208.11580). For a linear layer
with calibration inputs ``X`` (rows), a weight change ``Δ`` (N, K) changes the outputs by
``‖XΔᵀ‖² = tr(Δ H Δᵀ)`` with ``H = XᵀX``: every output row shares ``H``. After column ``j`` is
rounded with error ``w_j − q_j``, the remaining columns that minimise the output error move by
``−(w_j − q_j) / [H⁻¹]_jj · [H⁻¹]_{j, j+1:}``. GPTQ makes this practical:

1. dampening: ``λ = gptq_damp · mean(diag H)`` is added to the diagonal (inputs seen in only a
   few directions would make ``H`` singular); inputs that were always zero (``H_jj = 0``) get a
   zero column and a unit diagonal, as in the reference code;
2. the rows of ``H⁻¹`` that each step needs, with the already-rounded columns eliminated, are the
   rows of the upper Cholesky factor ``U`` of ``H⁻¹`` (``chol(H)`` → ``H⁻¹`` → ``chol(H⁻¹)``);
3. columns go in blocks of ``gptq_block``: inside a block the update is applied at once to the
   block's remaining columns, the columns after the block get one matrix product per block
   (lazy batch updates: the same arithmetic, memory-bound no more);
4. act-order (``act_order``): columns are visited by decreasing ``H_jj`` (the inputs with the
   most energy first, while there are many columns left to absorb their error), and the codes
   are put back in the original order at the end.

The grid is the engine's own: ``weight_range`` (the config's calibration) and ``choose_qparams``.
Per-tensor and per-channel scales are chosen up front from the float weight, as the reference
does. A group's scale is chosen when its first column is reached, from the *current* weights
(updated by every column rounded so far; the reference reads its lazily updated copy, which
misses the updates of the current block when groups are smaller than blocks). With act-order,
groups are chosen up front from the float weight ("static groups", as AutoGPTQ offers), so that
every group stays a contiguous run of columns: the format the int4 kernels read. The codes and
scales go through `QuantizedWeight.from_codes`, so a GPTQ layer is stored exactly as a
round-to-nearest one and runs on the same kernels.

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
    check_finite,
    choose_qparams,
    qrange,
    scale_dtype_for,
)
from explorer.quant.qtensor import QuantizedWeight


def inverse_hessian_factor(gram: torch.Tensor, damp: float, name: str = "weight") -> torch.Tensor:
    """``U`` (float32, upper triangular) with ``UᵀU = (H + λI)⁻¹``, ``λ = damp · mean(diag H)``."""
    h = gram.double().clone()  # (K, K)
    h.diagonal().add_(damp * float(h.diagonal().mean()))
    try:
        lower = torch.linalg.cholesky(h)
        h_inv = torch.cholesky_inverse(lower)
        return torch.linalg.cholesky(h_inv, upper=True).float()
    except torch.linalg.LinAlgError:
        raise QuantizationError(
            f"{name}: the calibration Hessian is not positive definite even with dampening "
            f"{damp}; raise gptq_damp (e.g. to 0.1) or calibrate on more samples"
        ) from None


def gptq_codes(
    w: torch.Tensor, gram: torch.Tensor, config: QuantConfig, name: str = "weight"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ of the 2-D float weight ``w`` (N, K) against the input Gram matrix ``gram`` (K, K).

    Returns the codes ``q`` (int32, (N, K), in the original column order), the scales (float32
    values exactly representable in the config's scale dtype) and the int32 zero points, both
    (N/bn, K/bk) as `choose_qparams` lays them out."""
    assert config.weight_bits is not None
    bits, sym = config.weight_bits, config.symmetric
    qmin, qmax = qrange(bits, sym)
    weight = w.detach().float().clone()  # (N, K)
    check_finite(weight, name)
    n, k = weight.shape
    if tuple(gram.shape) != (k, k):
        raise QuantizationError(
            f"{name}: input statistics are {tuple(gram.shape)}, expected ({k}, {k})"
        )
    block = block_size(config, (n, k))
    if n % block[0] or k % block[1]:
        raise QuantizationError(f"{name}: block {block} does not tile a weight of shape {(n, k)}")
    sdtype = scale_dtype_for(config)
    dynamic_groups = config.granularity == "group" and not config.act_order
    group = block[1]
    if dynamic_groups:
        scale = torch.empty(n, k // group, dtype=torch.float32)
        zero = torch.empty(n, k // group, dtype=torch.int32)
    else:
        lo, hi = weight_range(weight, config, block)
        scale, zero = choose_qparams(lo, hi, bits, sym, sdtype)  # (N/bn, K/bk)

    h = gram.double().clone()
    dead = h.diagonal() == 0
    h.diagonal()[dead] = 1.0
    weight[:, dead] = 0.0
    order = torch.arange(k)
    if config.act_order:
        order = torch.argsort(h.diagonal(), descending=True, stable=True)
        weight = weight[:, order]
        h = h[order][:, order]
    u = inverse_hessian_factor(h, config.gptq_damp, name)  # (K, K)

    def column_qparams(j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero (N,) of the column now at position ``j``."""
        b = int(order[j]) // block[1]
        s, z = scale[:, b], zero[:, b]  # (N/bn,)
        if block[0] > 1:
            s, z = s.repeat_interleave(block[0]), z.repeat_interleave(block[0])
        return s, z

    codes = torch.empty(n, k, dtype=torch.int32)
    step = config.gptq_block
    for i1 in range(0, k, step):
        i2 = min(i1 + step, k)
        w1 = weight[:, i1:i2].clone()  # (N, B): this block, updated column by column
        err1 = torch.zeros_like(w1)  # (N, B): scaled errors, for the lazy update after it
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            if dynamic_groups and j % group == 0:
                current = w1[:, i : i + group]
                if j + group > i2:  # the group runs past the block: bring those columns up to date
                    pending = err1[:, :i] @ u[i1:j, i2 : j + group]
                    current = torch.cat([current, weight[:, i2 : j + group] - pending], dim=1)
                lo, hi = weight_range(current, config, (1, group))
                s_g, z_g = choose_qparams(lo, hi, bits, sym, sdtype)  # (N, 1)
                scale[:, j // group] = s_g[:, 0]
                zero[:, j // group] = z_g[:, 0]
            s, z = column_qparams(j)
            col = w1[:, i]
            q = (torch.round(col / s) + z).clamp(qmin, qmax)  # quantize's formula, per column
            codes[:, j] = q.to(torch.int32)
            e = (col - (q - z) * s) / u1[i, i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            err1[:, i] = e
        weight[:, i2:] -= err1 @ u[i1:i2, i2:]
    if config.act_order:
        codes = codes[:, torch.argsort(order)]
    return codes, scale, zero


def gptq_quantize(
    w: torch.Tensor, stats: InputStatistics, config: QuantConfig, name: str = "weight"
) -> tuple[QuantizedWeight, None, dict[str, Any]]:
    """The layer's stored weight under GPTQ (no input scale; nothing to report besides it)."""
    if stats.gram is None:
        raise QuantizationError(f"{name}: GPTQ needs the Gram matrix of the layer's inputs")
    assert config.weight_bits is not None
    codes, scale, zero = gptq_codes(w, stats.gram, config, name)
    bits, sym = config.weight_bits, config.symmetric
    block = block_size(config, tuple(codes.shape))
    scale = scale.to(scale_dtype_for(config))
    qw = QuantizedWeight.from_codes(codes, scale, None if sym else zero, bits, sym, block)
    return qw, None, {}
