"""What the pages write: the choices their pickers offer, the headline numbers of a configuration
(and of a change to it), and the words for a model source, its facts and an interval.

Every number goes through `explorer.measure.display.format_metric` (or its delta), the formatter
the figures and the command line use, so a value reads the same on every page. Plain data and
strings, no streamlit: the pages draw them, tests read them without an app.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from explorer.measure.display import MISSING, format_metric, format_metric_delta
from explorer.models.catalog import ModelSource
from explorer.whatif import headline_deltas

Row = Mapping[str, Any]

SETTING_CHOICES = (
    "W8 channel",
    "W8 tensor",
    "W8 g32",
    "W8A8 channel token",
    "W4 channel",
    "W4 g32",
    "W4 g128",
    "W3 g32",
    "W3 g128",
    "W2 g32",
    "W4 g32 gptq",
    "W4 g32 awq",
    "W4 g128 gptq",
    "W4 g128 awq",
    "W3 g128 gptq",
    "W3 g128 awq",
    "W8A8 channel tensor smoothquant",
    "bf16",
    "fp32",
)
"""Settings one layer can be given on the Layers page (sensitivity columns and the what-if
editor), in `explorer.sweep.sensitivity.setting_config`'s words."""

LAYER_CHART_LABELS = {
    "latency_share": "Share of latency",
    "output_sqnr_db": "Output SQNR",
    "weight_sqnr_db": "Weight SQNR",
    "bytes": "Bytes",
}
"""The per-layer values a Layers chart shows (`explorer.plots.LAYER_VALUES`), as picker labels."""

SENSITIVITY_LABELS = {
    "metric_drop": "Metric lost",
    "kl": "KL divergence",
    "output_sqnr_db": "Output SQNR",
    "weight_sqnr_db": "Weight SQNR",
}
"""The sensitivity values the heat map can be coloured by, as picker labels."""

HEADLINE_TITLES = {"sqnr_db": "Output SQNR vs float", "size_bytes": "Size", "latency_ms": "Latency"}
LOWER_IS_BETTER = ("size_bytes", "latency_ms")


@dataclass(frozen=True)
class Headline:
    """One number on top of a configuration: ``st.metric(label, value, delta)``, the delta
    coloured green when it improves (``inverse`` where lower is better)."""

    label: str
    value: str
    delta: str | None = None
    lower_is_better: bool = False


def _simulated(row: Row) -> bool:
    return row.get("latency_kind") == "simulated"


def _bits(row: Row) -> str:
    bpw = row.get("bits_per_weight")
    return MISSING if not isinstance(bpw, int | float) else f"{bpw:.2f}"


def row_headline(row: Row, metric: str, reference: float | None, sense: str) -> list[Headline]:
    """A configuration's task metric (with its change against the float ``reference``), size,
    latency ("(simulated)" when it is) and bits per weight; ``sense`` is the metric's ``min`` or
    ``max``."""
    value = (row.get("metrics") or {}).get(metric)
    delta = None
    if isinstance(value, int | float) and isinstance(reference, int | float):
        delta = f"{format_metric_delta(metric, value - reference)} vs float"
    return [
        Headline(metric, format_metric(metric, value), delta, sense == "min"),
        Headline("Size", format_metric("size_bytes", row.get("size_bytes"))),
        Headline(
            "Latency" + (" (simulated)" if _simulated(row) else ""),
            format_metric("latency_ms", row.get("latency_ms")),
        ),
        Headline("Bits per weight", _bits(row)),
    ]


def change_headline(old: Row, new: Row, sense: str) -> list[Headline]:
    """``new``'s task metric, output SQNR, size and latency, each with its change from ``old``."""
    out = []
    for name, item in headline_deltas(old, new).items():
        title = HEADLINE_TITLES.get(name, name)
        if name == "latency_ms" and _simulated(new):
            title += " (simulated)"
        lower = name in LOWER_IS_BETTER or (name == old.get("metric_name") and sense == "min")
        out.append(
            Headline(
                title,
                format_metric(name, item["new"]),
                format_metric_delta(name, item["delta"]),
                lower,
            )
        )
    return out


def compare_rows(a: Row, b: Row) -> list[dict[str, str]]:
    """Two configurations' headline numbers side by side with ``B − A``, one dict per number."""
    return [
        {
            "": HEADLINE_TITLES.get(name, name),
            "A": format_metric(name, item["old"]),
            "B": format_metric(name, item["new"]),
            "B − A": format_metric_delta(name, item["delta"]) or MISSING,
        }
        for name, item in headline_deltas(a, b).items()
    ]


def describe_source(source: ModelSource, builtin_names: Sequence[str]) -> str:
    """Markdown naming what the app works on: a built-in, or what was uploaded over one."""
    if source.model in builtin_names and source.weights is None and source.data is None:
        return f"built-in **{source.model}**"
    parts = []
    if source.model in builtin_names:
        parts.append(f"built-in architecture **{source.model}**")
    elif source.model:
        parts.append("uploaded Hugging Face model")
    if source.weights:
        parts.append("uploaded weights")
    if source.data:
        parts.append("uploaded data")
    return ", ".join(parts)


def model_facts(task: str, params: int, metric: str, card_float: Any) -> str:
    """The one-line caption under a built-in's description: task, parameters and the float
    metric its card records (left out when the card has none)."""
    facts = [task, f"{params:,} parameters"]
    if isinstance(card_float, int | float) and not isinstance(card_float, bool):
        facts.append(f"float {metric} {format_metric(metric, card_float)} (from its card)")
    return " · ".join(facts)


def interval_text(lo: float | None, hi: float | None, metric: str) -> str:
    """A 95 % interval as the results table writes it: of the change against float in the
    metric's units (accuracy in points), or of the SQNR itself for a model without labels
    (whose float SQNR is infinite); empty when either end is missing."""
    if lo is None or hi is None:
        return ""
    if metric == "sqnr_db":
        return f"[{format_metric(metric, lo)}, {format_metric(metric, hi)}]"
    return f"[{format_metric_delta(metric, lo)}, {format_metric_delta(metric, hi)}]"


def sqnr_text(value: float) -> str:
    """An SQNR in dB, or "∞ (exact)" where the error is zero (the format represents every value)."""
    return "∞ (exact)" if value == float("inf") else format_metric("sqnr_db", value)
