"""The Pareto scatter of result rows: the task metric against size or latency (`pareto_figure`),
size, latency and the metric in 3-D (`pareto_3d_figure`), and the row keys of a selection event
(`selected_keys`).

The front is the non-dominated set of `explorer.sweep.pareto` over (x minimized, metric in its
sense), joined by a step line: between two front points the best attainable metric is that of the
point on the left.

The axes follow the task (`explorer.plots.axes`): a speech recognizer's word error rate is drawn
in percent against its real-time factor. Reference points (``references``: another runtime's
numbers on the same data, such as faster-whisper's) are drawn beside the explorer's
configurations, labelled, and never join the front.

``explain=True`` draws the view a newcomer opens first: points off the front faded so the front
reads at a glance, a log size axis once sizes span a factor 4, the float line named in words,
and the bit-width cliff (`bit_cliff`: the steepest fall of the metric between two neighbouring
weight widths of post-training quantization) pointed out with its numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go

from explorer.measure.display import format_metric
from explorer.plots.axes import (
    PERCENT_METRICS,
    axis_name,
    is_rtf,
    latency_title,
    metric_label,
)
from explorer.plots.hover import hover_text, metric_interval, reference_hover, size_unit
from explorer.plots.layout import add_empty_note, axis_title
from explorer.plots.rows import (
    Row,
    finite_number,
    float_metric,
    is_simulated,
    metric_name_of,
    plotted_rows,
    quality_axis,
    row_value,
)
from explorer.plots.series import (
    BASELINE_SERIES,
    QAT_SERIES,
    SELECTED_COLOR,
    SERIES_COLORS,
    marker_symbol,
    series_colors,
    series_of,
    series_rank,
    split_series,
)
from explorer.sweep.pareto import flag_pareto, front_order

X_AXES = {"size_bytes": "size as stored", "latency_ms": "latency", "bits_per_weight": "bits/weight"}
REFERENCE_COLOR = "#111111"
REFERENCE_SYMBOLS = ("x-thin-open", "cross-thin-open", "asterisk-open", "y-up-open")
FRONT_COLOR = "rgba(20, 20, 20, 0.75)"
SIMULATED_NOTE = "hollow = simulated latency (an upper bound)"
FADED_OPACITY = 0.35  # explain mode: points off the front
LOG_SPAN = 30.0  # a log x axis when x spans more than this factor
LOG_SPAN_EXPLAIN = 4.0


def _log_axis(values: Sequence[float], span: float = LOG_SPAN) -> bool:
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) and bool(values) and max(values) / min(values) > span


def _log_ticks(values: Sequence[float]) -> dict[str, Any]:
    """Ticks at 1, 2 and 5 times a power of ten within ``values``' range (Plotly's default log
    ticks label the minor ones with a bare digit)."""
    positive = [v for v in values if v > 0]
    if not positive:
        return {}
    lo, hi = min(positive), max(positive)
    ticks = [
        m * 10.0**e
        for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
        for m in (1, 2, 5)
        if lo / 1.5 <= m * 10.0**e <= hi * 1.5
    ]
    return {"tickvals": ticks, "ticktext": [f"{t:g}" for t in ticks]} if len(ticks) >= 2 else {}


@dataclass(frozen=True)
class Cliff:
    """The steepest fall of the metric between two neighbouring weight widths: the best
    post-training row at ``bits_before`` (``before``) against the best at ``bits_after``."""

    bits_before: int
    bits_after: int
    before: Row
    after: Row
    value_before: float
    value_after: float

    @property
    def fall(self) -> float:
        """How much worse ``after`` is, in the metric's units (positive)."""
        return abs(self.value_before - self.value_after)


