"""`explorer.plots`: every figure checked on what it must show, on synthetic rows shaped like the
store's and on real rows of one quick digits-cnn sweep (PTQ and QAT at 8, 4 and 2 bits, so the
rows hold measured and simulated latencies and PTQ → QAT parents).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import pytest

from explorer import cli, plots
from explorer.sweep.pareto import flag_pareto

# --- rows -----------------------------------------------------------------------------------


def make_row(
    key: str,
    *,
    kind: str = "uniform",
    label: str | None = None,
    bits: int | None = 8,
    method: str | None = "ptq",
    algorithm: str | None = "rtn",
    size: float | None = 1000.0,
    latency: float | None = 1.0,
    latency_kind: str = "measured",
    value: float | None = 0.9,
    ci: tuple[float, float] | None = (-0.02, 0.01),
    sqnr: float | None = 20.0,
    sqnr_ci: tuple[float, float] | None = (19.5, 20.5),
    parent: str | None = None,
    metric_name: str | None = "accuracy",
) -> dict[str, Any]:
    metrics: dict[str, Any] = {"sqnr_db": sqnr}
    cis: dict[str, Any] = {"sqnr_db": list(sqnr_ci) if sqnr_ci else [None, None]}
    if metric_name:
        metrics[metric_name] = value
        cis[metric_name] = list(ci) if ci else [None, None]
    float_row = kind == "baseline"
    return {
        "key": key,
        "model": "toy",
        "label": label or key,
        "kind": kind,
        "config": {"version": 1, "default": None if label == "fp32" else {"weight_bits": bits}},
        "weight_bits": None if float_row else bits,
        "act_bits": None,
        "granularity": None if float_row else "channel",
        "method": None if float_row else method,
        "algorithm": None if float_row else algorithm,
        "qat_steps": 20 if method == "qat" else None,
        "parent": parent,
        "size_bytes": size,
        "bits_per_weight": None if float_row else float(bits or 0),
        "latency_ms": latency,
        "latency_kind": latency_kind,
        "kernels": {} if float_row else {"fc1": "int8-wo-native", "fc2": "reference"},
        "fallbacks": {},
        "metrics": metrics,
        "metrics_ci": cis,
        "metric_name": metric_name,
        "layers": [
            {
                "name": "fc1",
                "type": "Linear",
                "config": None if float_row else f"W{bits} channel",
                "weight_bits": bits,
                "fallback": None,
                "kernel": None if float_row else "int8-wo-native",
                "simulated": False,
                "weight_sqnr_db": 30.0,
                "output_sqnr_db": 28.0,
                "latency_share": 0.7,
                "bytes": 600,
            },
            {
                "name": "fc2",
                "type": "Linear",
                "config": None if float_row else f"W{bits} channel",
                "weight_bits": bits,
                "fallback": None,
                "kernel": None if float_row else "reference",
                "simulated": not float_row,
                "weight_sqnr_db": 12.0,
                "output_sqnr_db": 10.0,
                "latency_share": 0.3,
                "bytes": 400,
            },
        ],
    }


FLOAT = 0.95


def synthetic_rows() -> list[dict[str, Any]]:
    return [
        make_row("fp32", kind="baseline", label="fp32", bits=None, size=4000, latency=4.0,
                 value=FLOAT, ci=(0.0, 0.0), sqnr=None, sqnr_ci=None),
        make_row("bf16", kind="baseline", label="bf16", bits=None, size=2000, latency=3.0,
                 value=FLOAT, ci=(0.0, 0.0), sqnr=50.0),
        make_row("w8", size=1000, latency=1.0, value=0.95, ci=(-0.01, 0.01)),
        make_row("w8qat", method="qat", size=1000, latency=1.1, value=0.945, parent="w8"),
        make_row("w4", bits=4, size=500, latency=2.0, latency_kind="simulated", value=0.90),
        make_row("w4qat", bits=4, method="qat", size=500, latency=2.1,
                 latency_kind="simulated", value=0.93, parent="w4", ci=(-0.05, 0.03)),
        make_row("w2", bits=2, size=250, latency=2.5, latency_kind="simulated", value=0.40,
                 ci=(-0.6, -0.58)),
        make_row("w2qat", bits=2, method="qat", size=250, latency=2.4,
                 latency_kind="simulated", value=0.70, parent="not-in-rows"),
        make_row("w4gptq", bits=4, algorithm="gptq", size=520, latency=1.5, value=0.935),
        make_row("mix", kind="mixed", bits=None, method=None, algorithm=None, size=700,
                 latency=1.2, value=0.948),
        make_row("nosize", size=None, value=0.99),
        make_row("nometric", value=None),
    ]  # fmt: skip


def traces(fig: go.Figure, meta: str) -> list[Any]:
    return [t for t in fig.data if t.meta == meta]


def keys_of(fig: go.Figure, meta: str = "series") -> list[str]:
    return [k for t in traces(fig, meta) for k in t.customdata]


def point_table(fig: go.Figure) -> dict[str, dict[str, Any]]:
    """Per row key: x, y, marker symbol, error bar (+, -) and series of its point."""
    out = {}
    for t in traces(fig, "series"):
        symbols = t.marker.symbol
        for i, key in enumerate(t.customdata):
            out[key] = {
                "x": t.x[i],
                "y": t.y[i],
                "symbol": symbols[i] if isinstance(symbols, tuple | list) else symbols,
                "plus": t.error_y.array[i],
                "minus": t.error_y.arrayminus[i],
                "series": t.name,
            }
    return out


def plotted(rows: list[dict[str, Any]], x: str, path: str) -> list[dict[str, Any]]:
    def value(row: dict[str, Any], p: str) -> Any:
        for part in p.split("."):
            row = row.get(part) if isinstance(row, dict) else None
        return row

    return [r for r in rows if value(r, x) is not None and value(r, path) is not None]


# --- real rows ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One quick sweep through the command line, run once for the module."""
    with pytest.MonkeyPatch.context() as mp:
        tmp = tmp_path_factory.mktemp("plots")
        mp.setenv("EXPLORER_CACHE", str(tmp / "cache"))
        mp.setenv("EXPLORER_STORE", str(tmp / "store.sqlite"))
        out, err = io.StringIO(), io.StringIO()
        argv = ["sweep", "--model", "digits-cnn", "--bits", "8,4,5", "--granularity", "channel"]
        argv += ["--method", "ptq,qat", "--qat-steps", "20", "--repeats", "3", "--n-boot", "200"]
        argv += ["--threads", "1", "--store", str(tmp / "store.sqlite"), "--json"]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
        assert code == 0, err.getvalue()[-2000:]
        yield json.loads(out.getvalue().strip().splitlines()[-1])


