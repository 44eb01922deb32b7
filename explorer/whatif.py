"""What-if edits of one configuration: change one layer's setting and re-evaluate only that.

A stored row carries its plan (``row["config"]``). `whatif_plan` turns that plan into one that
differs for exactly one layer: it *prepends* an explicit rule for the layer (and drops any older
explicit rule for it). Prepending matters: plan rules are tried in order and a glob rule such as
``features.*`` or the plan's default would otherwise still decide the layer, while an explicit
rule only ever matches its own layer, so every other layer resolves exactly as before.

`evaluate_whatif` keys the new plan like a sweep does (`explorer.sweep.runner.entry_key`), reuses
the stored row when that key exists, and otherwise evaluates and stores one row. What is *not*
recomputed: the float reference outputs (``ctx.reference``, computed once per model context),
the activation calibration statistics (``ctx.act_cache``, keyed per layer and activation
setting, so only a layer whose activation setting changed calibrates again) and the kernel
choices (cached per shape and thread count by `explorer.kernels.select` for the process). The
model is quantized afresh (cheap: weights only) and then measured whole, because accuracy and
latency are properties of the whole model; a QAT configuration is trained again for its budget,
since every layer's trained weights depend on the others.

The per-layer sensitivity table behind the Layers page's heat map is slow to measure (each layer
at each setting through the calibration split), so `load_or_measure_sensitivity` caches it as
JSON per model, data and settings.

Imports: `explorer.nn`, `explorer.quant`, `explorer.sweep`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from explorer.errors import ExplorerError
from explorer.nn.convert import quantizable_layers, resolve_plan
from explorer.quant.config import Plan, QuantConfig
from explorer.sweep.context import ModelContext, environment
from explorer.sweep.runner import RunSettings, entry_key, evaluate_entry, row_parts
from explorer.sweep.sensitivity import measure_sensitivity, setting_config
from explorer.sweep.space import PlanEntry, entry_for_plan
from explorer.sweep.store import ResultStore, finite_or_none

WHATIF_SWEEP = "whatif"
SENSITIVITY_CACHE_VERSION = 1

# --- the plan --------------------------------------------------------------------------------


def _setting(setting: str) -> QuantConfig | None:
    try:
        return setting_config(setting)
    except ExplorerError as exc:
        raise ExplorerError(f"setting {setting!r}: {exc}") from None


def whatif_plan(
    plan: Plan, layer: str, setting: str, *, layers: Iterable[str] | None = None
) -> Plan:
    """``plan`` with ``layer`` set to ``setting`` (``"W4 g32"``, ``"W8 channel"``, ``"fp32"``,
    ``"bf16"``; see `setting_config`) and every other layer resolving as before.

    If the layer was trained (QAT) under ``plan``, a quantized new setting is trained too, so the
    what-if changes the setting and not the method; a PTQ algorithm other than round-to-nearest
    (GPTQ, AWQ, SmoothQuant) is then refused, since QAT starts from round-to-nearest.
    ``layers``: the model's quantizable layer names, to refuse a name the model does not have."""
    if not isinstance(layer, str) or not layer.strip():
        raise ExplorerError("name the layer to change")
    if any(ch in layer for ch in "*?["):
        raise ExplorerError(f"name one layer, not a pattern: {layer!r}")
    if layers is not None:
        known = list(layers)
        if layer not in known:
            raise ExplorerError(f"no quantizable layer named {layer!r}; layers: {', '.join(known)}")
    config = _setting(setting)
    current, _ = plan.match(layer)
    if (
        config is not None
        and not config.is_float
        and current is not None
        and not current.is_float
        and current.method == "qat"
    ):
        if config.algorithm != "rtn":
            raise ExplorerError(
                f"layer {layer!r} is trained (QAT) in this configuration, and QAT starts from "
                f"round-to-nearest: {config.algorithm_name} is a post-training algorithm. Try "
                f"{setting!r} on a PTQ configuration, or pick a setting without it."
            )
        config = config.with_(method="qat")
    rules = ((layer, config), *((p, c) for p, c in plan.rules if p != layer))
    return Plan(default=plan.default, rules=rules, fallback=plan.fallback)