def bit_cliff(
    rows: Iterable[Row], metric: str | None = None, float_value: float | None = None
) -> Cliff | None:
    """Where quality falls off a cliff as weights get fewer bits, or None when it does not.

    Among uniform post-training rows (QAT and mixed plans left out) the best row of each weight
    width is taken; of each pair of neighbouring widths the one whose metric worsens the most is
    the cliff, provided the fall is real: the two rows' 95 % intervals do not overlap (rows
    without intervals: any worsening counts)."""
    all_rows = list(rows)
    path, sense = quality_axis(all_rows, metric)
    base = float_value if float_value is not None else float_metric(all_rows, path)
    best: dict[int, tuple[float, Row]] = {}
    for row in all_rows:
        bits, value = row.get("weight_bits"), finite_number(row_value(row, path))
        if row.get("kind") != "uniform" or row.get("method") == "qat" or value is None:
            continue
        if not isinstance(bits, int) or isinstance(bits, bool):
            continue
        if bits not in best or _better(value, best[bits][0], sense):
            best[bits] = (value, row)
    widths = sorted(best, reverse=True)
    cliff: Cliff | None = None
    for wide, narrow in zip(widths, widths[1:], strict=False):
        (v_wide, r_wide), (v_narrow, r_narrow) = best[wide], best[narrow]
        if not _better(v_wide, v_narrow, sense):
            continue
        lo_w, hi_w = metric_interval(r_wide, path, base)
        lo_n, hi_n = metric_interval(r_narrow, path, base)
        if lo_w is not None and hi_w is not None and lo_n is not None and hi_n is not None:
            apart = hi_n < lo_w if sense == "max" else lo_n > hi_w
            if not apart:
                continue
        candidate = Cliff(wide, narrow, r_wide, r_narrow, v_wide, v_narrow)
        if cliff is None or candidate.fall > cliff.fall:
            cliff = candidate
    return cliff


def _better(a: float, b: float, sense: str) -> bool:
    return a > b if sense == "max" else a < b


def cliff_text(cliff: Cliff, name: str, sense: str = "max") -> str:
    """The cliff in plain words: ``The cliff: from 3 to 2 bits, accuracy falls from 78.30% to
    11.50%`` (a lower-is-better metric such as perplexity *rises*)."""
    verb = "falls" if sense == "max" else "rises"
    return (
        f"The cliff: from {cliff.bits_before} to {cliff.bits_after} bits, {metric_label(name)} "
        f"{verb} from "
        f"{format_metric(name, cliff.value_before)} to {format_metric(name, cliff.value_after)}"
    )


