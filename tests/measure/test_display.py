"""`format_metric` / `format_metric_delta`: one written form per metric for figures, pages, CLI."""

from __future__ import annotations

import pytest

from explorer.measure.display import MISSING, format_metric, format_metric_delta


@pytest.mark.parametrize(
    ("name", "value", "text"),
    [
        ("accuracy", 0.98765, "98.77%"),
        ("agreement", 0.5, "50.00%"),
        ("sqnr_db", 31.234, "31.23 dB"),
        ("output_sqnr_db", -2.0, "-2.00 dB"),
        ("size_bytes", 3 * 1024 + 512, "3.5 KiB"),
        ("size_bytes", 2048 * 1024, "2,048.0 KiB"),
        ("latency_ms", 0.012345, "0.0123 ms"),
        ("perplexity", 12.3456, "12.35"),
        ("kl", 1.5e-5, "1.5e-05"),
        ("accuracy", None, MISSING),
        ("accuracy", True, MISSING),
        ("accuracy", "0.5", MISSING),
    ],
)
def test_format_metric(name: str, value: object, text: str) -> None:
    assert format_metric(name, value) == text


@pytest.mark.parametrize(
    ("name", "delta", "text"),
    [
        ("accuracy", -0.0123, "-1.23 points"),
        ("sqnr_db", 1.5, "+1.50 dB"),
        ("size_bytes", -1024, "-1.0 KiB"),
        ("latency_ms", 0.25, "+0.25 ms"),
        ("perplexity", 0.5, "+0.5"),
        ("accuracy", None, None),
    ],
)
def test_format_metric_delta(name: str, delta: object, text: str | None) -> None:
    assert format_metric_delta(name, delta) == text