# --- reading rows ---------------------------------------------------------------------------


def test_metric_float_and_series_of_rows() -> None:
    rows = synthetic_rows()
    assert plots.metric_of(rows) == ("metrics.accuracy", "max")
    assert plots.float_metric(rows) == FLOAT
    assert plots.float_metric(rows, "sqnr_db") is None  # fp32 against itself: no SQNR
    assert plots.float_metric(rows[2:]) is None  # no fp32 row
    by_key = {r["key"]: plots.series_of(r) for r in rows}
    assert by_key["fp32"] == by_key["bf16"] == "fp32/bf16 baseline"
    assert by_key["w8"] == "PTQ · RTN"
    assert by_key["w8qat"] == "QAT"
    assert by_key["w4gptq"] == "PTQ · GPTQ"
    assert by_key["mix"] == "mixed (per layer)"
    ppl = [make_row("a", metric_name="perplexity", value=12.0)]
    assert plots.metric_of(ppl) == ("metrics.perplexity", "min")
    unlabelled = [make_row("a", metric_name=None)]
    assert plots.metric_of(unlabelled) == ("metrics.sqnr_db", "max")


def algorithm_rows() -> list[dict[str, Any]]:
    """fp32, W4 per channel by RTN, GPTQ, AWQ and QAT, W2 by RTN, and a mixed plan."""
    return [
        make_row("fp32", kind="baseline", label="fp32", bits=None, size=4000, value=FLOAT),
        {**make_row("rtn", bits=4, size=500, value=0.90), "seconds": {"calibrate": 0.0}},
        {
            **make_row("gptq", bits=4, algorithm="gptq", size=500, value=0.93),
            "seconds": {"calibrate": 12.5, "algorithm": 11.0},
        },
        {
            **make_row("awq", bits=4, algorithm="awq", size=500, value=0.92),
            "seconds": {"calibrate": 8.0, "algorithm": 6.25, "statistics_reused": 1.5},
        },
        {
            **make_row("qat", bits=4, method="qat", size=500, value=0.94, parent="rtn"),
            "seconds": {"qat": 40.0, "calibrate": 0.0},
        },
        {
            **make_row("mix", kind="mixed", bits=None, method=None, algorithm=None, size=520),
            "algorithms": {"rtn": 3, "gptq": 1},
            "seconds": {"calibrate": 3.0},
        },
        make_row("w2", bits=2, size=250, value=0.5),
    ]


