"""Per-layer sensitivity: how much each layer, quantized *alone*, hurts the model.

For every quantizable layer and every candidate setting (``W8 channel``, ``W4 g32``, ...), the
layer is quantized while every other layer stays float, in two passes: first the cheap weight
SQNR of every pair (no forward pass), then the full metric on the calibration split (never the
held-out split, which the mixed-precision search must not see before verification): the metric
drop against float, the KL divergence from the float outputs, and the layer's output SQNR. Each
pair also gets the bytes that layer stores at that setting and, optionally, the layer's own
latency on the rows it sees in the model's primary workload (real kernel, or its timing twin,
flagged ``simulated``). The metric pass runs the quantized layer on the reference kernel, which
computes the same function as the real kernels (tested in `tests/kernels`) at fp32 GEMM speed.

Models with hundreds of layers (more than `PROXY_LAYERS`) start from a cheap proxy instead of
the metric pass (``mode="auto"``; ``"measured"`` or ``"proxy"`` force one): the layer's weight
error weighted by the energy of its input, ``Σ_j E[x_j²] · ‖W[:, j] − Q(W)[:, j]‖²`` with the
expectation over the calibration tokens, from one float pass with hooks on every layer. It is
the expected squared output error ``E‖(W − Q(W)) x‖²`` of the layer when its input features are
uncorrelated: the diagonal of the Hessian ``E[x xᵀ]`` that GPTQ (Frantar et al., arXiv 2210.17323)
uses in full, the per-channel activation salience AWQ (Lin et al., arXiv 2306.00978) starts from.
It costs one round-to-nearest per layer and setting, no forward pass per layer, and ranks
round-to-nearest weight-only settings (activation quantization and the algorithms change what it
does not see, so proxy mode refuses them). The measured mode computes it too (``proxy`` per cell),
so the two can be compared; on ``tiny-lm`` its Spearman rank correlation with the measured
perplexity drop is in `tests/sweep/test_mixed.py`.

The result is a layer-by-setting table; `to_search_table` turns it into the
`explorer.sweep.search.SensitivityTable` that the knapsack search consumes, with the additive
approximation HAWQ-V3 (Yao et al., arXiv 2011.10680) and HAQ use: a plan's damage is the sum of
its layers' damages.

Imports: `explorer.nn`, `explorer.measure`, `explorer.sweep.context`, `explorer.sweep.search`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from explorer.errors import ExplorerError
from explorer.measure.latency import measure_callable
from explorer.measure.metrics import sqnr_db
from explorer.nn.capture import capture_outputs
from explorer.nn.convert import (
    as_linear,
    in_features,
    quant_modules,
    quantizable_layers,
    quantize_layer,
    quantize_model,
)
from explorer.nn.replay import PrefixRecorder
from explorer.quant.config import (
    ALGORITHMS,
    Plan,
    QuantConfig,
    parse_granularity,
    why_not_applicable,
)
from explorer.quant.qtensor import round_to_nearest
from explorer.sweep.context import FloatReference, ModelContext
from explorer.sweep.search import SensitivityTable
from explorer.sweep.store import finite_or_none

CALIBRATION_EVAL_SAMPLES = {"classification": 512, "lm": 32, "fidelity": 32}
LAYER_TIMING_REPEATS = 20
SQNR_SAMPLES = 64  # samples (images, or sequences) of the first batch kept for output SQNR
PROXY_LAYERS = 100
"""``mode="auto"`` measures models with at most this many quantizable layers, and starts from
the proxy above it (a 0.5 B Qwen2 has 169; tiny-lm and small Llamas a few dozen)."""
MODES = ("auto", "measured", "proxy")


def setting_config(name: str) -> QuantConfig | None:
    """``"W4 g32"``, ``"W8 channel"``, ``"W8A8 token"``, ``"W3 tensor asym"``, ``"W4 g128 gptq"``,
    ``"W4 g128 gptq act-order"``, ``"W4 g128 awq"``, ``"W8A8 channel tensor smoothquant"``,
    ``"fp32"``, ``"bf16"`` → the config (None: fp32)."""
    words = name.split()
    if not words:
        raise ExplorerError("empty setting name")
    head = words[0].lower()
    if head == "fp32":
        return None
    if head == "bf16":
        return QuantConfig.float("bf16")
    bits, _, act = head.partition("a")
    if not bits.startswith("w") or not bits[1:].isdigit():
        raise ExplorerError(
            f"setting {name!r} must look like 'W4 g32', 'W8 channel', 'W8A8 token' or 'fp32'"
        )
    fields: dict[str, Any] = {"weight_bits": int(bits[1:])}
    if act:
        fields["act_bits"] = int(act)
    for word in words[1:]:
        w = word.lower()
        if w in ("sym", "asym"):
            fields["symmetric"] = w == "sym"
        elif w in ("token", "tensor") and "act_bits" in fields and "granularity" in fields:
            fields["act_granularity"] = w
        elif w in ("static", "dynamic"):
            fields["act_mode"] = w
        elif w in ("mse", "percentile", "minmax"):
            fields["calibration"] = w
        elif w in ALGORITHMS:
            fields["algorithm"] = w
        elif w in ("act-order", "actorder"):
            fields["act_order"] = True
        else:
            fields["granularity"], fields["group_size"] = parse_granularity(w)
    if "act_bits" in fields and fields.get("act_mode") == "static":
        fields.setdefault("act_granularity", "tensor")
    return QuantConfig(**fields)


DAMAGES = ("metric_drop", "kl", "cosine_loss", "proxy")
DEFAULT_SETTINGS = ("W8 channel", "W4 g32", "W4 g128", "W3 g32", "W3 g128", "W2 g32")


@dataclass(frozen=True)
class Cell:
    layer: str
    setting: str
    applicable: str | None  # None when it applies, else why not
    size_bytes: int | None = None
    weight_sqnr_db: float | None = None
    output_sqnr_db: float | None = None
    metric: float | None = None
    metric_drop: float | None = None  # damage: perplexity increase, or accuracy lost
    kl: float | None = None
    cosine_loss: float | None = None  # damage without kl or metric (embeddings): 1 - cosine
    latency_ms: float | None = None
    simulated: bool = False
    proxy: float | None = None  # Σ_j E[x_j²]·‖ΔW[:, j]‖² (round-to-nearest weight-only settings)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Sensitivity:
    """The layer-by-setting table, plus what the search needs besides it."""

    model: str
    metric: str | None
    float_metric: float | None
    layers: list[str]
    settings: list[str]
    cells: dict[tuple[str, str], Cell]
    float_layer_bytes: dict[str, int]
    other_bytes: int  # every stored byte outside the swept layers
    other_latency_ms: float | None
    seconds: float
    mode: str = "measured"  # measured (the metric pass) or proxy (see the module docstring)

    def cell(self, layer: str, setting: str) -> Cell:
        return self.cells[(layer, setting)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "metric": self.metric,
            "float_metric": self.float_metric,
            "layers": self.layers,
            "settings": self.settings,
            "cells": [c.to_dict() for c in self.cells.values()],
            "float_layer_bytes": self.float_layer_bytes,
            "other_bytes": self.other_bytes,
            "other_latency_ms": self.other_latency_ms,
            "seconds": self.seconds,
            "mode": self.mode,
        }

    def to_search_table(self, damage: str = "metric_drop") -> SensitivityTable:
        """The search's input; ``damage``: ``metric_drop`` (default), ``kl``, ``cosine_loss``
        (1 - mean cosine to float) or ``proxy``. A model with neither a metric nor kl (an
        embedding model without scored pairs) is searched on ``cosine_loss`` whatever was
        asked, and a table of the proxy mode on ``proxy``."""
        if damage not in DAMAGES:
            raise ExplorerError(f"damage must be one of {', '.join(DAMAGES)}, got {damage!r}")
        measured = {
            d: any(getattr(c, d) is not None for c in self.cells.values() if c.applicable is None)
            for d in DAMAGES
        }
        if not measured[damage] and not measured["metric_drop"] and not measured["kl"]:
            damage = "cosine_loss" if measured["cosine_loss"] else "proxy"

        def grid(attr: str) -> tuple[tuple[Any, ...], ...]:
            return tuple(
                tuple(
                    getattr(self.cells[(layer, s)], attr)
                    if self.cells[(layer, s)].applicable is None
                    else None
                    for s in self.settings
                )
                for layer in self.layers
            )

        latency = grid("latency_ms")
        has_latency = all(v is not None for row in latency for v in row if v is not None) and any(
            v is not None for row in latency for v in row
        )
        return SensitivityTable(
            layers=tuple(self.layers),
            settings=tuple(self.settings),
            damage=grid(damage),
            size_bytes=grid("size_bytes"),
            latency_ms=latency if has_latency else None,
            base_size_bytes=self.other_bytes,
            base_latency_ms=self.other_latency_ms or 0.0,
            metric=self.metric or damage,
        )


def _stored_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _primary_rows(ctx: ModelContext, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Each layer's input in one timed call of the primary workload (the rows its kernel will
    see; a decode workload's set-up prefill is not the timed call)."""
    inputs: dict[str, torch.Tensor] = {}
    modules = dict(ctx.folded.named_modules())
    run = next(iter(ctx.workloads.values()))(ctx.folded)

    def keep(name: str, x: torch.Tensor) -> None:
        inputs[name] = x.detach().clone()

    hooks = [
        modules[n].register_forward_pre_hook(lambda _m, args, n=n: keep(n, args[0])) for n in names
    ]
    try:
        with torch.inference_mode():
            run()
    finally:
        for h in hooks:
            h.remove()
    return inputs