def pareto_figure(
    rows: Iterable[Row],
    *,
    x: str = "size_bytes",
    metric: str | None = None,
    selected_key: str | None = None,
    title: str | None = None,
    log_x: bool | None = None,
    float_value: float | None = None,
    explain: bool = False,
    references: Sequence[Row] = (),
) -> go.Figure:
    """The task metric (or ``metric``) against size (``x="size_bytes"``) or latency
    (``x="latency_ms"``), one trace per `series_of`, the front highlighted, confidence intervals
    as error bars, PTQ → QAT recovery as arrows and the fp32 metric as a dashed line.

    ``log_x`` defaults to a log axis when x spans more than a factor 30 (4 with ``explain``).
    ``float_value`` is the float model's metric (default: the fp32 row's) that the task metric's
    delta interval is centred on. Rows without a value on either axis are left out.
    ``explain``: the newcomer's view of the module docstring. ``x`` may also be a dotted path,
    such as a workload's real-time factor (`explorer.plots.axes.latency_axis`).
    ``references``: rows of another runtime (a ``label``, the metric and a value at ``x``),
    drawn as labelled points of their own (meta ``"reference"``), off the front.
    """
    all_rows = list(rows)
    path, sense = quality_axis(all_rows, metric)
    name = metric_name_of(path)
    base = float_value if float_value is not None else float_metric(all_rows, path)
    plotted = plotted_rows(all_rows, [x, path])
    latency_x = x == "latency_ms" or is_rtf(x)

    xs_raw = [float(row_value(r, x)) for r in plotted]
    scale, unit = size_unit(xs_raw) if x == "size_bytes" else (1.0, "")
    if log_x is None:
        log_x = _log_axis(xs_raw, LOG_SPAN_EXPLAIN if explain else LOG_SPAN)

    def xv(row: Row) -> float:
        return float(row_value(row, x)) / scale

    flags = flag_pareto(plotted, [(x, "min"), (path, sense)]) if plotted else []
    on_front = {r.get("key") for r, f in zip(plotted, flags, strict=True) if f}

    fig = go.Figure()
    by_series: dict[str, list[Row]] = {}
    for row in plotted:
        by_series.setdefault(series_of(row), []).append(row)
    colors = series_colors(by_series)
    for series in sorted(by_series, key=series_rank):
        members = by_series[series]
        ys = [float(row_value(r, path)) for r in members]
        plus, minus, has_bars = [], [], False
        for r, y in zip(members, ys, strict=True):
            lo, hi = metric_interval(r, path, base)
            if lo is None or hi is None:
                plus.append(0.0)
                minus.append(0.0)
            else:
                plus.append(max(0.0, hi - y))
                minus.append(max(0.0, y - lo))
                has_bars = True
        symbols = [marker_symbol(r, series, latency_x and is_simulated(r)) for r in members]
        baseline = split_series(series)[0] == BASELINE_SERIES
        faded = {}
        if explain:
            faded["opacity"] = [1.0 if r.get("key") in on_front else FADED_OPACITY for r in members]
        fig.add_trace(
            go.Scatter(
                x=[xv(r) for r in members],
                y=ys,
                mode="markers+text" if baseline else "markers",
                text=[r.get("label") for r in members] if baseline else None,
                textposition=[
                    "bottom center" if r.get("label") == "bf16" else "top center" for r in members
                ],
                name=series,
                meta="series",
                customdata=[r.get("key") for r in members],
                hovertext=[hover_text(r, path, base, r.get("key") in on_front) for r in members],
                hovertemplate="%{hovertext}<extra></extra>",
                marker={
                    "symbol": symbols,
                    "size": 13 if baseline else 10,
                    "color": colors[series],
                    "line": {"width": 1.5, "color": colors[series]},
                    **faded,
                },
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": plus,
                    "arrayminus": minus,
                    "visible": has_bars,
                    "thickness": 1.2,
                    "width": 3,
                    "color": colors[series],
                },
            )
        )

    order = front_order(plotted, x, flags) if plotted else []
    if order:
        front = [plotted[i] for i in order]
        fig.add_trace(
            go.Scatter(
                x=[xv(r) for r in front],
                y=[float(row_value(r, path)) for r in front],
                mode="lines+markers",
                line={"shape": "hv", "color": FRONT_COLOR, "width": 1.5},
                marker={
                    "symbol": "circle",
                    "size": 20,
                    "color": "rgba(0, 0, 0, 0)",
                    "line": {"width": 2.5, "color": FRONT_COLOR},
                },
                name="Pareto front",
                meta="front",
                customdata=[r.get("key") for r in front],
                hovertext=[hover_text(r, path, base, True) for r in front],
                hovertemplate="%{hovertext}<extra></extra>",
            )
        )

    by_key = {r.get("key"): r for r in plotted}
    if selected_key is not None and selected_key in by_key:
        chosen = by_key[selected_key]
        fig.add_trace(
            go.Scatter(
                x=[xv(chosen)],
                y=[float(row_value(chosen, path))],
                mode="markers",
                marker={
                    "symbol": "circle",
                    "size": 26,
                    "color": "rgba(0, 0, 0, 0)",
                    "line": {"width": 3, "color": SELECTED_COLOR},
                },
                name="selected",
                meta="selected",
                customdata=[selected_key],
                hovertext=[hover_text(chosen, path, base, selected_key in on_front)],
                hovertemplate="%{hovertext}<extra></extra>",
            )
        )

    _add_references(fig, references, x, path, base, scale)

    if latency_x and any(is_simulated(r) for r in plotted):
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                marker={"symbol": "circle-open", "size": 10, "color": "#4d4d4d"},
                name=SIMULATED_NOTE,
                meta="legend",
                hoverinfo="skip",
            )
        )

    def ax(value: float) -> float:
        return math.log10(value) if log_x else value

    for row in plotted:
        parent = by_key.get(row.get("parent")) if row.get("parent") else None
        if row.get("method") != "qat" or parent is None:
            continue
        p_y, q_y = float(row_value(parent, path)), float(row_value(row, path))
        fig.add_annotation(
            name=f"qat-recovery:{row.get('key')}",
            x=ax(xv(row)),
            y=q_y,
            ax=ax(xv(parent)),
            ay=p_y,
            xref="x",
            yref="y",
            axref="x",
            ayref="y",
            text="",
            showarrow=True,
            arrowhead=3,
            arrowsize=1.2,
            arrowwidth=1.5,
            arrowcolor=colors.get(series_of(row), SERIES_COLORS[QAT_SERIES]),
            standoff=6,
            startstandoff=4,
            hovertext=(
                f"QAT recovery: {name} {format_metric(name, p_y)} (PTQ) → "
                f"{format_metric(name, q_y)} ({row.get('label')})"
            ),
        )

    if base is not None:
        fig.add_hline(
            y=base,
            name="fp32-metric",
            line={"dash": "dash", "color": "#4d4d4d", "width": 1},
            annotation_text=(
                f"float model (fp32): {format_metric(name, base)}, the {name} to keep"
                if explain
                else f"fp32 {format_metric(name, base)}"
            ),
            annotation_position="bottom left",
            annotation_font={"size": 10, "color": "#4d4d4d"},
        )

    cliff = bit_cliff(plotted, path, base) if explain else None
    if cliff is not None:
        fig.add_annotation(
            name="bit-cliff",
            x=ax(xv(cliff.after)),
            y=cliff.value_after,
            xref="x",
            yref="y",
            text=cliff_text(cliff, name, sense).replace(", ", ",<br>", 1),
            showarrow=True,
            arrowhead=2,
            arrowwidth=1.5,
            arrowcolor="#b22222",
            ax=60,
            ay=-50 if sense == "max" else 50,
            align="left",
            xanchor="left",
            font={"size": 12, "color": "#b22222"},
            bgcolor="rgba(255, 255, 255, 0.85)",
        )

    if x == "size_bytes":
        x_title = f"size as stored ({unit})"
    elif latency_x:
        x_title = latency_title(plotted or list(references), x)
        if any(is_simulated(r) for r in plotted):
            x_title += " — hollow markers: simulated"
    else:
        x_title = X_AXES.get(x, x)
    model = next((r.get("model") for r in plotted if r.get("model")), None)
    default_title = f"{metric_label(name)} against {axis_name(x)}" + (
        f" — {model}" if model else ""
    )
    fig.update_layout(
        title=title or default_title,
        xaxis={
            "title": x_title,
            "type": "log" if log_x else "linear",
            **(_log_ticks([xv(r) for r in plotted]) if log_x and explain else {}),
        },
        yaxis={
            "title": axis_title(name, sense),
            "tickformat": ".1%" if name in PERCENT_METRICS else None,
        },
        legend={"title": "series"},
        hovermode="closest",
        clickmode="event+select",
        margin={"t": 60},
    )
    if not plotted:
        add_empty_note(fig, f"no rows with both {axis_name(x)} and {name} to plot yet")
    return fig


