"""Per-layer views: the sensitivity heatmap of layers by settings (`sensitivity_heatmap`), one
row's bars per layer coloured by kernel (`layer_figure`) and two rows' bars side by side
(`compare_layers_figure`); a layer without a real kernel is drawn hatched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from explorer.plots.layout import add_empty_note
from explorer.plots.rows import Row, finite_number, is_simulated
from explorer.plots.series import BASELINE_SERIES, SERIES_COLORS, kernel_palette

HATCH_NOTE = "hatched = simulated (no real kernel at this width)"

LAYER_VALUES = {
    "latency_share": "share of model latency",
    "weight_sqnr_db": "weight SQNR (dB, higher is better)",
    "output_sqnr_db": "output SQNR vs float (dB, higher is better)",
    "bytes": "bytes as stored",
}
SENSITIVITY_VALUES = {
    "metric_drop": ("metric drop (damage, lower is better)", "min"),
    "proxy": ("input-energy-weighted weight error (proxy damage, lower is better)", "min"),
    "kl": ("KL divergence from float (lower is better)", "min"),
    "weight_sqnr_db": ("weight SQNR (dB, higher is better)", "max"),
    "output_sqnr_db": ("output SQNR (dB, higher is better)", "max"),
    "metric": ("metric with this layer quantized", "max"),
    "size_bytes": ("bytes stored by the layer", "min"),
    "latency_ms": ("layer latency (ms)", "min"),
}

# --- sensitivity ----------------------------------------------------------------------------


def sensitivity_heatmap(sensitivity: Mapping[str, Any], value: str = "metric_drop") -> go.Figure:
    """Layers (rows) by settings (columns) of a `Sensitivity.to_dict()`; a cell where the setting
    does not apply to the layer is empty (None), its hover says why. A table measured in proxy
    mode (models of hundreds of layers) has no metric drop: it shows its proxy damage instead;
    one without a task metric on calibration data, its KL divergence from float."""
    if value not in SENSITIVITY_VALUES:
        raise ValueError(f"value must be one of {sorted(SENSITIVITY_VALUES)}, got {value!r}")
    if value in ("metric_drop", "kl") and sensitivity.get("mode") == "proxy":
        value = "proxy"
    layers = list(sensitivity.get("layers") or [])
    settings = list(sensitivity.get("settings") or [])
    cells = {(c["layer"], c["setting"]): c for c in sensitivity.get("cells") or []}
    if value == "metric_drop" and not _measured(cells.values(), "metric_drop"):
        # no task metric on calibration data (a speech model's calibration utterances carry
        # QAT's targets, an embedding's no pair scores): the damage is the KL to float
        value = "kl" if _measured(cells.values(), "kl") else value
    title, sense = SENSITIVITY_VALUES[value]
    if value == "metric_drop" and sensitivity.get("metric"):
        title = f"{sensitivity['metric']} drop (damage, lower is better)"
    z: list[list[float | None]] = []
    text: list[list[str]] = []
    hover: list[list[str]] = []
    for layer in layers:
        z_row, t_row, h_row = [], [], []
        for setting in settings:
            cell = cells.get((layer, setting))
            head = f"<b>{layer}</b> at {setting}"
            if cell is None:
                z_row.append(None)
                t_row.append("")
                h_row.append(f"{head}<br>not measured")
                continue
            if cell.get("applicable") is not None:
                z_row.append(None)
                t_row.append("n/a")
                h_row.append(f"{head}<br>does not apply: {cell['applicable']}")
                continue
            v = finite_number(cell.get(value))
            z_row.append(v)
            simulated = value == "latency_ms" and cell.get("simulated")
            t_row.append("" if v is None else f"{v:.3g}" + ("*" if simulated else ""))
            details = [
                f"{title}: {'–' if v is None else f'{v:.4g}'}"
                + (" (simulated)" if simulated else "")
            ]
            for extra in ("metric_drop", "kl", "weight_sqnr_db", "output_sqnr_db", "size_bytes"):
                if extra != value and finite_number(cell.get(extra)) is not None:
                    details.append(f"{extra}: {cell[extra]:.4g}")
            h_row.append("<br>".join([head, *details]))
        z.append(z_row)
        text.append(t_row)
        hover.append(h_row)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=settings,
            y=layers,
            text=text,
            texttemplate="%{text}",
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            hoverongaps=True,
            colorscale="RdYlGn_r" if sense == "min" else "RdYlGn",
            colorbar={"title": value},
            meta="heatmap",
        )
    )
    fig.update_layout(
        title=f"Per-layer sensitivity: {title}",
        xaxis={"title": "setting (this layer alone quantized)", "type": "category"},
        yaxis={"title": "layer", "autorange": "reversed", "type": "category"},
        margin={"t": 60},
    )
    return fig


def _measured(cells: Any, value: str) -> bool:
    return any(finite_number(c.get(value)) is not None for c in cells)


# --- per-layer views ------------------------------------------------------------------------


def _layer_kernel(layer: Mapping[str, Any]) -> str:
    if layer.get("kernel"):
        return str(layer["kernel"])
    return "float" if layer.get("config") is None else "unknown"


def _layer_hover(layer: Mapping[str, Any], value: str, v: float | None) -> str:
    shown = "–" if v is None else (f"{v:.1%}" if value == "latency_share" else f"{v:.4g}")
    lines = [
        f"<b>{layer.get('name')}</b> ({layer.get('type') or '?'})",
        f"config: {layer.get('config') or 'float'}",
        f"kernel: {_layer_kernel(layer)}"
        + (" — simulated: no real kernel at this width" if layer.get("simulated") else ""),
        f"{LAYER_VALUES[value]}: {shown}",
    ]
    if layer.get("fallback"):
        lines.append(f"fallback: {layer['fallback']}")
    return "<br>".join(lines)


def _check_layer_value(value: str) -> None:
    if value not in LAYER_VALUES:
        raise ValueError(f"value must be one of {sorted(LAYER_VALUES)}, got {value!r}")


def _hatch_legend(fig: go.Figure) -> None:
    fig.add_trace(
        go.Bar(
            x=[None],
            y=[None],
            name=HATCH_NOTE,
            meta="legend",
            marker={"color": "#dddddd", "pattern": {"shape": "/"}},
            hoverinfo="skip",
        )
    )


def _layer_bars(
    layers: Sequence[Mapping[str, Any]],
    value: str,
    row: Row,
    name: str,
    color: str,
    *,
    hover: str = "",
) -> go.Bar:
    """A bar of ``value`` per layer of ``row``, hatched where the layer has no real kernel;
    ``hover`` starts each hover text."""
    values = [finite_number(layer.get(value)) for layer in layers]
    return go.Bar(
        x=[str(layer.get("name")) for layer in layers],
        y=values,
        name=name,
        meta="series",
        customdata=[row.get("key")] * len(layers),
        hovertext=[
            hover + _layer_hover(la, value, v) for la, v in zip(layers, values, strict=True)
        ],
        hovertemplate="%{hovertext}<extra></extra>",
        marker={
            "color": color,
            "pattern": {"shape": ["/" if la.get("simulated") else "" for la in layers]},
        },
    )


def _layer_layout(
    fig: go.Figure, title: str, names: list[str], value: str, *, barmode: str, legend: str
) -> None:
    """Layers along x in the model's order, ``value`` up y."""
    fig.update_layout(
        title=title,
        barmode=barmode,
        xaxis={"title": "layer", "categoryorder": "array", "categoryarray": names},
        yaxis={
            "title": LAYER_VALUES[value],
            "tickformat": ".0%" if value == "latency_share" else None,
        },
        legend={"title": legend},
    )


