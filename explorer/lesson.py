"""The teaching computations behind the Learn page: what quantizing one layer's weights does.

Everything here runs the engine's own code path (`explorer.quant.observers.weight_range` →
`explorer.quant.primitives.choose_qparams` → `quantize` → `dequantize`, the steps
`QuantizedWeight.from_float` takes), so what a student sees is what the sweep measured:

- `lesson`: one layer's weights against the grid of values a code can represent. A code ``q`` in
  ``[qmin, qmax]`` stands for ``scale * (q - zero)``; the *scale* is the step between neighbouring
  levels, the *zero point* the code that means 0. Weights between levels are rounded to the
  nearest (rounding error, at most half a step); weights beyond the end levels are clipped
  (clipping error, unbounded), which percentile and MSE calibration accept on a few outliers to
  get a finer step for everything else.
- `compare_granularities`: one scale per tensor, per output channel or per group of weights. A
  finer granularity fits the step to each channel's own range (channels that differ in range by
  10x otherwise waste most levels on the narrow ones), at the cost of storing more scales.
- `fake_vs_real`: fake quantization (float weights and activations rounded onto the grid, then a
  float matmul: what QAT and most papers simulate) against the layer's real integer kernel. They
  compute the same function; they differ only in the order of float operations, so the gap is a
  few float32 ulps of the output (kernels named ``-bf16`` also round activations to bf16, about
  3 significant digits), far below the quantization error itself.

SQNR (signal-to-quantization-noise ratio, ``20 log10(‖w‖ / ‖ŵ - w‖)`` in dB) grows by about
6 dB per bit for a uniform quantizer: each bit halves the step, and with it the rounding error
(20 log10 2 ≈ 6.02), as long as clipping is not what dominates the error.

Imports: `explorer.quant`, `explorer.kernels`, `explorer.nn`, `explorer.measure`,
`explorer.sweep.context` (for the `ModelContext` type only).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from explorer.errors import ExplorerError, QuantConfigError
from explorer.kernels.activation import act_qparams
from explorer.kernels.base import ActQParams, LinearSpec
from explorer.kernels.select import candidates
from explorer.measure.metrics import sqnr_db
from explorer.nn.convert import (
    MIN_CALIBRATION_SAMPLES,
    as_linear,
    in_features,
    quantizable_layers,
    quantize_layer,
)
from explorer.nn.modules import QuantModule, conv_out_hw
from explorer.quant.config import QuantConfig, why_not_applicable
from explorer.quant.observers import ActivationObserver, weight_range
from explorer.quant.primitives import (
    block_size,
    blocks,
    check_finite,
    choose_qparams,
    dequantize,
    fake_quantize,
    qrange,
    quantize,
    scale_dtype_for,
)
from explorer.quant.qtensor import QuantizedWeight

if TYPE_CHECKING:
    from explorer.sweep.context import ModelContext

HISTOGRAM_LIMIT = 20_000  # weights drawn in a histogram; more only slow the browser down
COMPARE_GROUPS = (32, 128)
STATIC_CALIBRATION_SAMPLES = 128  # as `RunSettings.calibration_samples`


class LessonError(ExplorerError, ValueError):
    """A lesson cannot be drawn (unknown layer, channel out of range, ...)."""


# --- the layer's weight ----------------------------------------------------------------------


def _model_of(ctx_or_model: ModelContext | nn.Module) -> nn.Module:
    """The BN-folded model of a context (what the engine quantizes), or the model as given."""
    return ctx_or_model if isinstance(ctx_or_model, nn.Module) else ctx_or_model.folded


def layer_names(ctx_or_model: ModelContext | nn.Module) -> list[str]:
    """The layers a plan can quantize, in model order."""
    return list(quantizable_layers(_model_of(ctx_or_model)))


def _layer(model: nn.Module, layer: str) -> nn.Module:
    layers = quantizable_layers(model)
    if layer not in layers:
        shown = ", ".join(list(layers)[:12]) + (" …" if len(layers) > 12 else "")
        raise LessonError(f"the model has no quantizable layer {layer!r}; it has: {shown}")
    return layers[layer]


def layer_weights(ctx_or_model: ModelContext | nn.Module, layer: str) -> torch.Tensor:
    """The 2-D float weight ``[out, in]`` of ``layer`` as the engine quantizes it: batch norm
    folded (given a `ModelContext`), Conv1D transposed, convolutions ``[out, in/groups*kh*kw]``."""
    module = as_linear(_layer(_model_of(ctx_or_model), layer))
    w = module.weight.detach().float()
    return w.reshape(w.shape[0], -1).clone()


# --- one lesson ------------------------------------------------------------------------------


def _config(
    bits: int, granularity: str, group_size: int | None, symmetric: bool, calibration: str
) -> QuantConfig:
    return QuantConfig(
        weight_bits=bits,
        granularity=granularity,
        group_size=group_size if granularity == "group" else None,
        symmetric=symmetric,
        calibration=calibration,
    )


def _check_weight(weight: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    if weight.dim() != 2 or weight.numel() == 0:
        raise LessonError(f"expected a non-empty 2-D weight, got shape {tuple(weight.shape)}")
    w = weight.detach().float()
    check_finite(w, "the weight")
    why = why_not_applicable(config, w.shape[1])
    if why is not None:
        raise QuantConfigError(f"{why}: choose a group size that divides {w.shape[1]}")
    return w


def _expand(q: torch.Tensor) -> torch.Tensor:
    return q[:, None, :, None]


def _subsample(x: torch.Tensor, limit: int = HISTOGRAM_LIMIT) -> torch.Tensor:
    """Every k-th value, so that at most ``limit`` remain (deterministic, spread evenly)."""
    step = max(1, math.ceil(x.numel() / limit))
    return x.reshape(-1)[::step]


def quantize_weight(weight: torch.Tensor, config: QuantConfig) -> dict[str, Any]:
    """The engine's steps on a 2-D weight: block, clipping range, qparams, codes, dequantized
    weight, and the codes before clamping (to count what was clipped)."""
    w = _check_weight(weight, config)
    assert config.weight_bits is not None
    bits, sym = config.weight_bits, config.symmetric
    block = block_size(config, tuple(w.shape))
    lo, hi = weight_range(w, config, block)
    scale, zero = choose_qparams(lo, hi, bits, sym, scale_dtype_for(config))
    q = quantize(w, scale, zero, block, bits, sym)
    deq = dequantize(q, scale, zero, block)
    unclamped = torch.round(blocks(w, block) / _expand(scale)) + _expand(zero)
    qmin, qmax = qrange(bits, sym)
    clipped = ((unclamped < qmin) | (unclamped > qmax)).reshape(w.shape)
    return {
        "weight": w,
        "block": block,
        "range": (lo, hi),
        "scale": scale,
        "zero": zero,
        "codes": q,
        "dequantized": deq,
        "clipped": clipped,
    }


def lesson(
    weight: torch.Tensor,
    bits: int,
    granularity: str,
    group_size: int | None = None,
    symmetric: bool = True,
    calibration: str = "minmax",
    channel: int | None = None,
    group: int = 0,
    name: str = "",
) -> dict[str, Any]:
    """Quantize ``weight`` and describe it for a histogram.

    The grid belongs to one block: per-tensor the whole weight (``channel=None`` shows all its
    weights, an integer shows that channel's weights on the shared grid); per-channel the row
    ``channel`` (0 when None); per-group group ``group`` of that row, and only that group's
    weights are shown, since no other weight uses its grid. ``sqnr_db``, ``clipped_share`` and
    ``max_abs_error`` cover the whole weight; ``shown_sqnr_db`` the weights shown.
    """
    config = _config(bits, granularity, group_size, symmetric, calibration)
    qd = quantize_weight(weight, config)
    w: torch.Tensor = qd["weight"]
    n, k = w.shape
    if channel is not None and not 0 <= channel < n:
        raise LessonError(f"channel {channel} is out of range: the layer has {n} output channels")
    row = 0 if channel is None else channel
    bn, bk = qd["block"]
    if config.granularity == "group":
        if not 0 <= group < k // bk:
            raise LessonError(f"group {group} is out of range: each channel has {k // bk} groups")
        cols = slice(group * bk, (group + 1) * bk)
        pick: Any = (row, cols)
        where = f"channel {row}, group {group} ({bk} weights)"
    elif config.granularity == "channel" or channel is not None:
        pick = row
        where = f"channel {row} ({k} weights)"
    else:
        pick = slice(None)
        where = f"all {n * k:,} weights"
    shown, shown_deq = w[pick].reshape(-1), qd["dequantized"][pick].reshape(-1)
    codes = qd["codes"][pick].reshape(-1)
    shown_clipped = qd["clipped"][pick].reshape(-1)
    block_index = (row // bn, 0 if config.granularity != "group" else group)
    scale = float(qd["scale"][block_index])
    zero = int(qd["zero"][block_index])
    qmin, qmax = qrange(bits, symmetric)
    levels = torch.arange(qmin, qmax + 1, dtype=torch.float64)
    grid = ((levels - zero) * scale).tolist()  # exact: a float32 times a small integer
    shown64 = shown.double()
    error = (codes.double() - zero) * scale - shown64  # exact dequantized value minus weight
    lo, hi = qd["range"]
    title = " · ".join(p for p in (name, where, config.name) if p)
    return {
        "title": title,
        "config": config.name,
        "bits": bits,
        "levels": qmax - qmin + 1,
        "codes": [qmin, qmax],
        "granularity": config.granularity_name,
        "channel": row if (channel is not None or config.granularity != "tensor") else None,
        "group": group if config.granularity == "group" else None,
        "shape": [n, k],
        "weights": _subsample(shown64).numpy(),
        "error": _subsample(error).numpy(),
        "dequantized": _subsample(shown_deq.double()).numpy(),
        "grid": grid,
        "clip": [grid[0], grid[-1]],
        "range": [float(lo[block_index]), float(hi[block_index])],
        "scale": scale,
        "zero": zero,
        "step": scale,
        "shown_count": int(shown.numel()),
        "sqnr_db": sqnr_db(w, qd["dequantized"]),
        "shown_sqnr_db": sqnr_db(shown, shown_deq),
        "max_abs_error": float((qd["dequantized"].double() - w.double()).abs().max()),
        "clipped_share": float(qd["clipped"].double().mean()),
        "shown_clipped_share": float(shown_clipped.double().mean()),
    }


def compare_granularities(
    weight: torch.Tensor, bits: int, symmetric: bool = True, calibration: str = "minmax"
) -> list[dict[str, Any]]:
    """Per-tensor, per-channel and per-group (32 and 128, where they divide the rows) at
    ``bits``: SQNR, worst error, and the bytes as stored (packed codes, scales, zero points)."""
    k = weight.shape[1] if weight.dim() == 2 else 0
    settings: list[tuple[str, int | None]] = [("tensor", None), ("channel", None)]
    settings += [("group", g) for g in COMPARE_GROUPS if k and k % g == 0 and g < k]
    out = []
    for granularity, group_size in settings:
        config = _config(bits, granularity, group_size, symmetric, calibration)
        w = _check_weight(weight, config)
        qw = QuantizedWeight.from_float(w, config)
        deq = qw.dequantize()
        err = (deq.double() - w.double()).abs()
        out.append(
            {
                "name": config.granularity_name,
                "granularity": granularity,
                "group_size": group_size,
                "scales": int(qw.scale.numel()),
                "sqnr_db": sqnr_db(w, deq),
                "max_abs_error": float(err.max()),
                "mean_abs_error": float(err.mean()),
                "bytes": qw.nbytes,
                "bits_per_weight": 8.0 * qw.nbytes / w.numel(),
            }
        )
    return out


def sqnr_by_bits(
    weight: torch.Tensor,
    granularity: str = "channel",
    group_size: int | None = None,
    symmetric: bool = True,
    calibration: str = "minmax",
    bits: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8),
) -> list[dict[str, Any]]:
    """SQNR of the whole weight at each bit width (about +6 dB per bit, until 2-3 bits)."""
    out = []
    for b in bits:
        config = _config(b, granularity, group_size, symmetric, calibration)
        qd = quantize_weight(weight, config)
        out.append(
            {
                "bits": b,
                "sqnr_db": sqnr_db(qd["weight"], qd["dequantized"]),
                "clipped_share": float(qd["clipped"].double().mean()),
            }
        )
    return out


# --- fake quantization against the real kernel ------------------------------------------------


class _Captured(Exception):
    """Stops the forward pass once the layer's input is in hand."""


def layer_inputs(ctx: ModelContext, layer: str, samples: int) -> torch.Tensor:
    """What ``layer`` receives when the folded float model runs ``samples`` calibration inputs.

    The model is shared between sessions, so the hook only records calls from this thread, and it
    stops the forward pass at the layer (the rest of the model is not needed)."""
    model = ctx.folded
    module = _layer(model, layer)
    x = ctx.calibration_inputs(samples)
    me = threading.get_ident()
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        if threading.get_ident() == me and not captured:
            captured.append(args[0].detach().clone())
            raise _Captured

    handle = module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not captured:
        raise LessonError(f"layer {layer!r} was not called when the model ran its inputs")
    return captured[0]


def _static_act(ctx: ModelContext, layer: str, config: QuantConfig) -> ActQParams | None:
    """Calibrated per-tensor activation qparams, as `calibrate_activations` computes them."""
    if config.act_bits is None or config.act_mode != "static":
        return None
    x = layer_inputs(ctx, layer, STATIC_CALIBRATION_SAMPLES)
    if x.shape[0] < MIN_CALIBRATION_SAMPLES:
        raise QuantConfigError(
            f"static activation quantization needs at least {MIN_CALIBRATION_SAMPLES} "
            f"calibration samples, got {x.shape[0]}; use dynamic activations"
        )
    obs = ActivationObserver(
        config.calibration, config.percentile, config.act_bits, config.act_symmetric
    )
    obs.update(x)
    lo, hi = obs.range()
    scale, zero = choose_qparams(
        torch.tensor([lo]), torch.tensor([hi]), config.act_bits, config.act_symmetric
    )
    return ActQParams(float(scale[0]), int(zero[0]))


def _fake_rows(x2d: torch.Tensor, spec: LinearSpec, act: ActQParams | None) -> torch.Tensor:
    """Activations rounded onto their grid in float (same scales as the integer kernel's)."""
    if spec.act_bits is None:
        return x2d
    scale, zero = act_qparams(x2d, spec, act)
    return fake_quantize(x2d, scale, zero, (1, x2d.shape[1]), spec.act_bits, spec.act_symmetric)


def fake_quantized_output(
    module: nn.Module, config: QuantConfig, x: torch.Tensor, act: ActQParams | None = None
) -> torch.Tensor:
    """The layer computed with fake quantization: weights through `fake_quantize` with the
    engine's qparams, activations likewise (per token over the rows the kernel multiplies, which
    for a convolution are its im2col patches), then a float32 matmul."""
    assert config.weight_bits is not None
    layer = as_linear(module)
    w = layer.weight.detach().float()
    w2d = w.reshape(w.shape[0], -1)  # (N, K)
    n, k = w2d.shape
    block = block_size(config, (n, k))
    lo, hi = weight_range(w2d, config, block)
    scale, zero = choose_qparams(
        lo, hi, config.weight_bits, config.symmetric, scale_dtype_for(config)
    )
    w_fq = fake_quantize(w2d, scale, zero, block, config.weight_bits, config.symmetric)
    spec = LinearSpec.from_config(config, n, k)
    bias = None if layer.bias is None else layer.bias.detach().float()
    x = x.float()
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:  # as `QuantConv2d._grouped`: activations per tensor
            flat = _fake_rows(x.reshape(1, -1), _per_tensor(spec), act)
            return F.conv2d(
                flat.reshape(x.shape),
                w_fq.reshape(w.shape),
                bias,
                layer.stride,
                layer.padding,
                layer.dilation,
                layer.groups,
            )
        b, _, h, wd = x.shape
        cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        rows = cols.transpose(1, 2).reshape(-1, k)  # (B*L, K)
        out = F.linear(_fake_rows(rows, spec, act), w_fq, bias)  # (B*L, N)
        geometry = {k: getattr(layer, k) for k in ("kernel_size", "stride", "padding", "dilation")}
        ho, wo = conv_out_hw(h, wd, geometry)
        return out.reshape(b, ho, wo, n).permute(0, 3, 1, 2)
    rows = x.reshape(-1, k)
    return F.linear(_fake_rows(rows, spec, act), w_fq, bias).reshape(*x.shape[:-1], n)


def _per_tensor(spec: LinearSpec) -> LinearSpec:
    return dataclasses.replace(spec, act_granularity="tensor")


def kernel_options(ctx: ModelContext, layer: str, config: QuantConfig) -> list[str]:
    """The real kernels that can run ``layer`` under ``config`` (empty: it is simulated)."""
    if config.is_float:
        return []
    module = as_linear(_layer(ctx.folded, layer))
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return []
    w = module.weight
    n, k = w.shape[0], w[0].numel()
    if why_not_applicable(config, k) is not None:
        return []
    return [c.name for c in candidates(LinearSpec.from_config(config, n, k))]


def fake_vs_real(
    ctx: ModelContext,
    layer: str,
    config: QuantConfig,
    rows: int = 8,
    kernel: str | None = None,
) -> dict[str, Any]:
    """One layer on ``rows`` calibration samples: float, fake-quantized and real integer outputs.

    The real path is `quantize_layer` (what `quantize_model` builds) running its kernel
    (``kernel`` if given and able, else the layer's default). Returns the kernel, whether the
    layer is simulated (no real kernel: it runs the float reference), the largest and relative
    (``‖fake − real‖ / ‖real‖``) differences, and each output's SQNR against float.
    """
    if config.is_float:
        raise QuantConfigError("choose weight bits: a float layer has nothing to compare")
    module = _layer(ctx.folded, layer)
    why = why_not_applicable(config, in_features(module))
    if why is not None:
        raise QuantConfigError(f"{why} of layer `{layer}`")
    act = _static_act(ctx, layer, config)
    x = layer_inputs(ctx, layer, rows)
    try:
        real_module = quantize_layer(module, config, layer, act)
    except ValueError as exc:
        raise LessonError(str(exc)) from None
    assert isinstance(real_module, QuantModule)
    if kernel is not None and kernel != real_module.kernel_name:
        try:
            real_module.use_kernel(kernel)
        except (KeyError, ValueError) as exc:
            raise LessonError(str(exc).strip("'\"")) from None
    with torch.no_grad():
        reference = as_linear(module)(x.float()).float()
        fake = fake_quantized_output(module, config, x, act)
        real = real_module(x).float()
    diff = (fake.double() - real.double()).abs()
    real_norm = float(torch.linalg.vector_norm(real.double()))
    return {
        "layer": layer,
        "config": config.name,
        "kernel": real_module.kernel_name,
        "simulated": real_module.simulated,
        "candidates": [c.name for c in candidates(real_module.spec)]
        if real_module._kernel_capable()
        else [],
        "samples": int(x.shape[0]),
        "output_shape": list(real.shape),
        "max_abs_diff": float(diff.max()),
        "rel_diff": float(torch.linalg.vector_norm(diff)) / real_norm if real_norm else 0.0,
        "max_abs_output": float(real.abs().max()),
        "sqnr_fake_db": sqnr_db(reference, fake),
        "sqnr_real_db": sqnr_db(reference, real),
        "fake_vs_real_sqnr_db": sqnr_db(real, fake),
    }
