"""Mixed precision, end to end: sensitivity table → knapsack front → plans → verified rows.

The search (`explorer.sweep.search`) predicts each allocation's damage from per-layer sensitivity
measured on the calibration split. Predictions are only a guide: every allocation this module
returns is turned into a plan (one explicit rule per layer) and evaluated like any sweep row, on
the held-out split with real kernels, so a mixed row and a uniform row are compared on the same
footing. The uniform plans of the same settings run alongside, for the comparison a user wants
("does mixing beat the best uniform plan of the same size?").

Imports: `explorer.sweep.search`, `.sensitivity`, `.runner`, `.space`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from explorer.errors import ExplorerError
from explorer.quant.config import Plan
from explorer.sweep.context import ModelContext
from explorer.sweep.runner import Executor, RunSettings, SweepEvent, run_sweep
from explorer.sweep.search import Allocation, allocate, front
from explorer.sweep.sensitivity import Sensitivity, setting_config
from explorer.sweep.space import PlanEntry, baselines, entry_for_plan
from explorer.sweep.store import ResultStore

BUDGET_KINDS = ("size", "latency", "damage")


def plan_for(allocation: Allocation) -> Plan:
    """One explicit rule per searched layer; layers outside the table stay fp32."""
    rules = tuple((layer, setting_config(s)) for layer, s in allocation.choices)
    return Plan(default=None, rules=rules, fallback="error")


def mixed_entry(allocation: Allocation, metric: str | None) -> PlanEntry:
    counts: dict[str, int] = {}
    for _, setting in allocation.choices:
        counts[setting] = counts.get(setting, 0) + 1
    mix = ", ".join(f"{n}x {s}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    label = f"mixed [{mix}] predicted {allocation.damage:+.4g} {metric or 'damage'}"
    return entry_for_plan(plan_for(allocation), kind="mixed", label=label)


def uniform_entries(settings: Sequence[str]) -> list[PlanEntry]:
    """The uniform plan of each setting (fallback per-channel where a group does not fit)."""
    out = []
    for s in settings:
        config = setting_config(s)
        if config is None or config.is_float:
            continue
        out.append(entry_for_plan(Plan.uniform(config), kind="uniform"))
    return out


def choose_allocations(
    sensitivity: Sensitivity,
    *,
    budgets: Sequence[float] = (),
    kind: str = "size",
    points: int = 6,
    damage: str = "metric_drop",
) -> list[Allocation]:
    """Allocations at the given budgets, or ``points`` spread along the whole front."""
    if kind not in BUDGET_KINDS:
        raise ExplorerError(f"budget kind must be one of {list(BUDGET_KINDS)}, got {kind!r}")
    table = sensitivity.to_search_table(damage)
    if budgets:
        key = {"size": "max_size_bytes", "latency": "max_latency_ms", "damage": "max_damage"}[kind]
        return [allocate(table, **{key: int(b) if kind == "size" else float(b)}) for b in budgets]
    cost = "latency" if kind == "latency" else "size"
    return front(table, cost=cost, max_points=points)


@dataclass
class SearchOutcome:
    allocations: list[Allocation]
    entries: list[PlanEntry]  # baselines, uniform, then one mixed entry per allocation
    rows: list[dict[str, Any]]
    events: list[SweepEvent]

    def mixed_rows(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("kind") == "mixed"]

    def uniform_rows(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("kind") == "uniform"]


def search_and_verify(
    ctx: ModelContext,
    sensitivity: Sensitivity,
    store: ResultStore,
    *,
    budgets: Sequence[float] = (),
    kind: str = "size",
    points: int = 6,
    damage: str = "metric_drop",
    settings: RunSettings | None = None,
    executor: Executor | None = None,
    with_uniform: bool = True,
    with_baselines: bool = True,
    owner: str = "",
    on_event: Callable[[SweepEvent], None] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> SearchOutcome:
    """Search, then evaluate the chosen mixed plans (and the baselines and uniform plans of the
    same settings) on the held-out split like any sweep row. Each mixed row carries its
    allocation and predicted damage."""
    allocations = choose_allocations(
        sensitivity, budgets=budgets, kind=kind, points=points, damage=damage
    )
    mixed = [mixed_entry(a, sensitivity.metric) for a in allocations]
    entries = [
        *(baselines() if with_baselines else []),
        *(uniform_entries(sensitivity.settings) if with_uniform else []),
    ]
    entries += mixed
    by_label = {e.label: a for e, a in zip(mixed, allocations, strict=True)}
    rows: list[dict[str, Any]] = []
    events: list[SweepEvent] = []
    for event in _events(
        run_sweep(
            ctx,
            entries,
            store,
            settings=settings,
            executor=executor,
            owner=owner,
            sweep_id="search",
            cancelled=cancelled,
        ),
        on_event,
    ):
        events.append(event)
        if event.row is not None:
            row = dict(event.row)
            match = by_label.get(event.label)
            if match is not None:
                row["allocation"] = match.to_dict()
                row["predicted_damage"] = match.damage
            rows.append(row)
    return SearchOutcome(allocations, entries, rows, events)


def _events(
    events: Iterator[SweepEvent], on_event: Callable[[SweepEvent], None] | None
) -> Iterator[SweepEvent]:
    for event in events:
        if on_event is not None:
            on_event(event)
        yield event
