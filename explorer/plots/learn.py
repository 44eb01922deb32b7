"""The lessons' histogram: weights against the values a format can represent, the clip range and
the rounding error (`histogram_figure`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.plots.rows import finite_number

GRID_LINES_MAX = 64  # more representable values than this: a rug instead of one line each


def _floats(values: Any, what: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a list of numbers: {exc}") from None
    return array[np.isfinite(array)]


def _histogram_bars(values: np.ndarray, name: str, color: str) -> go.Bar:
    """Counts binned here (not in the browser), so a figure of a million weights stays small."""
    bins = int(min(120, max(10, round(math.sqrt(values.size)))))
    counts, edges = np.histogram(values, bins=bins)
    return go.Bar(
        x=((edges[:-1] + edges[1:]) / 2).tolist(),
        y=counts.tolist(),
        width=float(edges[1] - edges[0]) if edges[1] > edges[0] else None,
        name=name,
        meta="series",
        marker={"color": color, "line": {"width": 0}},
        customdata=np.stack([edges[:-1], edges[1:]], axis=1).tolist(),
        hovertemplate="%{customdata[0]:.4g} … %{customdata[1]:.4g}: %{y} values<extra></extra>",
    )


def histogram_figure(lesson: Mapping[str, Any]) -> go.Figure:
    """A histogram of ``lesson["weights"]`` with its quantization grid: one thin line per
    representable value in ``lesson["grid"]`` (a rug when there are more than 64), the
    ``lesson["clip"]`` range shaded, and below it, when ``lesson["error"]`` is given, the
    histogram of the rounding errors."""
    if "weights" not in lesson:
        raise ValueError("a lesson needs 'weights' to draw their histogram")
    weights = _floats(lesson["weights"], "weights")
    if weights.size == 0:
        raise ValueError("the lesson's weights are empty (or none is finite)")
    grid_values = lesson.get("grid")
    grid = np.unique(_floats([] if grid_values is None else grid_values, "grid"))
    error = _floats(lesson["error"], "error") if lesson.get("error") is not None else None
    with_error = error is not None and error.size > 0
    if with_error:
        fig = make_subplots(
            rows=2,
            cols=1,
            row_heights=[0.68, 0.32],
            vertical_spacing=0.2,
            subplot_titles=("weights and the values the format can represent", "rounding error"),
        )
        where: dict[str, int] = {"row": 1, "col": 1}
    else:
        fig = go.Figure()
        where = {}
    fig.add_trace(_histogram_bars(weights, f"weights ({weights.size:,})", "#1f77b4"), **where)

    clip = lesson.get("clip")
    if clip is not None:
        lo, hi = (finite_number(v) for v in clip) if len(clip) == 2 else (None, None)
        if lo is None or hi is None or lo > hi:
            raise ValueError(f"clip must be [lo, hi] with lo <= hi, got {clip!r}")
        fig.add_vrect(
            x0=lo,
            x1=hi,
            name="clip-range",
            fillcolor="rgba(255, 165, 0, 0.13)",
            line_width=0,
            layer="below",
            annotation_text="clip range",
            annotation_position="top left",
            **where,
        )
    grid_name = f"{grid.size} representable values"
    if 0 < grid.size <= GRID_LINES_MAX:
        for g in grid.tolist():
            fig.add_vline(
                x=g,
                name="grid",
                line={"width": 1, "color": "rgba(90, 90, 90, 0.35)"},
                layer="above",
                **where,
            )
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="lines",
                line={"width": 1, "color": "rgba(90, 90, 90, 0.6)"},
                name=grid_name,
                meta="legend",
                hoverinfo="skip",
            ),
            **where,
        )
    elif grid.size > GRID_LINES_MAX:
        fig.add_trace(
            go.Scatter(
                x=grid.tolist(),
                y=[0] * grid.size,
                mode="markers",
                marker={"symbol": "line-ns-open", "size": 9, "color": "rgba(60, 60, 60, 0.7)"},
                name=grid_name,
                meta="rug",
                hovertemplate="representable: %{x:.4g}<extra></extra>",
            ),
            **where,
        )
    if with_error:
        fig.add_trace(_histogram_bars(error, "rounding error", "#d62728"), row=2, col=1)
        fig.update_xaxes(title_text="weight value", row=1, col=1)
        fig.update_xaxes(title_text="dequantized − original", row=2, col=1)
        fig.update_yaxes(title_text="count", row=1, col=1)
        fig.update_yaxes(title_text="count", row=2, col=1)
    else:
        fig.update_layout(xaxis={"title": "weight value"}, yaxis={"title": "count"})
    fig.update_layout(
        title=lesson.get("title") or "weights and their quantization grid",
        bargap=0,
        legend={"orientation": "h", "y": -0.15 if not with_error else -0.1},
    )
    return fig