def layer_figure(row: Row, value: str = "latency_share") -> go.Figure:
    """One bar per layer of ``row["layers"]``, coloured by kernel; layers without a real kernel
    hatched."""
    _check_layer_value(value)
    layers = list(row.get("layers") or [])
    names = [str(layer.get("name")) for layer in layers]
    by_kernel: dict[str, list[Mapping[str, Any]]] = {}
    for layer in layers:
        by_kernel.setdefault(_layer_kernel(layer), []).append(layer)
    colors = {
        k: (SERIES_COLORS[BASELINE_SERIES] if k == "float" else c)
        for k, c in zip(sorted(by_kernel), kernel_palette(len(by_kernel)), strict=True)
    }
    fig = go.Figure()
    for kernel in sorted(by_kernel):
        fig.add_trace(_layer_bars(by_kernel[kernel], value, row, kernel, colors[kernel]))
    if any(layer.get("simulated") for layer in layers):
        _hatch_legend(fig)
    if layers and all(finite_number(layer.get(value)) is None for layer in layers):
        reason = (
            "per-layer latency is not measured when the row's latency is simulated"
            if value == "latency_share" and is_simulated(row)
            else f"no {LAYER_VALUES[value]} recorded for this row"
        )
        add_empty_note(fig, reason)
    elif not layers:
        add_empty_note(fig, "this row has no per-layer report")
    _layer_layout(
        fig,
        f"{row.get('label') or row.get('key')}: {LAYER_VALUES[value]} per layer",
        names,
        value,
        barmode="relative",
        legend="kernel",
    )
    if value == "latency_share" and all(finite_number(la.get(value)) is None for la in layers):
        fig.update_yaxes(range=[0, 1])  # an empty share axis otherwise autoscales to 400 %
    return fig


def compare_layers_figure(row_a: Row, row_b: Row, value: str = "output_sqnr_db") -> go.Figure:
    """Grouped bars per layer for two rows (layers missing from one row are left empty)."""
    _check_layer_value(value)
    names: list[str] = []
    for row in (row_a, row_b):
        for layer in row.get("layers") or []:
            if str(layer.get("name")) not in names:
                names.append(str(layer.get("name")))
    label_a = str(row_a.get("label") or row_a.get("key") or "A")
    label_b = str(row_b.get("label") or row_b.get("key") or "B")
    if label_a == label_b:
        label_a, label_b = f"{label_a} (A)", f"{label_b} (B)"
    fig = go.Figure()
    simulated = False
    for row, label, color in ((row_a, label_a, "#1f77b4"), (row_b, label_b, "#ff7f0e")):
        layers = {str(layer.get("name")): layer for layer in row.get("layers") or []}
        present = [layers[n] for n in names if n in layers]
        simulated = simulated or any(layer.get("simulated") for layer in present)
        fig.add_trace(_layer_bars(present, value, row, label, color, hover=f"{label}<br>"))
    if simulated:
        _hatch_legend(fig)
    _layer_layout(
        fig,
        f"{LAYER_VALUES[value]} per layer: {label_a} vs {label_b}",
        names,
        value,
        barmode="group",
        legend="configuration",
    )
    return fig
