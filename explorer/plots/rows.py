"""Reading result rows for figures: a value by dotted path, the quality metric and its
sense, the float reference, which rows can be plotted."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from explorer.sweep.pareto import METRIC_SENSES, metric_sense, row_value

Row = Mapping[str, Any]
TASK_METRICS = ("accuracy", "perplexity")  # their CI is of the delta against float


def finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _metric_path(metric: str) -> str:
    return metric if "." in metric else f"metrics.{metric}"


def metric_name_of(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def _sense(name: str) -> str:
    return METRIC_SENSES.get(name) or metric_sense(name)


def metric_of(rows: Iterable[Row]) -> tuple[str, str]:
    """``(path, sense)`` of the quality axis: the rows' task metric (``metric_name``) where some
    row has a value for it, else the output SQNR against float (models without labels)."""
    rows = list(rows)
    for row in rows:
        name = row.get("metric_name")
        if name and any(finite_number(row_value(r, f"metrics.{name}")) is not None for r in rows):
            return f"metrics.{name}", _sense(name)
    return "metrics.sqnr_db", "max"


def quality_axis(rows: Sequence[Row], metric: str | None) -> tuple[str, str]:
    if not metric:
        return metric_of(rows)
    return _metric_path(metric), _sense(metric_name_of(metric))


def _is_fp32(row: Row) -> bool:
    if row.get("label") == "fp32":
        return True
    config = row.get("config")
    default = config.get("default", "missing") if isinstance(config, Mapping) else "missing"
    return row.get("kind") == "baseline" and row.get("weight_bits") is None and default is None


def float_metric(rows: Iterable[Row], metric: str | None = None) -> float | None:
    """The fp32 baseline row's value of ``metric`` (name or path; default: the rows' task
    metric, see `metric_of`), or None when the rows hold no fp32 row or it has no value."""
    rows = list(rows)
    path = _metric_path(metric) if metric else metric_of(rows)[0]
    for row in rows:
        if _is_fp32(row):
            return finite_number(row_value(row, path))
    return None


def is_simulated(row: Row) -> bool:
    return row.get("latency_kind") == "simulated"


def plotted_rows(rows: Iterable[Row], paths: Sequence[str]) -> list[Row]:
    return [r for r in rows if all(finite_number(row_value(r, p)) is not None for p in paths)]