def test_algorithms_are_distinct_series_and_the_hover_names_their_cost() -> None:
    rows = algorithm_rows()
    for fig in (plots.pareto_figure(rows), plots.pareto_figure(rows, x="latency_ms")):
        series = traces(fig, "series")
        assert [t.name for t in series] == [
            "fp32/bf16 baseline",
            "PTQ · RTN",
            "PTQ · GPTQ",
            "PTQ · AWQ",
            "QAT",
            "mixed (per layer)",
        ]
        assert len({t.marker.color for t in series}) == len(series)
        points = point_table(fig)
        assert [points[k]["symbol"] for k in ("rtn", "gptq", "awq", "qat")] == [
            "circle",
            "hexagon",
            "pentagon",
            "triangle-up",
        ]
        hover = {k: t.hovertext[i] for t in series for i, k in enumerate(t.customdata)}
        assert "— PTQ · GPTQ" in hover["gptq"]
        assert "PTQ, GPTQ · calibration 12.5 s (of which the algorithm 11.0 s)" in hover["gptq"]
        assert "PTQ, AWQ · calibration 9.5 s (of which the algorithm 6.2 s)" in hover["awq"]
        assert "input statistics (1.5 s of it) reused from an earlier row" in hover["awq"]
        assert "reused" not in hover["gptq"]
        assert "PTQ, RTN · calibration 0.0 s" in hover["rtn"]
        assert "QAT from RTN: 20 steps · training 40.0 s" in hover["qat"]
        assert "mixed plan: GPTQ ×1, RTN ×3 · calibration 3.0 s" in hover["mix"]
        assert "calibration" not in hover["fp32"]
    three_d = plots.pareto_3d_figure(rows)
    assert [t.name for t in traces(three_d, "series")][1:4] == [
        "PTQ · RTN",
        "PTQ · GPTQ",
        "PTQ · AWQ",
    ]


def test_setting_figure_puts_the_algorithms_of_one_format_side_by_side() -> None:
    rows = algorithm_rows()
    fig = plots.setting_figure(rows, selected_key="gptq")
    series = {t.name: t for t in traces(fig, "series")}
    assert list(series) == ["PTQ · RTN", "PTQ · GPTQ", "PTQ · AWQ", "QAT"]  # no baseline, mixed
    assert list(series["PTQ · RTN"].customdata) == ["rtn", "w2"]
    assert list(series["PTQ · RTN"].x) == ["W4 channel", "W2 channel"]
    assert [list(series[n].x) for n in ("PTQ · GPTQ", "PTQ · AWQ", "QAT")] == [["W4 channel"]] * 3
    assert fig.layout.scattermode == "group" and fig.layout.xaxis.type == "category"
    assert list(fig.layout.xaxis.categoryarray) == ["W4 channel", "W2 channel"]  # larger first
    assert series["PTQ · GPTQ"].y == (0.93,) and series["PTQ · GPTQ"].marker.line.width == (3,)
    assert "PTQ, GPTQ · calibration 12.5 s" in series["PTQ · GPTQ"].hovertext[0]
    (line,) = [s for s in fig.layout.shapes if s.name == "fp32-metric"]
    assert line.y0 == FLOAT
    lo, hi = fig.layout.yaxis.range  # the metric's range (with the bars and fp32), not from 0
    assert 0.4 < lo < 0.5 and FLOAT < hi < 1.05
    assert plots.setting_of({**rows[1], "config": {"rules": [["fc*", {}]]}}) == "W4 channel on fc*"
    assert plots.setting_of({**rows[1], "symmetric": False, "act_bits": 8}) == "W4 channel asym A8"
    empty = plots.setting_figure(rows[:1])
    assert "empty" in [a.name for a in empty.layout.annotations]