def _time_layer(module: nn.Module, x: torch.Tensor, warmup: int = 3) -> float:
    return measure_callable(lambda: module(x), warmup, LAYER_TIMING_REPEATS).median_ms


def measure_sensitivity(
    ctx: ModelContext,
    settings: Sequence[str] = DEFAULT_SETTINGS,
    *,
    layers: Sequence[str] | None = None,
    full_metric: bool = True,
    latency: bool = True,
    samples: int | None = None,
    calibration_samples: int = 128,
    progress: Callable[[int, int, str], None] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
    mode: str = "auto",
) -> Sensitivity:
    """Quantize each layer alone at each setting (see the module docstring). ``mode``:
    ``measured`` (the metric pass), ``proxy`` (the input-energy-weighted weight error alone),
    or ``auto`` (the proxy above `PROXY_LAYERS` quantizable layers)."""
    t_start = time.perf_counter()
    configs = {s: setting_config(s) for s in settings}
    all_layers = quantizable_layers(ctx.folded)
    mode = resolve_mode(mode, len(all_layers), configs)
    if mode == "proxy":
        full_metric = False
    if layers:
        unknown = [n for n in layers if n not in all_layers]
        if unknown:
            raise ExplorerError(
                f"no quantizable layer named {unknown}; layers: {', '.join(all_layers)}"
            )
        names = list(layers)
    else:
        names = list(all_layers)
    n_eval = samples or CALIBRATION_EVAL_SAMPLES.get(ctx.task, 32)
    x_cal, y_cal = ctx.calibration_split
    if ctx.task == "speech":
        # a speech model's calibration targets are QAT's next-token ids, not the evaluation's
        # utterance indices: its damage is the decoder's KL to float, not a word error rate
        y_cal = None
    x_eval = x_cal[:n_eval]
    y_eval = None if y_cal is None else y_cal[:n_eval]
    b = 256 if ctx.task == "classification" else 8
    batches = [
        (x_eval[i : i + b], None if y_eval is None else y_eval[i : i + b])
        for i in range(0, len(x_eval), b)
    ]
    task = ctx.task_spec or ctx.task
    reference, prefix = None, None
    if full_metric:
        # the float pass also records the blocks' outputs that each cell's pass replays
        recorder = PrefixRecorder()
        with recorder.record(ctx.model):
            reference = FloatReference.compute(ctx.model, task, batches)
        prefix = recorder.cache() if recorder.batches == len(batches) else None
    energy = input_energy(ctx.folded, ctx.task_spec, names, [x for x, _ in batches])
    float_metric = None
    metric_key = ctx.metric
    if reference is not None and reference.stats.task not in ("classification", "lm"):
        metric_key = None  # e.g. embeddings: calibration sentences carry no pair scores
    if reference is not None and metric_key is not None:
        float_metric = (
            reference.stats.accuracy() if metric_key == "accuracy" else reference.stats.perplexity()
        )
    float_outputs = (
        capture_outputs(ctx.folded, names, batches[0][0], rows=SQNR_SAMPLES) if full_metric else {}
    )
    calibration = ctx.calibration_inputs(calibration_samples)
    rows = _primary_rows(ctx, names) if latency else {}
    float_modules = dict(ctx.folded.named_modules())
    float_bytes = {n: _stored_bytes(as_linear(float_modules[n])) for n in names}
    total_float = sum(t.numel() * t.element_size() for t in ctx.folded.state_dict().values())

    cells: dict[tuple[str, str], Cell] = {}
    total = len(names) * len(settings)
    done = 0
    for name in names:
        module = as_linear(float_modules[name])
        w = module.weight.detach().reshape(module.weight.shape[0], -1)
        k = in_features(float_modules[name])
        float_latency = _time_layer(module, rows[name]) if latency and name in rows else None
        for setting, config in configs.items():
            if cancelled():
                raise ExplorerError("sensitivity analysis cancelled")
            conv = isinstance(float_modules[name], nn.Conv2d)
            why = None if config is None else why_not_applicable(config, k, conv)
            if why is not None:
                cells[(name, setting)] = Cell(name, setting, why)
                done += 1
                continue
            if config is None:
                measured = mode == "measured"
                cells[(name, setting)] = Cell(
                    name,
                    setting,
                    None,
                    size_bytes=float_bytes[name],
                    metric=float_metric,
                    metric_drop=0.0 if measured else None,
                    kl=0.0 if measured else None,
                    latency_ms=float_latency,
                    proxy=0.0,
                )
                done += 1
                continue
            q = proxy_weight(w, config)
            damage = None
            if q is not None and name in energy:
                damage = weighted_error(w, q, energy[name], float_modules[name])
            if mode == "proxy":
                assert q is not None  # resolve_mode refused the settings the proxy cannot see
                cells[(name, setting)] = _proxy_cell(name, setting, module, config, w, q, damage)
                done += 1
                if latency and name in rows:
                    qlayer = quantize_layer(module, config, name)
                    lat, sim = _layer_latency(qlayer, rows[name])
                    cells[(name, setting)] = _replace(
                        cells[(name, setting)], latency_ms=lat, simulated=sim
                    )
                if progress:
                    progress(done, total, f"{name} {setting}: proxy")
                continue
            plan = Plan(default=None, rules=((name, config),))
            qmodel = quantize_model(
                ctx.model, plan, calibration_data=calibration, act_cache=ctx.act_cache
            )
            qlayer = qmodel.get_submodule(name)
            qmods = quant_modules(qmodel)
            weight_sqnr = sqnr_db(w, qmods[name].effective_weight()) if name in qmods else None
            cell = Cell(
                name,
                setting,
                None,
                size_bytes=_stored_bytes(qlayer),
                weight_sqnr_db=finite_or_none(weight_sqnr),
                proxy=damage,
            )
            cells[(name, setting)] = cell
            done += 1
            if progress:
                progress(done, total, f"{name} {setting}: weight SQNR")
            if latency and name in rows:
                lat, sim = _layer_latency(qlayer, rows[name])
                cells[(name, setting)] = _replace(cell, latency_ms=lat, simulated=sim)
            if reference is not None:
                for module in qmods.values():  # the same function at fp32 GEMM speed
                    module.use_kernel("reference")
                replays = prefix.install(ctx.model, qmodel) if prefix is not None else []
                cells[(name, setting)] = _full_metric(
                    cells[(name, setting)],
                    reference,
                    qmodel,
                    name,
                    metric_key,
                    float_metric,
                    float_outputs.get(name),
                )
                if prefix is not None:
                    prefix.check(replays)
            if progress:
                progress(done, total, f"{name} {setting}")
    other_latency = None
    if latency:
        run = next(iter(ctx.workloads.values()))(ctx.folded)
        whole = measure_callable(run, 3, LAYER_TIMING_REPEATS).median_ms
        layer_sum = sum(
            cells[(n, s)].latency_ms or 0.0
            for n in names
            for s in settings
            if configs[s] is None and cells[(n, s)].latency_ms is not None
        )
        if layer_sum == 0.0:
            layer_sum = sum(_time_layer(as_linear(float_modules[n]), rows[n]) for n in names)
        other_latency = max(0.0, whole - layer_sum)
    return Sensitivity(
        model=ctx.name,
        metric=metric_key,
        float_metric=float_metric,
        layers=names,
        settings=list(settings),
        cells=cells,
        float_layer_bytes=float_bytes,
        other_bytes=total_float - sum(float_bytes.values()),
        other_latency_ms=other_latency,
        seconds=time.perf_counter() - t_start,
        mode=mode,
    )