def _add_references(
    fig: go.Figure,
    references: Sequence[Row],
    x: str,
    path: str,
    base: float | None,
    scale: float,
) -> None:
    """One labelled trace per reference row with a value on both axes."""
    for i, row in enumerate(plotted_rows(references, [x, path])):
        y = float(row_value(row, path))
        lo, hi = metric_interval(row, path, base)
        bars = lo is not None and hi is not None
        fig.add_trace(
            go.Scatter(
                x=[float(row_value(row, x)) / scale],
                y=[y],
                mode="markers+text",
                text=[row.get("label")],
                textposition="middle right",
                name=str(row.get("label")),
                meta="reference",
                customdata=[None],  # not a stored row: a click selects nothing
                hovertext=[reference_hover(row, path, base)],
                hovertemplate="%{hovertext}<extra></extra>",
                marker={
                    "symbol": REFERENCE_SYMBOLS[i % len(REFERENCE_SYMBOLS)],
                    "size": 13,
                    "color": REFERENCE_COLOR,
                    "line": {"width": 2, "color": REFERENCE_COLOR},
                },
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [max(0.0, hi - y)] if bars else [0.0],
                    "arrayminus": [max(0.0, y - lo)] if bars else [0.0],
                    "visible": bars,
                    "thickness": 1.2,
                    "width": 3,
                    "color": REFERENCE_COLOR,
                },
            )
        )