# --- the Pareto scatter ---------------------------------------------------------------------


@pytest.mark.parametrize("x", ["size_bytes", "latency_ms"])
def test_pareto_figure_synthetic(x: str) -> None:
    rows = synthetic_rows()
    fig = plots.pareto_figure(rows, x=x, selected_key="w4", log_x=False)
    shown = plotted(rows, x, "metrics.accuracy")
    assert "nometric" not in keys_of(fig)
    assert ("nosize" in keys_of(fig)) == (x == "latency_ms")  # a row without a size has a latency

    # one trace per series, every plotted row once, its key as customdata
    names = [t.name for t in traces(fig, "series")]
    assert sorted(names) == sorted({plots.series_of(r) for r in shown})
    assert len(names) == len(set(names))
    assert sorted(keys_of(fig)) == sorted(r["key"] for r in shown)

    # the front: exactly the flagged rows, joined left to right by a step line
    flags = flag_pareto(shown, [(x, "min"), ("metrics.accuracy", "max")])
    (front,) = traces(fig, "front")
    assert sorted(front.customdata) == sorted(
        r["key"] for r, f in zip(shown, flags, strict=True) if f
    )
    assert list(front.x) == sorted(front.x)
    assert front.line.shape == "hv"

    # error bars: the delta interval around the fp32 accuracy
    points = point_table(fig)
    for row in shown:
        lo, hi = row["metrics_ci"]["accuracy"]
        p = points[row["key"]]
        assert p["y"] + p["plus"] == pytest.approx(max(p["y"], FLOAT + hi))
        assert p["y"] - p["minus"] == pytest.approx(min(p["y"], FLOAT + lo))
    assert points["w4qat"]["plus"] == pytest.approx(FLOAT + 0.03 - 0.93)
    assert points["w2"]["plus"] == pytest.approx(0.0)  # float + hi below the point: clipped

    # hollow markers exactly for simulated latencies, and only on the latency axis
    for row in shown:
        hollow = points[row["key"]]["symbol"].endswith("-open")
        assert hollow == (x == "latency_ms" and row["latency_kind"] == "simulated")
    notes = [t.name for t in traces(fig, "legend")]
    assert notes == ([plots.SIMULATED_NOTE] if x == "latency_ms" else [])
    if x == "latency_ms":
        assert "(simulated)" in fig.data[names.index("PTQ · RTN")].hovertext[1]  # w4

    # PTQ → QAT arrows for QAT rows whose parent is plotted, parent → QAT point
    arrows = [a for a in fig.layout.annotations if (a.name or "").startswith("qat-recovery:")]
    assert sorted(a.name.split(":", 1)[1] for a in arrows) == ["w4qat", "w8qat"]
    for a in arrows:
        child = a.name.split(":", 1)[1]
        parent = {"w4qat": "w4", "w8qat": "w8"}[child]
        assert (a.x, a.y) == (points[child]["x"], points[child]["y"])
        assert (a.ax, a.ay) == (points[parent]["x"], points[parent]["y"])
        assert a.showarrow and a.axref == "x" and a.ayref == "y"

    # baselines: distinct markers and the dashed fp32 line
    assert points["fp32"]["symbol"].startswith("star")
    assert points["bf16"]["symbol"].startswith("diamond")
    (line,) = [s for s in fig.layout.shapes if s.name == "fp32-metric"]
    assert line.y0 == line.y1 == FLOAT and line.line.dash == "dash"

    # the selected row is ringed
    (sel,) = traces(fig, "selected")
    assert list(sel.customdata) == ["w4"]
    assert (sel.x[0], sel.y[0]) == (points["w4"]["x"], points["w4"]["y"])

    hover = fig.data[names.index("QAT")].hovertext[0]
    assert "W8 channel" in hover and "int8-wo-native ×1" in hover and "95% CI" in hover
    json.loads(fig.to_json())


