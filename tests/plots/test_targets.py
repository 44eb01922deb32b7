"""Series by target on the Pareto figure, and the deployed-vs-explorer latency view."""

from __future__ import annotations

from typing import Any

import pytest

from explorer.plots import deployed_figure, latency_pairs, pareto_figure, series_of


def _row(label: str, target: str | None, ms: float, accuracy: float, **extra: Any) -> dict:
    row = {
        "key": f"{label}/{target}",
        "label": label,
        "kind": "baseline" if label == "fp32" else "uniform",
        "config": {"default": None if label == "fp32" else {"weight_bits": 8}},
        "qat_steps": None,
        "method": None if label == "fp32" else "ptq",
        "algorithm": None if label == "fp32" else "rtn",
        "weight_bits": None if label == "fp32" else 8,
        "size_bytes": 4000 if label == "fp32" else 1000,
        "metric_name": "accuracy",
        "metrics": {"accuracy": accuracy},
        "latency_ms": ms,
        "latency_workload": "batch",
        "latency": {"batch": {"median_ms": ms}},
        **extra,
    }
    if target is not None:
        row["target"] = target
    return row


ROWS = [
    _row("fp32", None, 1.0, 0.95),  # a row from before targets existed: native
    _row("W8 channel sym ptq", "native", 4.0, 0.94),
    _row("fp32", "onnxruntime", 0.5, 0.95),
    _row("W8 channel sym ptq", "onnxruntime", 0.25, 0.94),
    _row("W4 group32 sym ptq", "native", 3.0, 0.90),  # measured natively only
]


def test_series_are_distinguished_by_target() -> None:
    assert [series_of(r) for r in ROWS] == [
        "fp32/bf16 baseline",
        "PTQ · RTN",
        "fp32/bf16 baseline @ ONNX Runtime",
        "PTQ · RTN @ ONNX Runtime",
        "PTQ · RTN",
    ]
    fig = pareto_figure(ROWS, x="latency_ms")
    series = [t for t in fig.data if t.meta == "series"]
    assert [t.name for t in series] == [
        "fp32/bf16 baseline",
        "fp32/bf16 baseline @ ONNX Runtime",
        "PTQ · RTN",
        "PTQ · RTN @ ONNX Runtime",
    ]
    by_name = {t.name: t for t in series}
    # the same configuration once per target: same size, its own latency
    assert list(by_name["PTQ · RTN @ ONNX Runtime"].x) == [0.25]
    assert sorted(by_name["PTQ · RTN"].x) == [3.0, 4.0]
    assert by_name["fp32/bf16 baseline @ ONNX Runtime"].mode == "markers+text"  # a baseline
    assert len({t.marker.color for t in series}) == 4


def test_deployed_vs_explorer_pairs_each_configuration() -> None:
    pairs = latency_pairs(ROWS)
    assert [(p["label"], p["native_ms"], p["target_ms"]) for p in pairs] == [
        ("fp32", 1.0, 0.5),
        ("W8 channel sym ptq", 4.0, 0.25),
    ]
    assert pairs[1]["speedup"] == pytest.approx(16.0)
    fig = deployed_figure(ROWS)
    (points,) = [t for t in fig.data if t.meta == "series"]
    assert points.name == "ONNX Runtime"
    assert list(points.customdata) == ["fp32/onnxruntime", "W8 channel sym ptq/onnxruntime"]
    assert "16.00x faster in ONNX Runtime" in points.hovertext[1]
    (diagonal,) = [t for t in fig.data if t.meta == "diagonal"]
    assert diagonal.x == diagonal.y
    assert fig.layout.xaxis.type == "log"


def test_deployed_view_compares_a_workload_both_timed() -> None:
    """A language model's ORT row times prefill only; the native row times decode first."""
    native = _row("W8 channel sym ptq", "native", 2.0, 0.9)
    native["latency"] = {"decode": {"median_ms": 2.0}, "prefill": {"median_ms": 30.0}}
    ort = _row("W8 channel sym ptq", "onnxruntime", 10.0, 0.9)
    ort["latency"] = {"prefill": {"median_ms": 10.0}}
    (pair,) = latency_pairs([native, ort])
    assert (pair["workload"], pair["native_ms"], pair["target_ms"]) == ("prefill", 30.0, 10.0)


def test_deployed_view_without_pairs_says_how_to_get_them() -> None:
    fig = deployed_figure(ROWS[:2])
    assert [a.name for a in fig.layout.annotations] == ["empty"]
    assert "--target native,onnxruntime" in fig.layout.annotations[0].text
