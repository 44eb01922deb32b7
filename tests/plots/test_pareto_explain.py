"""The newcomer's view of the Pareto scatter (`pareto_figure(..., explain=True)`) and the
bit-width cliff it points out (`bit_cliff`), on synthetic rows shaped like the default sweep's:
8/4/3/2-bit per-channel PTQ, per-tensor rows at chance, a QAT row from its 3-bit parent."""

from __future__ import annotations

import math
from typing import Any

import pytest

from explorer.plots import FRONT_COLOR, bit_cliff, cliff_text, pareto_figure
from explorer.plots.pareto import FADED_OPACITY

FLOAT = 0.98


def row(
    key: str,
    value: float,
    size: float,
    *,
    bits: int | None = None,
    kind: str = "uniform",
    method: str | None = "ptq",
    half: float = 0.01,
    parent: str | None = None,
    metric: str = "accuracy",
    base: float = FLOAT,
) -> dict[str, Any]:
    """A result row with ``metric`` = ``value`` and a delta interval of ±``half`` around it."""
    return {
        "key": key,
        "label": key,
        "model": "toy",
        "kind": kind,
        "config": {"default": None} if key == "fp32" else {"default": {"weight_bits": bits}},
        "weight_bits": bits,
        "method": method,
        "algorithm": "rtn" if kind == "uniform" else None,
        "parent": parent,
        "size_bytes": size,
        "latency_ms": 1.0,
        "latency_kind": "measured",
        "metric_name": metric,
        "metrics": {metric: value},
        "metrics_ci": {metric: [value - base - half, value - base + half]},
    }


def default_like() -> list[dict[str, Any]]:
    return [
        row("fp32", FLOAT, 540_000, kind="baseline", method=None, half=0.0),
        row("bf16", FLOAT, 270_000, kind="baseline", method=None, half=0.0),
        row("W8 channel", 0.978, 146_000, bits=8),
        row("W4 channel", 0.92, 79_000, bits=4),
        row("W3 channel", 0.78, 62_000, bits=3),
        row("W2 channel", 0.115, 45_000, bits=2),
        row("W8 tensor", 0.10, 140_000, bits=8),
        row("W2 tensor", 0.10, 39_000, bits=2),
        row("W3 qat", 0.97, 62_000, bits=3, method="qat", parent="W3 channel"),
    ]


# --- the cliff --------------------------------------------------------------------------------


def test_cliff_is_the_steepest_fall_between_neighbouring_widths() -> None:
    cliff = bit_cliff(default_like())
    assert cliff is not None
    assert (cliff.bits_before, cliff.bits_after) == (3, 2)
    assert (cliff.before["key"], cliff.after["key"]) == ("W3 channel", "W2 channel")
    assert cliff.fall == pytest.approx(0.78 - 0.115)
    assert cliff_text(cliff, "accuracy") == (
        "The cliff: from 3 to 2 bits, accuracy falls from 78.00% to 11.50%"
    )


def test_cliff_takes_the_best_ptq_row_of_each_width_and_ignores_qat() -> None:
    rows = default_like()
    rows.append(row("W2 qat", 0.90, 45_000, bits=2, method="qat"))  # not PTQ: left out
    cliff = bit_cliff(rows)
    assert cliff is not None and cliff.after["key"] == "W2 channel"  # best 2-bit PTQ, not tensor


def test_no_cliff_when_the_intervals_overlap() -> None:
    rows = [
        row("fp32", FLOAT, 540_000, kind="baseline", method=None, half=0.0),
        row("W8", 0.975, 146_000, bits=8, half=0.02),
        row("W4", 0.965, 79_000, bits=4, half=0.02),  # 1 point lower, within the bars
    ]
    assert bit_cliff(rows) is None
    assert bit_cliff([*rows[:2], row("W4", 0.90, 79_000, bits=4, half=0.02)]) is not None


def test_cliff_of_a_lower_is_better_metric_rises() -> None:
    rows = [
        row("fp32", 12.0, 1e6, kind="baseline", method=None, half=0.0, metric="perplexity"),
        row("W8", 12.1, 3e5, bits=8, half=0.1, metric="perplexity", base=12.0),
        row("W4", 13.0, 2e5, bits=4, half=0.2, metric="perplexity", base=12.0),
        row("W2", 400.0, 1e5, bits=2, half=20.0, metric="perplexity", base=12.0),
    ]
    cliff = bit_cliff(rows)
    assert cliff is not None and (cliff.bits_before, cliff.bits_after) == (4, 2)
    assert cliff_text(cliff, "perplexity", "min").endswith("perplexity rises from 13 to 400")


# --- the figure -----------------------------------------------------------------------------


def _annotation(fig: Any, name: str) -> Any:
    found = [a for a in fig.layout.annotations if a.name == name]
    assert len(found) == 1, [a.name for a in fig.layout.annotations]
    return found[0]


def test_explained_figure_names_the_float_line_and_the_cliff() -> None:
    fig = pareto_figure(default_like(), explain=True)
    texts = [a.text for a in fig.layout.annotations]
    assert "float model (fp32): 98.00%, the accuracy to keep" in texts
    cliff = _annotation(fig, "bit-cliff")
    assert cliff.text == "The cliff: from 3 to 2 bits,<br>accuracy falls from 78.00% to 11.50%"
    # the arrow points at the 2-bit per-channel point: a log axis (sizes span 14x), KiB
    assert fig.layout.xaxis.type == "log"
    assert cliff.x == pytest.approx(math.log10(45_000 / 1024))
    assert cliff.y == pytest.approx(0.115)
    assert cliff.showarrow
    # ticks at 1-2-5 steps with plain numbers, not Plotly's bare minor digits
    assert list(fig.layout.xaxis.ticktext) == ["50", "100", "200", "500"]
    # the QAT arrow from its parent is still drawn
    assert _annotation(fig, "qat-recovery:W3 qat").ay == pytest.approx(0.78)


def test_explained_figure_fades_the_points_off_the_front() -> None:
    fig = pareto_figure(default_like(), explain=True)
    (front,) = [t for t in fig.data if t.meta == "front"]
    assert front.line.color == FRONT_COLOR
    on_front = set(front.customdata)
    assert {"bf16", "W8 channel", "W3 qat", "W2 channel", "W2 tensor"} == on_front
    seen = {}
    for trace in (t for t in fig.data if t.meta == "series"):
        for key, opacity in zip(trace.customdata, trace.marker.opacity, strict=True):
            seen[key] = opacity
    assert {k for k, o in seen.items() if o == 1.0} == on_front
    assert {k for k, o in seen.items() if o == FADED_OPACITY} == {
        "fp32",
        "W4 channel",
        "W3 channel",
        "W8 tensor",
    }


def test_plain_figure_is_unchanged_and_a_flat_sweep_has_no_cliff() -> None:
    plain = pareto_figure(default_like())
    assert not [a for a in plain.layout.annotations if a.name == "bit-cliff"]
    assert "fp32 98.00%" in [a.text for a in plain.layout.annotations]
    assert all(t.marker.opacity is None for t in plain.data if t.meta == "series")
    assert plain.layout.xaxis.type == "linear"  # 14x is under the plain view's factor 30
    flat = [r for r in default_like() if r["weight_bits"] in (None, 8)]
    fig = pareto_figure(flat, explain=True)
    assert not [a for a in fig.layout.annotations if a.name == "bit-cliff"]