def test_pareto_figure_units_axes_and_edge_cases() -> None:
    rows = synthetic_rows()
    fig = plots.pareto_figure(rows)
    assert "KiB" in fig.layout.xaxis.title.text
    assert point_table(fig)["w8"]["x"] == pytest.approx(1000 / 1024)
    assert "higher is better" in fig.layout.yaxis.title.text
    big = [make_row("a", size=5 * 2**20), make_row("b", size=2**20)]
    assert "MiB" in plots.pareto_figure(big).layout.xaxis.title.text

    # log x: the arrows' coordinates are log10 of the data, as Plotly wants them
    fig = plots.pareto_figure(rows, x="latency_ms", log_x=True)
    assert fig.layout.xaxis.type == "log"
    arrow = next(a for a in fig.layout.annotations if a.name == "qat-recovery:w8qat")
    assert arrow.x == pytest.approx(math.log10(1.1)) and arrow.ax == pytest.approx(0.0)

    # perplexity: lower is better, the front follows
    ppl = [
        make_row("f", kind="baseline", label="fp32", bits=None, size=400, value=10.0,
                 metric_name="perplexity", ci=(0.0, 0.0)),
        make_row("a", size=100, value=11.0, metric_name="perplexity", ci=(0.5, 1.5)),
        make_row("b", size=200, value=12.0, metric_name="perplexity"),
    ]  # fmt: skip
    fig = plots.pareto_figure(ppl)
    assert "lower is better" in fig.layout.yaxis.title.text
    assert sorted(traces(fig, "front")[0].customdata) == ["a", "f"]
    a = point_table(fig)["a"]
    assert (a["y"] - a["minus"], a["y"] + a["plus"]) == pytest.approx((10.5, 11.5))

    # a fidelity metric's interval is of the metric itself
    fig = plots.pareto_figure(rows, metric="sqnr_db")
    w8 = point_table(fig)["w8"]
    assert (w8["y"] - w8["minus"], w8["y"] + w8["plus"]) == pytest.approx((19.5, 20.5))
    assert "fp32" not in keys_of(fig)  # no SQNR against itself: left out
    assert not [s for s in fig.layout.shapes if s.name == "fp32-metric"]

    # nothing to plot: an empty figure that says so
    fig = plots.pareto_figure([make_row("a", size=None)])
    assert not traces(fig, "series")
    assert any(a.name == "empty" for a in fig.layout.annotations)
    json.loads(fig.to_json())


def test_pareto_3d_figure() -> None:
    rows = synthetic_rows()
    fig = plots.pareto_3d_figure(rows, selected_key="w8")
    shown = [r for r in plotted(rows, "size_bytes", "metrics.accuracy") if r["latency_ms"]]
    assert sorted(keys_of(fig)) == sorted(r["key"] for r in shown)
    axes = [("size_bytes", "min"), ("latency_ms", "min"), ("metrics.accuracy", "max")]
    flags = flag_pareto(shown, axes)
    (front,) = traces(fig, "front")
    assert sorted(front.customdata) == sorted(
        r["key"] for r, f in zip(shown, flags, strict=True) if f
    )
    for t in traces(fig, "series"):
        assert isinstance(t, go.Scatter3d)
        by_key = {r["key"]: r for r in shown}
        for key, symbol in zip(t.customdata, t.marker.symbol, strict=True):
            assert symbol.endswith("-open") == (by_key[key]["latency_kind"] == "simulated")
    assert list(traces(fig, "selected")[0].customdata) == ["w8"]
    json.loads(fig.to_json())


def test_selected_keys_reads_selection_events() -> None:
    event = {"selection": {"points": [{"customdata": "a"}, {"customdata": ["b"]}, {"x": 1}]}}
    assert plots.selected_keys(event) == ["a", "b"]
    assert plots.selected_keys({"points": [{"customdata": "a"}, {"customdata": "a"}]}) == ["a"]
    assert plots.selected_keys(None) == []