def _replace(cell: Cell, **changes: Any) -> Cell:
    return Cell(**{**asdict(cell), **changes})


def _layer_latency(qlayer: nn.Module, x: torch.Tensor) -> tuple[float, bool]:
    simulated = bool(getattr(qlayer, "simulated", False))
    timed = qlayer.timing_twin() if simulated else qlayer
    if hasattr(timed, "select_kernel"):
        rows = x.numel() // x.shape[-1] if x.dim() != 4 else x.shape[0]
        timed.select_kernel(rows)
    return _time_layer(timed, x), simulated


def _full_metric(
    cell: Cell,
    reference: FloatReference,
    qmodel: nn.Module,
    name: str,
    metric_key: str | None,
    float_metric: float | None,
    float_output: torch.Tensor | None,
) -> Cell:
    """The metric pass: one forward over the calibration batches, which also captures the
    layer's output on the first batch for its output SQNR (against ``float_output``)."""
    captured: dict[str, torch.Tensor] = {}

    def keep(out: torch.Tensor) -> None:
        if "y" not in captured:
            captured["y"] = out.detach()[:SQNR_SAMPLES].clone()

    handle = qmodel.get_submodule(name).register_forward_hook(lambda _m, _a, out: keep(out))
    try:
        evaluation = reference.evaluate(qmodel, n_boot=100, seed=0)
    finally:
        handle.remove()
    metric = evaluation.metrics.get(metric_key) if metric_key else None
    cosine = evaluation.metrics.get("cosine")
    drop = None
    if metric is not None and float_metric is not None:
        drop = float_metric - metric if metric_key == "accuracy" else metric - float_metric
    output_sqnr = None
    if float_output is not None and "y" in captured and captured["y"].shape == float_output.shape:
        output_sqnr = finite_or_none(sqnr_db(float_output, captured["y"]))
    return _replace(
        cell,
        metric=metric,
        metric_drop=drop,
        kl=evaluation.metrics.get("kl"),
        cosine_loss=None if cosine is None else 1.0 - cosine,
        output_sqnr_db=output_sqnr,
    )


