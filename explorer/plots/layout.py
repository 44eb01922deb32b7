"""Layout pieces several figures share: an axis title that says which way is better, and the
note an empty figure shows."""

from __future__ import annotations

import plotly.graph_objects as go

from explorer.plots.axes import METRIC_TITLES


def axis_title(name: str, sense: str) -> str:
    better = "higher" if sense == "max" else "lower"
    if name in METRIC_TITLES:  # a title with its own unit: "word error rate (%)"
        return f"{METRIC_TITLES[name]}, {better} is better"
    return f"{name} ({better} is better)"


def add_empty_note(fig: go.Figure, text: str) -> None:
    fig.add_annotation(
        name="empty",
        text=text,
        showarrow=False,
        xref="paper",
        yref="paper",
        x=0.5,
        y=0.5,
        font={"size": 14, "color": "#777"},
    )