@pytest.mark.parametrize("x", ["size_bytes", "latency_ms"])
def test_pareto_figure_real_rows(real: dict[str, Any], x: str) -> None:
    rows = real["rows"]
    fig = plots.pareto_figure(rows, x=x, selected_key=rows[-1]["key"])
    path, sense = plots.metric_of(rows)
    assert (path, sense) == ("metrics.accuracy", "max")
    shown = plotted(rows, x, path)
    assert sorted(keys_of(fig)) == sorted(r["key"] for r in shown)
    assert {t.name for t in traces(fig, "series")} == {"fp32/bf16 baseline", "PTQ · RTN", "QAT"}

    flags = flag_pareto(shown, [(x, "min"), (path, sense)])
    assert sorted(traces(fig, "front")[0].customdata) == sorted(
        r["key"] for r, f in zip(shown, flags, strict=True) if f
    )
    base = real["baseline"]["fp32"]["accuracy"]
    assert plots.float_metric(rows) == base
    points = point_table(fig)
    for row in shown:
        lo, hi = row["metrics_ci"]["accuracy"]
        p = points[row["key"]]
        assert p["y"] + p["plus"] == pytest.approx(max(p["y"], base + hi))
        assert p["y"] - p["minus"] == pytest.approx(min(p["y"], base + lo))
        hollow = p["symbol"].endswith("-open")
        assert hollow == (x == "latency_ms" and row["latency_kind"] == "simulated")
    assert any(r["latency_kind"] == "simulated" for r in shown)  # 5 bits: no kernel

    keys = {r["key"] for r in shown}
    qat = {r["key"] for r in shown if r["method"] == "qat" and r["parent"] in keys}
    assert len(qat) == 3
    arrows = {a.name.split(":", 1)[1] for a in fig.layout.annotations if a.name}
    assert qat <= arrows and len(arrows - qat) <= 1  # besides the arrows, at most "empty"
    assert points[next(r["key"] for r in rows if r["label"] == "fp32")]["symbol"] == "star"
    assert points[next(r["key"] for r in rows if r["label"] == "bf16")]["symbol"] == "diamond"
    assert [s.y0 for s in fig.layout.shapes if s.name == "fp32-metric"] == [base]
    json.loads(fig.to_json())

    fig3 = plots.pareto_3d_figure(rows)
    three = plotted(rows, "latency_ms", path)
    flags3 = flag_pareto(three, [("size_bytes", "min"), ("latency_ms", "min"), (path, sense)])
    assert sorted(traces(fig3, "front")[0].customdata) == sorted(
        r["key"] for r, f in zip(three, flags3, strict=True) if f
    )


# --- sensitivity ----------------------------------------------------------------------------


def test_sensitivity_heatmap_synthetic() -> None:
    layers, settings = ["a", "b", "c"], ["W8 channel", "W4 g32"]
    cells = []
    for i, layer in enumerate(layers):
        for j, setting in enumerate(settings):
            applicable = "group size 32 does not divide 16" if (layer, j) == ("a", 1) else None
            cells.append(
                {"layer": layer, "setting": setting, "applicable": applicable,
                 "metric_drop": None if applicable else 0.01 * (i + 1) * (j + 1),
                 "kl": 0.1, "weight_sqnr_db": 40.0 - 20 * j}
            )  # fmt: skip
    sens = {"model": "toy", "metric": "accuracy", "layers": layers, "settings": settings,
            "cells": cells}  # fmt: skip
    fig = plots.sensitivity_heatmap(sens)
    (heat,) = fig.data
    z = [list(r) for r in heat.z]
    assert len(z) == len(layers) and all(len(r) == len(settings) for r in z)
    assert z[0][1] is None and z[0][0] == pytest.approx(0.01) and z[2][1] == pytest.approx(0.06)
    assert list(heat.y) == layers and list(heat.x) == settings
    assert "does not apply" in heat.hovertext[0][1] and heat.text[0][1] == "n/a"
    assert "accuracy drop" in fig.layout.title.text
    z2 = plots.sensitivity_heatmap(sens, value="weight_sqnr_db").data[0].z
    assert z2[1][1] == 20.0 and z2[0][1] is None
    with pytest.raises(ValueError, match="value must be one of"):
        plots.sensitivity_heatmap(sens, value="nope")
    json.loads(fig.to_json())


