"""How measured values are written for people: one format per metric, shared by the figures'
hover texts, the pages and the command line, so that a number reads the same everywhere."""

from __future__ import annotations

from typing import Any

SHARE_METRICS = ("accuracy", "agreement", "wer")
"""Metrics that are shares of samples: written as percentages, differences in points."""

MISSING = "–"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def format_metric(name: str, value: Any) -> str:
    """``value`` of metric (or row field) ``name``: shares as percentages, ``*_db`` in dB,
    ``size_bytes`` in KiB, ``latency_ms`` in ms, anything else to four significant digits;
    `MISSING` for None or a value that is not a number."""
    v = _number(value)
    if v is None:
        return MISSING
    if name == "size_bytes":
        return f"{v / 1024:,.1f} KiB"
    if name == "latency_ms":
        return f"{v:.3g} ms"
    if name in SHARE_METRICS:
        return f"{v:.2%}"
    if name.endswith("_db"):
        return f"{v:.2f} dB"
    return f"{v:.4g}"


def format_metric_delta(name: str, delta: Any) -> str | None:
    """A signed difference of metric ``name`` in the units of `format_metric` (shares in
    percentage points); None when ``delta`` is not a number."""
    d = _number(delta)
    if d is None:
        return None
    if name == "size_bytes":
        return f"{d / 1024:+,.1f} KiB"
    if name == "latency_ms":
        return f"{d:+.3g} ms"
    if name in SHARE_METRICS:
        return f"{d * 100:+.2f} points"
    if name.endswith("_db"):
        return f"{d:+.2f} dB"
    return f"{d:+.4g}"
