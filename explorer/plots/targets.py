"""Deployed vs explorer: for each configuration measured both by the explorer's own engine and in
a deployment runtime (ONNX Runtime, llama.cpp), the runtime's latency against the explorer's
(`deployed_figure`). Points under the diagonal run faster where they are deployed than the
explorer's kernels suggest; an int8 convolution is the classic case (our int8 kernels are
teaching kernels, ORT's QLinearConv is tuned).

A configuration is matched across targets by its label, its canonical plan and its QAT steps;
the latency compared is one workload's median that both rows timed (for language models the
runtime may time prefill only: then prefill is compared).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import plotly.graph_objects as go

from explorer.plots.layout import add_empty_note
from explorer.plots.rows import Row, finite_number
from explorer.plots.series import PALETTE, target_label

DIAGONAL_COLOR = "rgba(20, 20, 20, 0.45)"


def _configuration(row: Row) -> str:
    return json.dumps(
        [row.get("label"), row.get("config"), row.get("qat_steps")], sort_keys=True, default=str
    )


def _latency(row: Row, workload: str) -> float | None:
    timing = (row.get("latency") or {}).get(workload)
    if isinstance(timing, dict):
        return finite_number(timing.get("median_ms"))
    if row.get("latency_workload") == workload:
        return finite_number(row.get("latency_ms"))
    return None


def _workloads(row: Row) -> list[str]:
    found = list(row.get("latency") or {})
    return found or ([row["latency_workload"]] if row.get("latency_workload") else [])


def latency_pairs(rows: Iterable[Row], workload: str | None = None) -> list[dict[str, Any]]:
    """One entry per (configuration, other target) measured by both: ``label``, ``target``
    (the runtime's legend name), ``workload``, ``native_ms``, ``target_ms``, ``speedup``
    (native / target) and both rows' keys."""
    native: dict[str, Row] = {}
    others: list[Row] = []
    for row in rows:
        if target_label(row) is None:
            native.setdefault(_configuration(row), row)
        else:
            others.append(row)
    pairs = []
    for row in others:
        mine = native.get(_configuration(row))
        if mine is None:
            continue
        common = [w for w in _workloads(mine) if w in _workloads(row)]
        chosen = workload if workload in common else (common[0] if common else None)
        if chosen is None:
            continue
        a, b = _latency(mine, chosen), _latency(row, chosen)
        if a is None or b is None or a <= 0 or b <= 0:
            continue
        pairs.append(
            {
                "label": row.get("label"),
                "target": target_label(row),
                "workload": chosen,
                "native_ms": a,
                "target_ms": b,
                "speedup": a / b,
                "native_key": mine.get("key"),
                "key": row.get("key"),
                "kind": row.get("kind"),
            }
        )
    return pairs


def deployed_figure(rows: Iterable[Row], workload: str | None = None) -> go.Figure:
    """Each configuration's latency in a deployment runtime (y) against the explorer's own
    (x), log-log, one trace per runtime, with the y = x diagonal: below it the runtime is
    faster. ``workload`` picks the timed workload where both rows have it."""
    pairs = latency_pairs(rows, workload)
    fig = go.Figure()
    by_target: dict[str, list[dict[str, Any]]] = {}
    for pair in pairs:
        by_target.setdefault(str(pair["target"]), []).append(pair)
    for i, (target, members) in enumerate(sorted(by_target.items())):
        fig.add_trace(
            go.Scatter(
                x=[p["native_ms"] for p in members],
                y=[p["target_ms"] for p in members],
                mode="markers+text",
                text=[p["label"] for p in members],
                textposition="top center",
                name=target,
                meta="series",
                customdata=[p["key"] for p in members],
                hovertext=[
                    f"<b>{p['label']}</b> ({p['workload']})<br>explorer: {p['native_ms']:.3g} ms"
                    f"<br>{target}: {p['target_ms']:.3g} ms<br>"
                    + (
                        f"{p['speedup']:.2f}x faster in {target}"
                        if p["speedup"] >= 1
                        else f"{1 / p['speedup']:.2f}x slower in {target}"
                    )
                    for p in members
                ],
                hovertemplate="%{hovertext}<extra></extra>",
                marker={"size": 11, "color": PALETTE[i % len(PALETTE)], "symbol": "diamond"},
            )
        )
    values = [v for p in pairs for v in (p["native_ms"], p["target_ms"])]
    if values:
        lo, hi = min(values) / 1.5, max(values) * 1.5
        fig.add_trace(
            go.Scatter(
                x=[lo, hi],
                y=[lo, hi],
                mode="lines",
                line={"color": DIAGONAL_COLOR, "dash": "dash", "width": 1.5},
                name="same latency",
                meta="diagonal",
                hoverinfo="skip",
            )
        )
        span = [math.log10(lo), math.log10(hi)]
        fig.update_xaxes(type="log", range=span)
        fig.update_yaxes(type="log", range=span)
    else:
        add_empty_note(
            fig,
            "No configuration was measured on both targets: sweep with the native target and "
            "a deployment target (e.g. --target native,onnxruntime).",
        )
    chosen = pairs[0]["workload"] if pairs else workload
    fig.update_layout(
        title="Deployed vs explorer latency" + (f" ({chosen})" if chosen else ""),
        xaxis_title="explorer's own kernels (ms, lower is better)",
        yaxis_title="deployment runtime (ms, lower is better)",
        legend_title_text="runtime",
        template="plotly_white",
    )
    return fig
