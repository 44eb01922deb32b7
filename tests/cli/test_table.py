"""The CLI's row table writes every number through `format_metric`, the formatter of the pages
and figures: the same row reads the same in the terminal and in the app."""

from __future__ import annotations

from explorer.cli.sweep import rows_table
from explorer.measure.display import MISSING, format_metric, format_metric_delta

ROWS = [
    {
        "label": "W8 channel",
        "size_bytes": 12_800,
        "bits_per_weight": 8.25,
        "latency_ms": 0.41234,
        "latency_kind": "measured",
        "metrics": {"accuracy": 0.981},
        "metrics_ci": {"accuracy": [-0.004, 0.002]},
        "pareto": True,
    },
    {
        "label": "W2 g32",
        "size_bytes": 3_300,
        "bits_per_weight": 2.5,
        "latency_ms": 0.5,
        "latency_kind": "simulated",
        "metrics": {"accuracy": 0.115},
        "metrics_ci": {"accuracy": [None, None]},
        "pareto": False,
    },
    {"label": "failed to time", "size_bytes": None, "metrics": {}},
]


def test_numbers_are_the_shared_formats() -> None:
    lines = rows_table(ROWS, "metrics.accuracy").splitlines()
    assert lines[0].split() == ["config", "size", "bits/w", "latency", "accuracy"]
    w8, w2, failed = lines[1:4]
    assert w8.startswith("* W8 channel")
    for text in (
        format_metric("size_bytes", 12_800),  # 12.5 KiB
        format_metric("latency_ms", 0.41234),  # 0.412 ms
        format_metric("accuracy", 0.981),  # 98.10%
        f"Δ95% [{format_metric_delta('accuracy', -0.004)}, "
        f"{format_metric_delta('accuracy', 0.002)}]",
    ):
        assert text in w8, (text, w8)
    assert "12.5 KiB" in w8 and "98.10%" in w8 and "[-0.40 points, +0.20 points]" in w8
    # simulated latency is labelled; an interval with missing ends is left out
    assert w2.startswith("  W2 g32") and "0.5 ms (sim)" in w2 and "Δ95%" not in w2
    assert failed.split() == ["failed", "to", "time", MISSING, MISSING, MISSING, MISSING]
    assert lines[-1].startswith("* on the size/metric Pareto front")


def test_columns_line_up() -> None:
    lines = rows_table(ROWS, "metrics.accuracy").splitlines()[:4]
    column = lines[0].index("bits/w")
    assert {line[column : column + 6].strip() for line in lines} == {"bits/w", "8.25", "2.50", "–"}