def row_plan(row: Mapping[str, Any]) -> Plan:
    """The plan a stored row was evaluated with."""
    config = row.get("config")
    if not isinstance(config, dict):
        raise ExplorerError("this row carries no plan (`config`); it cannot be edited")
    return Plan.from_dict(config)


def row_entry(row: Mapping[str, Any]) -> PlanEntry:
    """The sweep entry that produced ``row`` (its plan and QAT budget; the label is the row's)."""
    return entry_for_plan(
        row_plan(row),
        kind=row.get("kind") if row.get("kind") in ("baseline", "uniform", "mixed") else None,
        qat_steps=row.get("qat_steps"),
        qat_lr=row.get("qat_lr"),
        label=row.get("label") or None,
    )


def whatif_entry(ctx: ModelContext, row: Mapping[str, Any], layer: str, setting: str) -> PlanEntry:
    """The entry of ``row`` with ``layer`` at ``setting``, checked against the model: the new
    setting must fit the layer and must change it (else an `ExplorerError` that says why)."""
    layers = quantizable_layers(ctx.folded)
    old_plan = row_plan(row)
    new_plan = whatif_plan(old_plan, layer, setting, layers=layers)
    old = resolve_plan(ctx.folded, old_plan)[layer].config
    new = resolve_plan(ctx.folded, new_plan)[layer].config
    if old == new:
        name = "fp32" if old is None else old.name
        raise ExplorerError(f"layer {layer!r} already runs at {name} in this configuration")
    return entry_for_plan(new_plan, qat_steps=row.get("qat_steps"), qat_lr=row.get("qat_lr"))


# --- evaluation ------------------------------------------------------------------------------


def settings_for_row(
    ctx: ModelContext,
    row: Mapping[str, Any],
    *,
    candidates: Sequence[RunSettings] = (),
    env: dict[str, Any] | None = None,
) -> RunSettings:
    """The run settings ``row`` was evaluated with, so a what-if is measured the same way.

    A row does not store its settings, but its key hashes them: the candidates (given ones, then
    the defaults and the fast settings at the row's own timing repeats) are tried until one
    reproduces the row's key. With none matching (another machine, another thread count), the
    defaults at the row's repeat count."""
    env = env or environment()
    repeats = _repeats(row)
    base = [RunSettings(), RunSettings(n_boot=200), RunSettings(n_boot=100)]
    tries = list(candidates)
    for settings in base:
        if repeats is not None:
            tries.append(RunSettings(**{**settings.to_dict(), "repeats": repeats}))
        tries.append(settings)
    key = row.get("key")
    if isinstance(key, str) and key:
        entry = row_entry(row)
        for settings in tries:
            if entry_key(ctx, entry, settings, env) == key:
                return settings
    return RunSettings(repeats=repeats) if repeats is not None else RunSettings()


def _repeats(row: Mapping[str, Any]) -> int | None:
    latency = row.get("latency")
    if isinstance(latency, dict):
        for timing in latency.values():
            value = timing.get("repeats") if isinstance(timing, dict) else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def evaluate_whatif(
    ctx: ModelContext,
    row: Mapping[str, Any],
    layer: str,
    setting: str,
    store: ResultStore,
    owner: str,
    settings: RunSettings,
) -> dict[str, Any]:
    """The row of ``row``'s configuration with ``layer`` at ``setting``: from the store if that
    exact configuration was evaluated before (same key), else evaluated now and stored (one row,
    owned by ``owner``, sweep id ``"whatif"``).

    Reused rather than recomputed: the float reference outputs, the calibration statistics in
    ``ctx.act_cache`` and the process-wide kernel choices (see the module docstring). The returned
    dict is the stored row plus ``key`` and ``reused`` (True when it came from the store)."""
    entry = whatif_entry(ctx, row, layer, setting)
    env = environment()
    key = entry_key(ctx, entry, settings, env)
    stored = store.get(key)
    if stored is not None:
        return {**stored, "key": key, "reused": True}
    new = evaluate_entry(ctx, entry, settings, env)
    store.put(key, new, parts=row_parts(ctx, entry, settings, env), owner=owner, sweep=WHATIF_SWEEP)
    return {**new, "key": key, "reused": False}