def pareto_3d_figure(
    rows: Iterable[Row],
    *,
    metric: str | None = None,
    selected_key: str | None = None,
    title: str | None = None,
    float_value: float | None = None,
    latency: str = "latency_ms",
) -> go.Figure:
    """Size, latency and the metric in 3-D; the points on the three-axis front (size and latency
    minimized, the metric in its sense) ringed; simulated latencies hollow. ``latency``: the
    latency axis's path (a real-time factor for speech, `explorer.plots.axes.latency_axis`)."""
    all_rows = list(rows)
    path, sense = quality_axis(all_rows, metric)
    name = metric_name_of(path)
    base = float_value if float_value is not None else float_metric(all_rows, path)
    plotted = plotted_rows(all_rows, ["size_bytes", latency, path])
    scale, unit = size_unit([float(r["size_bytes"]) for r in plotted])
    axes = [("size_bytes", "min"), (latency, "min"), (path, sense)]
    flags = flag_pareto(plotted, axes) if plotted else []
    on_front = {r.get("key") for r, f in zip(plotted, flags, strict=True) if f}

    def coords(members: Sequence[Row]) -> dict[str, list[float]]:
        return {
            "x": [float(r["size_bytes"]) / scale for r in members],
            "y": [float(row_value(r, latency)) for r in members],
            "z": [float(row_value(r, path)) for r in members],
        }

    fig = go.Figure()
    by_series: dict[str, list[Row]] = {}
    for row in plotted:
        by_series.setdefault(series_of(row), []).append(row)
    colors = series_colors(by_series)
    for series in sorted(by_series, key=series_rank):
        members = by_series[series]
        baseline = split_series(series)[0] == BASELINE_SERIES
        fig.add_trace(
            go.Scatter3d(
                **coords(members),
                mode="markers+text" if baseline else "markers",
                text=[r.get("label") for r in members] if baseline else None,
                name=series,
                meta="series",
                customdata=[r.get("key") for r in members],
                hovertext=[hover_text(r, path, base, r.get("key") in on_front) for r in members],
                hovertemplate="%{hovertext}<extra></extra>",
                marker={
                    "symbol": [
                        marker_symbol(r, series, is_simulated(r), three_d=True) for r in members
                    ],
                    "size": 6,
                    "color": colors[series],
                },
            )
        )
    front = [r for r, f in zip(plotted, flags, strict=True) if f]
    if front:
        fig.add_trace(
            go.Scatter3d(
                **coords(front),
                mode="markers",
                name="Pareto front (size, latency, metric)",
                meta="front",
                customdata=[r.get("key") for r in front],
                hovertext=[hover_text(r, path, base, True) for r in front],
                hovertemplate="%{hovertext}<extra></extra>",
                marker={"symbol": "circle-open", "size": 12, "color": FRONT_COLOR},
            )
        )
    chosen = next((r for r in plotted if selected_key and r.get("key") == selected_key), None)
    if chosen is not None:
        fig.add_trace(
            go.Scatter3d(
                **coords([chosen]),
                mode="markers",
                name="selected",
                meta="selected",
                customdata=[selected_key],
                hovertext=[hover_text(chosen, path, base, selected_key in on_front)],
                hovertemplate="%{hovertext}<extra></extra>",
                marker={"symbol": "circle-open", "size": 16, "color": SELECTED_COLOR},
            )
        )
    if any(is_simulated(r) for r in plotted):
        fig.add_trace(
            go.Scatter3d(
                x=[None],
                y=[None],
                z=[None],
                mode="markers",
                marker={"symbol": "circle-open", "size": 6, "color": "#4d4d4d"},
                name=SIMULATED_NOTE,
                meta="legend",
                hoverinfo="skip",
            )
        )
    fig.update_layout(
        title=title or f"size, {axis_name(latency)} and {metric_label(name)}",
        scene={
            "xaxis": {"title": f"size ({unit})"},
            "yaxis": {"title": latency_title(plotted, latency)},
            "zaxis": {"title": axis_title(name, sense)},
        },
        legend={"title": "series"},
        margin={"l": 0, "r": 0, "t": 50, "b": 0},
    )
    if not plotted:
        add_empty_note(fig, f"no rows with size, {axis_name(latency)} and {name} to plot yet")
    return fig


def selected_keys(event: Any) -> list[str]:
    """Row keys of the points in a Plotly selection event (Streamlit's ``on_select`` return
    value, or its ``selection`` part), in order, without repeats."""
    selection = _get_field(event, "selection")
    points = _get_field(selection if selection is not None else event, "points") or []
    keys: list[str] = []
    for point in points:
        data = _get_field(point, "customdata")
        if isinstance(data, list | tuple):
            data = data[0] if data else None
        if isinstance(data, str) and data not in keys:
            keys.append(data)
    return keys


def _get_field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)
