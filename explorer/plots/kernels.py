"""The kernel benchmark: speedup against fp32 of every kernel per workload
(`kernel_speedup_figure`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from explorer.plots.layout import add_empty_note
from explorer.plots.rows import finite_number
from explorer.plots.series import kernel_palette


def _bench_group(row: Mapping[str, Any]) -> str:
    if row.get("op") == "linear" or row.get("M") is not None:
        return f"M={row.get('M')}"
    return str(row.get("op") or "?")


def _bench_name(row: Mapping[str, Any]) -> str:
    kernel = str(row.get("kernel"))
    fmt = row.get("format")
    return kernel if not fmt or fmt == kernel else f"{kernel} ({fmt})"


def kernel_speedup_figure(bench_rows: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Speedup against fp32 of every kernel (grouped bars) per batch size M of the linear
    benchmark, plus the convolution; a dashed line at 1× (as fast as fp32)."""
    groups: list[str] = []
    traces: dict[str, list[Mapping[str, Any]]] = {}
    for row in bench_rows:
        if finite_number(row.get("speedup_vs_fp32")) is None:
            continue
        group = _bench_group(row)
        if group not in groups:
            groups.append(group)
        traces.setdefault(_bench_name(row), []).append(row)

    def rank(name: str) -> tuple[int, int]:
        first = traces[name][0].get("kernel")
        order = {"fp32": 0, "bf16": 1}.get(str(first), 2)
        return (order, list(traces).index(name))

    fig = go.Figure()
    colors = kernel_palette(len(traces))
    for i, name in enumerate(sorted(traces, key=rank)):
        members = traces[name]
        kernel = str(members[0].get("kernel"))
        color = {"fp32": "#4d4d4d", "bf16": "#9e9e9e"}.get(kernel, colors[i % len(colors)])
        hover = []
        for r in members:
            parts = [f"<b>{name}</b> · {_bench_group(r)}"]
            if r.get("op") == "linear":
                parts.append(f"linear M={r.get('M')} K={r.get('K')} N={r.get('N')}")
            elif isinstance(r.get("shape"), Mapping):
                parts.append(
                    f"{r.get('op')} " + ", ".join(f"{k}={v}" for k, v in r["shape"].items())
                )
            parts.append(f"{r.get('ms')} ms (median)")
            if r.get("gbps") is not None:
                parts.append(f"{r['gbps']} GB/s of weights")
            parts.append(f"{r['speedup_vs_fp32']:.2f}× fp32")
            hover.append("<br>".join(parts))
        fig.add_trace(
            go.Bar(
                x=[_bench_group(r) for r in members],
                y=[float(r["speedup_vs_fp32"]) for r in members],
                name=name,
                meta="series",
                marker={"color": color},
                hovertext=hover,
                hovertemplate="%{hovertext}<extra></extra>",
            )
        )
    fig.add_hline(
        y=1.0,
        name="fp32-speed",
        line={"dash": "dash", "color": "#4d4d4d", "width": 1},
        annotation_text="fp32 speed",
        annotation_position="top left",
    )
    fig.update_layout(
        title="Kernel speed against fp32",
        barmode="group",
        xaxis={
            "title": "workload",
            "type": "category",
            "categoryorder": "array",
            "categoryarray": groups,
        },
        yaxis={"title": "speedup vs fp32 (×, higher is faster)"},
        legend={"title": "kernel (format)"},
    )
    if not traces:
        add_empty_note(fig, "no benchmark rows yet")
    return fig