def headline_deltas(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{name: {"old", "new", "delta"}}`` for the task metric, fidelity SQNR, size and latency
    of two rows (delta None where either side is missing)."""
    metric = old.get("metric_name") or new.get("metric_name")
    out: dict[str, dict[str, Any]] = {}
    pairs: list[tuple[str, Any, Any]] = []
    if metric:
        pairs.append((metric, _metric(old, metric), _metric(new, metric)))
    pairs += [
        ("sqnr_db", _metric(old, "sqnr_db"), _metric(new, "sqnr_db")),
        ("size_bytes", old.get("size_bytes"), new.get("size_bytes")),
        ("latency_ms", old.get("latency_ms"), new.get("latency_ms")),
    ]
    for name, a, b in pairs:
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
        out[name] = {"old": a, "new": b, "delta": (b - a) if numeric else None}
    return out


def _metric(row: Mapping[str, Any], name: str) -> Any:
    metrics = row.get("metrics")
    return metrics.get(name) if isinstance(metrics, dict) else None


def layer_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per layer of two rows: config, kernel and output SQNR side by side, each flagged
    ``changed`` when its config differs."""
    before = {lay["name"]: lay for lay in old.get("layers") or []}
    out = []
    for lay in new.get("layers") or []:
        prev = before.get(lay["name"], {})
        out.append(
            {
                "layer": lay["name"],
                "config before": prev.get("config"),
                "config after": lay.get("config"),
                "kernel before": prev.get("kernel"),
                "kernel after": lay.get("kernel"),
                "output SQNR before (dB)": prev.get("output_sqnr_db"),
                "output SQNR after (dB)": lay.get("output_sqnr_db"),
                "changed": prev.get("config") != lay.get("config"),
            }
        )
    return out


# --- sensitivity, cached -----------------------------------------------------------------------


def sensitivity_cache_path(
    ctx: ModelContext,
    settings: Sequence[str],
    cache_dir: str | os.PathLike[str],
    samples: int | None,
) -> Path:
    """Where the sensitivity table of this model, data, settings and sample count is cached."""
    what = json.dumps(
        {
            "model": ctx.fingerprint,
            "data": ctx.data_fingerprint,
            "settings": list(settings),
            "samples": samples,
            "version": SENSITIVITY_CACHE_VERSION,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(what.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"sensitivity-{ctx.fingerprint}-{digest}.json"


def cached_sensitivity(
    ctx: ModelContext,
    settings: Sequence[str],
    cache_dir: str | os.PathLike[str],
    *,
    samples: int | None = None,
) -> dict[str, Any] | None:
    """The cached table (`Sensitivity.to_dict` form), or None if not measured yet."""
    path = sensitivity_cache_path(ctx, settings, cache_dir, samples)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        return None
    return data


def load_or_measure_sensitivity(
    ctx: ModelContext,
    settings: Sequence[str],
    cache_dir: str | os.PathLike[str],
    *,
    samples: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Each layer quantized alone at each setting (`measure_sensitivity`, without latency), as
    the JSON-ready dict `Sensitivity.to_dict` gives; measured once per (model, data, settings,
    samples) and then read from ``cache_dir``."""
    if not settings:
        raise ExplorerError("choose at least one setting to measure")
    for setting in settings:
        _setting(setting)
    found = cached_sensitivity(ctx, settings, cache_dir, samples=samples)
    if found is not None:
        return found
    table = measure_sensitivity(
        ctx, list(settings), samples=samples, latency=False, progress=progress
    )
    data = table.to_dict()
    path = sensitivity_cache_path(ctx, settings, cache_dir, samples)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = finite_or_none(data)
    tmp.write_text(json.dumps(data, allow_nan=False))
    os.replace(tmp, path)
    return data