def test_sensitivity_heatmap_real(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EXPLORER_CACHE", str(tmp_path))
    from explorer.sweep.context import ModelSource, open_context
    from explorer.sweep.sensitivity import measure_sensitivity

    ctx = open_context(ModelSource(model="digits-cnn"))
    settings = ("W8 channel", "W4 g32")
    sens = measure_sensitivity(ctx, settings, full_metric=False, latency=False).to_dict()
    z = plots.sensitivity_heatmap(sens, value="weight_sqnr_db").data[0].z
    assert len(z) == len(sens["layers"]) and all(len(r) == len(settings) for r in z)
    for cell in sens["cells"]:
        value = z[sens["layers"].index(cell["layer"])][settings.index(cell["setting"])]
        if cell["applicable"] is None:
            assert value == pytest.approx(cell["weight_sqnr_db"])
        else:
            assert value is None
    assert any(c["applicable"] for c in sens["cells"])  # g32 does not fit the first conv


# --- per-layer views ------------------------------------------------------------------------


def test_layer_figure() -> None:
    row = make_row("w4", bits=4)
    fig = plots.layer_figure(row)
    bars = traces(fig, "series")
    assert {t.name for t in bars} == {"int8-wo-native", "reference"}
    by_layer = {x: (y, t) for t in bars for x, y in zip(t.x, t.y, strict=True)}
    assert by_layer["fc1"][0] == 0.7 and by_layer["fc2"][0] == 0.3
    assert list(by_layer["fc2"][1].marker.pattern.shape) == ["/"]  # simulated: hatched
    assert list(by_layer["fc1"][1].marker.pattern.shape) == [""]
    assert [t.name for t in traces(fig, "legend")] == [plots.HATCH_NOTE]
    assert all(k == "w4" for t in bars for k in t.customdata)
    assert list(fig.layout.xaxis.categoryarray) == ["fc1", "fc2"]
    sq = plots.layer_figure(row, value="weight_sqnr_db")
    assert sorted(y for t in traces(sq, "series") for y in t.y) == [12.0, 30.0]
    with pytest.raises(ValueError, match="value must be one of"):
        plots.layer_figure(row, value="nope")
    json.loads(fig.to_json())


def test_compare_layers_figure() -> None:
    a, b = make_row("w8"), make_row("w4", bits=4)
    b["layers"][1]["output_sqnr_db"] = 5.0
    fig = plots.compare_layers_figure(a, b)
    bars = traces(fig, "series")
    assert [t.name for t in bars] == ["w8", "w4"] and fig.layout.barmode == "group"
    assert [list(t.x) for t in bars] == [["fc1", "fc2"], ["fc1", "fc2"]]
    assert list(bars[1].y) == [28.0, 5.0]
    assert list(bars[0].customdata) == ["w8", "w8"]
    same = plots.compare_layers_figure(a, a)
    assert [t.name for t in traces(same, "series")] == ["w8 (A)", "w8 (B)"]
    json.loads(fig.to_json())


def test_layer_figures_real_rows(real: dict[str, Any]) -> None:
    rows = {r["label"]: r for r in real["rows"]}
    w8, w2 = rows["W8 channel sym ptq"], rows["W5 channel sym ptq"]  # 5 bits: simulated
    fig = plots.layer_figure(w8)
    shares = [y for t in traces(fig, "series") for y in t.y]
    assert sorted(shares) == sorted(layer["latency_share"] for layer in w8["layers"])
    assert 0 < sum(shares) <= 1.0 + 1e-9  # shares of the whole model's time
    assert not traces(fig, "legend")  # every 8-bit layer runs on a real kernel
    fig = plots.layer_figure(w2, value="output_sqnr_db")
    assert [t.name for t in traces(fig, "legend")] == [plots.HATCH_NOTE]
    empty = plots.layer_figure(w2)  # simulated row: no per-layer latency
    assert any(a.name == "empty" for a in empty.layout.annotations)
    assert tuple(empty.layout.yaxis.range) == (0, 1)  # a share axis, not an autoscaled 400 %
    cmp = plots.compare_layers_figure(w8, w2)
    assert [len(t.x) for t in traces(cmp, "series")] == [len(w8["layers"])] * 2
    json.loads(cmp.to_json())


# --- lessons --------------------------------------------------------------------------------


def test_histogram_figure_small_grid_clip_and_error() -> None:
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.1, 5000)
    grid = np.linspace(-0.3, 0.3, 16)
    error = rng.uniform(-0.02, 0.02, 5000)
    fig = plots.histogram_figure(
        {
            "weights": weights,
            "grid": grid.tolist(),
            "clip": [-0.3, 0.3],
            "title": "W4",
            "error": error,
        }
    )
    hists = traces(fig, "series")
    assert len(hists) == 2 and sum(hists[0].y) == 5000 and sum(hists[1].y) == 5000
    assert hists[0].xaxis == "x" and hists[1].xaxis == "x2"
    lines = [s for s in fig.layout.shapes if s.name == "grid"]
    assert sorted(s.x0 for s in lines) == pytest.approx(sorted(grid.tolist()))
    (clip,) = [s for s in fig.layout.shapes if s.name == "clip-range"]
    assert (clip.x0, clip.x1) == (-0.3, 0.3)
    assert fig.layout.title.text == "W4"
    json.loads(fig.to_json())