# --- the proxy ------------------------------------------------------------------------------


def resolve_mode(mode: str, n_layers: int, configs: dict[str, QuantConfig | None]) -> str:
    """``measured`` or ``proxy`` for a model of ``n_layers`` quantizable layers (see
    `measure_sensitivity`); proxy mode refuses settings whose error it does not see."""
    if mode not in MODES:
        raise ExplorerError(f"sensitivity mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "auto":
        mode = "proxy" if n_layers > PROXY_LAYERS else "measured"
    if mode == "proxy":
        for setting, config in configs.items():
            if config is not None and not _proxy_ranks(config):
                why = "names an algorithm"
                if config.act_bits is not None:
                    why = "quantizes activations"
                raise ExplorerError(
                    f"setting {setting!r} {why}, which the weight-error proxy does not see; "
                    f"measure it (sensitivity mode 'measured') or choose round-to-nearest "
                    f"weight-only settings such as 'W4 g32' (a model of more than {PROXY_LAYERS} "
                    "layers uses the proxy unless told otherwise)"
                )
    return mode


def _proxy_ranks(config: QuantConfig) -> bool:
    """Round-to-nearest weight-only settings (bf16 included): the proxy sees their whole error."""
    return config.is_float or (config.act_bits is None and config.algorithm == "rtn")


def input_energy(
    model: nn.Module, task: Any, names: Sequence[str], batches: Sequence[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``E[x_j²]`` per input channel of each named layer (float64, (K,) for a linear layer,
    (C,) for a convolution's input channels), over every row (token, pixel) of one float pass
    over ``batches``, with forward pre-hooks on the layers."""
    sums: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}
    modules = dict(model.named_modules())

    def observe(name: str, module: nn.Module, x: torch.Tensor) -> None:
        x = x.detach().float()
        if isinstance(module, nn.Conv2d):  # (B, C, H, W): per channel, over images and pixels
            energy, count = x.square().sum(dim=(0, 2, 3)), x.numel() // x.shape[1]
        else:  # (..., K)
            flat = x.reshape(-1, x.shape[-1])
            energy, count = flat.square().sum(dim=0), flat.shape[0]
        sums[name] = sums[name] + energy.double() if name in sums else energy.double()
        rows[name] = rows.get(name, 0) + count

    hooks = [
        modules[n].register_forward_pre_hook(lambda m, args, n=n: observe(n, m, args[0]))
        for n in names
        if n in modules
    ]
    try:
        with torch.inference_mode():
            for x in batches:
                task.outputs(model, x) if task is not None else model(x)
    finally:
        for h in hooks:
            h.remove()
    return {n: sums[n] / max(1, rows[n]) for n in sums}


def _column_energy(energy: torch.Tensor, module: nn.Module, shape: torch.Size) -> torch.Tensor:
    """The input energy of each weight entry of ``module``'s (N, K) weight: per column for a
    linear layer (1, K); for a convolution each input channel's energy over its kernel
    positions, per output channel's group (N, C/groups · kh · kw)."""
    if not isinstance(module, nn.Conv2d):
        return energy.float()[None, :]  # (1, K)
    n = shape[0]
    kh, kw = module.kernel_size
    per_group = energy.float().view(module.groups, -1)  # (groups, C/groups)
    rows = per_group.repeat_interleave(n // module.groups, dim=0)  # (N, C/groups)
    return rows.repeat_interleave(kh * kw, dim=1)  # (N, C/groups·kh·kw): (c, kh, kw) order


def proxy_weight(w: torch.Tensor, config: QuantConfig | None) -> torch.Tensor | None:
    """The weight a round-to-nearest weight-only (or bf16) ``config`` stores for ``w`` (N, K);
    None for settings the proxy does not see."""
    if config is None or not _proxy_ranks(config):
        return None
    w = w.detach().float()
    return w.bfloat16().float() if config.is_float else round_to_nearest(w, config)


def weighted_error(
    w: torch.Tensor, q: torch.Tensor, energy: torch.Tensor, module: nn.Module
) -> float:
    """``Σ E[x_j²] (W − Q)²`` over the weight entries of ``module`` (``w``, ``q``: (N, K))."""
    weights = _column_energy(energy, module, w.shape)
    return float((weights * (w.detach().float() - q).square()).sum(dtype=torch.float64))


def proxy_damage(
    w: torch.Tensor, config: QuantConfig | None, energy: torch.Tensor | None, module: nn.Module
) -> float | None:
    """The proxy of ``module`` (weight ``w``, (N, K)) at ``config``: `weighted_error` of its
    round-to-nearest weight; None for settings the proxy does not see, or without ``energy``
    (the calibration pass never reached the layer)."""
    q = proxy_weight(w, config)
    return None if q is None or energy is None else weighted_error(w, q, energy, module)


_PROXY_BYTES: dict[tuple[Any, ...], int] = {}


def _proxy_cell(
    name: str,
    setting: str,
    module: nn.Module,
    config: QuantConfig,
    w: torch.Tensor,
    q: torch.Tensor,
    damage: float | None,
) -> Cell:
    """A proxy-mode cell: size as stored (the quantized layer built once per shape and
    setting: identical blocks store identical bytes), weight SQNR and the proxy."""
    key = (type(module).__name__, tuple(w.shape), module.bias is not None, setting)
    if key not in _PROXY_BYTES:
        _PROXY_BYTES[key] = _stored_bytes(quantize_layer(module, config, name))
    return Cell(
        name,
        setting,
        None,
        size_bytes=_PROXY_BYTES[key],
        weight_sqnr_db=finite_or_none(sqnr_db(w, q)),
        proxy=damage,
    )
