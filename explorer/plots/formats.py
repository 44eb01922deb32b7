"""The metric of every uniform configuration per storage format (`setting_of`), side by side by
series: where a size plot stacks the algorithms of one format on one x, here they stand apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import plotly.graph_objects as go

from explorer.measure.display import format_metric
from explorer.plots.hover import hover_text, metric_interval
from explorer.plots.layout import add_empty_note, axis_title
from explorer.plots.rows import (
    Row,
    finite_number,
    float_metric,
    metric_name_of,
    plotted_rows,
    quality_axis,
    row_value,
)
from explorer.plots.series import (
    SELECTED_COLOR,
    marker_symbol,
    series_colors,
    series_of,
    series_rank,
)


def _padded(values: Sequence[float], share: float = 0.08) -> list[float] | None:
    """``[lo, hi]`` around ``values`` with ``share`` of their span (or of their size) on each
    side; None without values."""
    if not values:
        return None
    lo, hi = min(values), max(values)
    pad = (hi - lo) * share or abs(hi) * share or 1.0
    return [lo - pad, hi + pad]


def setting_of(row: Row) -> str:
    """The storage format of a uniform row without how it was produced (algorithm, PTQ or
    QAT): ``W4 group32``, ``W8 channel asym A8 token``. Rows that share it store weights of the
    same size, so they stack on one x of a size plot."""
    text = f"W{row.get('weight_bits')} {row.get('granularity') or ''}".rstrip()
    if row.get("symmetric") is False:
        text += " asym"
    if row.get("calibration") not in (None, "minmax"):
        text += f" {row['calibration']}"
    if row.get("act_bits") is not None:
        text += f" A{row['act_bits']} {row.get('act_granularity') or ''}".rstrip()
    config = row.get("config")
    rules = config.get("rules") if isinstance(config, Mapping) else None
    if rules:  # a sweep over chosen layers: the others stay float
        text += " on " + ", ".join(str(rule[0]) for rule in rules)
    return text


def setting_figure(
    rows: Iterable[Row],
    *,
    metric: str | None = None,
    selected_key: str | None = None,
    float_value: float | None = None,
) -> go.Figure:
    """The metric of every uniform configuration per storage format (`setting_of`, one category
    on x, larger formats left), side by side by `series_of` (RTN, GPTQ, AWQ, QAT, ...), with
    the same error bars, hover texts and fp32 line as `pareto_figure`. On a size plot the
    algorithms of one format share one x and hide each other; here they stand apart."""
    all_rows = list(rows)
    path, sense = quality_axis(all_rows, metric)
    name = metric_name_of(path)
    base = float_value if float_value is not None else float_metric(all_rows, path)
    plotted = [
        r
        for r in plotted_rows(all_rows, [path])
        if r.get("kind") == "uniform" and r.get("weight_bits") is not None
    ]
    order: dict[str, float] = {}
    for row in plotted:
        size = finite_number(row.get("size_bytes")) or 0.0
        order[setting_of(row)] = max(order.get(setting_of(row), 0.0), size)
    categories = sorted(order, key=lambda c: (-order[c], c))
    by_series: dict[str, list[Row]] = {}
    for row in plotted:
        by_series.setdefault(series_of(row), []).append(row)
    colors = series_colors(by_series)
    fig = go.Figure()
    extent = [] if base is None else [base]  # what the y range must show
    for series in sorted(by_series, key=series_rank):
        members = by_series[series]
        ys = [float(row_value(r, path)) for r in members]
        plus, minus = [], []
        for r, y in zip(members, ys, strict=True):
            lo, hi = metric_interval(r, path, base)
            plus.append(0.0 if hi is None else max(0.0, hi - y))
            minus.append(0.0 if lo is None else max(0.0, y - lo))
            extent += [y + plus[-1], y - minus[-1]]
        fig.add_trace(
            go.Scatter(
                x=[setting_of(r) for r in members],
                y=ys,
                mode="markers",
                name=series,
                meta="series",
                offsetgroup=series,
                customdata=[r.get("key") for r in members],
                hovertext=[hover_text(r, path, base) for r in members],
                hovertemplate="%{hovertext}<extra></extra>",
                marker={
                    "symbol": [marker_symbol(r, series, False) for r in members],
                    "size": 11,
                    "color": colors[series],
                    "line": {
                        "width": [3 if r.get("key") == selected_key else 0 for r in members],
                        "color": SELECTED_COLOR,
                    },
                },
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": plus,
                    "arrayminus": minus,
                    "visible": any(plus) or any(minus),
                    "thickness": 1.2,
                    "width": 3,
                    "color": colors[series],
                },
            )
        )
    if base is not None:
        fig.add_hline(
            y=base,
            name="fp32-metric",
            line={"dash": "dash", "color": "#4d4d4d", "width": 1},
            annotation_text=f"fp32 {format_metric(name, base)}",
            annotation_position="bottom left",
            annotation_font={"size": 10, "color": "#4d4d4d"},
        )
    model = next((r.get("model") for r in plotted if r.get("model")), None)
    fig.update_layout(
        title=f"{name} by storage format and method" + (f" — {model}" if model else ""),
        scattermode="group",
        xaxis={
            "title": "storage format (larger left)",
            "type": "category",
            "categoryorder": "array",
            "categoryarray": categories,
        },
        yaxis={
            "title": axis_title(name, sense),
            "tickformat": ".1%" if name in ("accuracy", "agreement") else None,
            # grouped scatter would start the axis at zero, as bars do: the metric's own range
            "range": _padded(extent),
        },
        legend={"title": "series"},
        hovermode="closest",
        clickmode="event+select",
        margin={"t": 60},
    )
    if not plotted:
        add_empty_note(fig, f"no uniform configurations with {name} to compare yet")
    return fig