def test_histogram_figure_large_grid_is_a_rug() -> None:
    weights = np.linspace(-1, 1, 1001)
    grid = np.linspace(-1, 1, 256)
    fig = plots.histogram_figure({"weights": weights, "grid": grid, "clip": [-1.0, 1.0]})
    assert not [s for s in fig.layout.shapes if s.name == "grid"]
    (rug,) = traces(fig, "rug")
    assert len(rug.x) == 256
    assert len(traces(fig, "series")) == 1  # no error given: no second histogram
    with pytest.raises(ValueError, match="weights"):
        plots.histogram_figure({"grid": [0.0]})
    with pytest.raises(ValueError, match="clip"):
        plots.histogram_figure({"weights": [0.1, 0.2], "clip": [1.0, -1.0]})


# --- kernel benchmark -----------------------------------------------------------------------


def test_kernel_speedup_figure() -> None:
    from explorer.measure.bench import bench_linear

    rows = bench_linear(ms=(1, 8), n=256, k=256, repeats=3)
    rows.append(
        {"op": "conv2d", "kernel": "fp32", "format": "fp32", "shape": {"batch": 1}, "ms": 1.0,
         "speedup_vs_fp32": 1.0}
    )  # fmt: skip
    fig = plots.kernel_speedup_figure(rows)
    bars = traces(fig, "series")
    assert sum(len(t.y) for t in bars) == len(rows)
    assert bars[0].name == "fp32" and bars[1].name == "bf16"
    fp32 = bars[0]
    assert list(fp32.x) == ["M=1", "M=8", "conv2d"] and list(fp32.y) == [1.0, 1.0, 1.0]
    heights = {(t.name, x): y for t in bars for x, y in zip(t.x, t.y, strict=True)}
    for r in rows[:-1]:
        name = r["kernel"] if r["format"] == r["kernel"] else f"{r['kernel']} ({r['format']})"
        assert heights[(name, f"M={r['M']}")] == r["speedup_vs_fp32"]
    (line,) = [s for s in fig.layout.shapes if s.name == "fp32-speed"]
    assert line.y0 == line.y1 == 1.0 and line.line.dash == "dash"
    assert fig.layout.barmode == "group"
    json.loads(fig.to_json())
    assert any(a.name == "empty" for a in plots.kernel_speedup_figure([]).layout.annotations)


# --- export ---------------------------------------------------------------------------------


def test_to_html_is_standalone() -> None:
    html = plots.to_html(plots.pareto_figure(synthetic_rows()))
    assert html.lstrip().lower().startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    assert "plotly" in html and "Plotly.newPlot" in html
    assert "cdn.plot.ly" not in html and 'src="http' not in html
