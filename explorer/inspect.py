"""Read-only views of a model and its sweep results, as the app shows them.

- `layer_table`: one row per layer that owns parameters (name, type, weight shape, parameter
  count, bytes as stored in float, whether `quantize_model` can quantize it). Tied parameters
  (a language model's output head sharing the embedding) are counted once, at their first owner.
- `float_metric`: the float model's task metric on the evaluation split (accuracy as a fraction,
  or perplexity), computed from the float reference outputs the sweep compares against.
- `result_table`: the main columns of stored result rows, with the size-against-metric Pareto
  flag, for a results table and its CSV.
- `sweep_progress`: what a sweep's events say so far (rows done of total, the rows, skipped
  combinations and failures with their reasons, a fatal error, cancelled or finished).
- `pending_entries`: the entries of a sweep whose rows the store does not hold yet, found by the
  same keys the runner uses, so an app can tell whether a sweep still has work to do.

Imports: `explorer.nn.convert`, `explorer.sweep` (space, runner, pareto, context, store).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from explorer.nn.convert import quantizable_layers
from explorer.sweep.context import ModelContext, environment
from explorer.sweep.pareto import flag_pareto, metric_sense
from explorer.sweep.runner import RunSettings, SweepEvent, entry_key
from explorer.sweep.space import PlanEntry, SweepSpec, expand
from explorer.sweep.store import ResultStore

# --- the model ------------------------------------------------------------------------------


def layer_table(model: nn.Module) -> list[dict[str, Any]]:
    """One dict per module that owns parameters, in module order.

    Keys: ``name``, ``type`` (class name), ``shape`` (the weight's shape, else the first
    parameter's, as a tuple), ``parameters`` (count, tied ones at their first owner only),
    ``float_bytes`` (bytes of its parameters and floating buffers as stored, e.g. batch-norm
    running statistics), ``quantizable`` and ``tied_to`` (the owner of a shared weight, or None).
    """
    quantizable = set(quantizable_layers(model))
    owner_of: dict[int, str] = {}
    rows = []
    for name, module in model.named_modules():
        params = dict(module.named_parameters(recurse=False))
        if not name or not params:
            continue
        count = 0
        size = 0
        tied_to = None
        for p in params.values():
            first = owner_of.setdefault(id(p), name)
            if first != name:
                tied_to = tied_to or first
                continue
            count += p.numel()
            size += p.numel() * p.element_size()
        for b in module.buffers(recurse=False):
            if b.is_floating_point():
                size += b.numel() * b.element_size()
        shaped = params.get("weight", next(iter(params.values())))
        rows.append(
            {
                "name": name,
                "type": type(module).__name__,
                "shape": tuple(shaped.shape),
                "parameters": count,
                "float_bytes": size,
                "quantizable": name in quantizable,
                "tied_to": tied_to,
            }
        )
    return rows


def float_metric(ctx: ModelContext) -> tuple[str, float] | None:
    """``(metric name, value)`` of the float model on the evaluation split; None without labels
    (then only fidelity to the float model can be measured)."""
    if ctx.metric is None:
        return None
    stats = ctx.reference.stats
    if ctx.metric == "perplexity":
        return "perplexity", stats.perplexity()
    if ctx.metric == "spearman":
        return "spearman", stats.spearman()
    if ctx.metric == "wer":
        return "wer", stats.wer()
    return ctx.metric, stats.accuracy()


# --- result rows ----------------------------------------------------------------------------


def quality_axis(rows: Sequence[Mapping[str, Any]], metric: str | None) -> tuple[str, str]:
    """The quality axis of a front: ``("metrics.<task metric>", sense)``, or the output SQNR
    against float when the rows have no task metric (models without labels)."""
    if metric is not None and any(
        _number((r.get("metrics") or {}).get(metric)) is not None for r in rows
    ):
        return f"metrics.{metric}", metric_sense(metric)
    return "metrics.sqnr_db", "max"


def result_table(
    rows: Sequence[Mapping[str, Any]], metric: str | None = None
) -> list[dict[str, Any]]:
    """The main columns of each row, oldest first, with ``pareto`` (on the size-against-metric
    front). ``metric`` defaults to the rows' own ``metric_name``; ``metric_ci_lo``/``_hi`` is the
    95 % interval of the task metric's change against float (of SQNR itself without labels).

    What a configuration costs before deployment: ``calibrate_s`` for PTQ (see
    `calibration_seconds`), ``train_s`` for QAT (prepare, train, convert)."""
    if metric is None:
        metric = next((r.get("metric_name") for r in rows if r.get("metric_name")), None)
    path, _ = axis = quality_axis(rows, metric)
    name = path.split(".", 1)[1]
    flags = flag_pareto(rows, [("size_bytes", "min"), axis]) if rows else []
    out = []
    for row, flag in zip(rows, flags, strict=True):
        metrics = row.get("metrics") or {}
        ci = (row.get("metrics_ci") or {}).get(name) or [None, None]
        size = _number(row.get("size_bytes"))
        seconds = row.get("seconds") or {}
        calibrated = not row.get("qat_steps") and row.get("kind") != "baseline"
        out.append(
            {
                "key": row.get("key"),
                "label": row.get("label"),
                "kind": row.get("kind"),
                "weight_bits": row.get("weight_bits"),
                "act_bits": row.get("act_bits"),
                "granularity": row.get("granularity"),
                "method": row.get("method"),
                "algorithm": algorithm_summary(row),
                "qat_steps": row.get("qat_steps"),
                "calibrate_s": calibration_seconds(row) if calibrated else None,
                "train_s": _number(seconds.get("qat")),
                "size_kib": None if size is None else size / 1024,
                "bits_per_weight": _number(row.get("bits_per_weight")),
                "latency_ms": _number(row.get("latency_ms")),
                "latency_kind": row.get("latency_kind"),
                "metric": name,
                "value": _number(metrics.get(name)),
                "ci_lo": _number(ci[0]),
                "ci_hi": _number(ci[1]),
                "pareto": bool(flag),
            }
        )
    return out


def calibration_seconds(row: Mapping[str, Any]) -> float | None:
    """What calibrating ``row``'s model costs on its own: input statistics, the PTQ algorithm
    and static activation ranges, counting statistics that the row reused from an earlier row
    of its sweep at what they cost there (round-to-nearest of the weights alone needs none)."""
    seconds = row.get("seconds") or {}
    calibrate = _number(seconds.get("calibrate"))
    if calibrate is None:
        return None
    return calibrate + (_number(seconds.get("statistics_reused")) or 0.0)


def algorithm_summary(row: Mapping[str, Any]) -> str | None:
    """The PTQ algorithm that produced ``row``: its flat ``algorithm`` (``gptq``), or for a mixed
    plan the algorithms of its quantized layers as resolved (``gptq ×1, rtn ×16``); None for a
    float baseline."""
    if row.get("algorithm"):
        return str(row["algorithm"])
    counts = row.get("algorithms")
    if isinstance(counts, Mapping) and counts:
        return ", ".join(f"{a} ×{n}" for a, n in sorted(counts.items()))
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


# --- a sweep in progress ----------------------------------------------------------------------


@dataclass
class SweepProgress:
    """What a sweep's events say so far."""

    done: int = 0
    total: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    cancelled: bool = False
    finished: bool = False
    batch_done: int = 0  # evaluation batches of the row in flight (``batch`` events)
    batch_total: int = 0
    batch_stage: str = "evaluate"  # or "qat": the batches are training steps

    @property
    def fraction(self) -> float:
        """Rows done, plus the share of the row in flight's evaluation batches."""
        if not self.total:
            return 0.0
        within = self.batch_done / self.batch_total if self.batch_total else 0.0
        return min(1.0, (self.done + within) / self.total)


def sweep_progress(events: Iterable[SweepEvent]) -> SweepProgress:
    """Fold a sweep's events (oldest first) into a `SweepProgress`."""
    progress = SweepProgress()
    for event in events:
        if event.total:
            progress.total = event.total
            progress.done = max(progress.done, event.done)
        if event.kind in ("row", "cached") and event.row is not None:
            progress.rows.append(event.row)
        elif event.kind == "skipped":
            progress.skipped.append((event.label, event.reason))
        elif event.kind == "failed":
            progress.failed.append((event.label, event.reason))
        elif event.kind == "error":
            progress.error = event.reason
            progress.finished = True
        elif event.kind == "cancelled":
            progress.cancelled = True
        elif event.kind == "done":
            progress.finished = True
        if event.kind == "batch":
            progress.batch_done = int(event.extra.get("done", 0))
            progress.batch_total = int(event.extra.get("total", 0))
            progress.batch_stage = str(event.extra.get("stage", "evaluate"))
        elif event.kind in ("row", "cached", "failed"):
            progress.batch_done = progress.batch_total = 0
    return progress


def pending_entries(
    ctx: ModelContext,
    spec: SweepSpec | Sequence[PlanEntry],
    settings: RunSettings,
    store: ResultStore,
    env: dict[str, Any] | None = None,
) -> list[PlanEntry]:
    """Entries of ``spec`` (baselines included), or of a list of entries, whose rows ``store``
    lacks for this context."""
    entries = expand(spec, ctx.model)[0] if isinstance(spec, SweepSpec) else list(spec)
    env = env or environment()
    return [e for e in entries if not store.has(entry_key(ctx, e, settings, env))]
