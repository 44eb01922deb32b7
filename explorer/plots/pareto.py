"""Plotly figures of sweep results, sensitivity tables, per-layer reports, kernel benchmarks and
quantization lessons: plain data in, a `plotly.graph_objects.Figure` out.

Conventions every figure keeps, so a page can rely on them:

- Each point of a result row carries the row's key as its ``customdata`` (a page opens a point's
  per-layer view from a selection event; `selected_keys` reads the keys back).
- Simulated numbers say so: a simulated latency is drawn with a hollow marker and "(simulated)" in
  its hover text; a layer without a real kernel is drawn hatched.
- Confidence intervals are error bars. The task metric's interval (accuracy, perplexity) is of the
  *delta* against float, so the bar spans ``float + lo`` to ``float + hi``; a fidelity metric's
  interval (``sqnr_db``, ``cosine``, ...) is of the metric itself.
- Traces say what they are in ``meta``: ``"series"``, ``"front"``, ``"selected"``, ``"legend"``
  (a legend-only explanation), ``"rug"``; layout annotations and shapes carry a ``name``.

The front is the non-dominated set of `explorer.sweep.pareto` over (x minimized, metric in its
sense), joined by a step line: between two front points the best attainable metric is that of the
point on the left.

Imports: plotly, numpy, `explorer.sweep.pareto`. No streamlit.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.sweep.pareto import METRIC_SENSES, flag_pareto, front_order, metric_sense

Row = Mapping[str, Any]

ALGORITHM_NAMES = {"rtn": "RTN", "gptq": "GPTQ", "awq": "AWQ", "smoothquant": "SmoothQuant"}
BASELINE_SERIES = "fp32/bf16 baseline"
MIXED_SERIES = "mixed (per layer)"  # searched plans and what-if edits
QAT_SERIES = "QAT"
TASK_METRICS = ("accuracy", "perplexity")  # their CI is of the delta against float
X_AXES = {"size_bytes": "size as stored", "latency_ms": "latency", "bits_per_weight": "bits/weight"}


def algorithm_name(algorithm: str) -> str:
    """``gptq`` → ``GPTQ``: a PTQ algorithm as the legend and hover texts write it."""
    return ALGORITHM_NAMES.get(algorithm, algorithm)


def ptq_series(algorithm: str) -> str:
    """The legend series of uniform PTQ rows of ``algorithm``: ``PTQ · GPTQ``."""
    return f"PTQ · {algorithm_name(algorithm)}"


SERIES_COLORS = {
    BASELINE_SERIES: "#4d4d4d",
    ptq_series("rtn"): "#1f77b4",
    QAT_SERIES: "#ff7f0e",
    MIXED_SERIES: "#2ca02c",
    ptq_series("gptq"): "#9467bd",
    ptq_series("awq"): "#8c564b",
    ptq_series("smoothquant"): "#e377c2",
}
PALETTE = ("#17becf", "#d62728", "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5")
ALGORITHM_SYMBOLS = {"gptq": "hexagon", "awq": "pentagon", "smoothquant": "hourglass"}
"""2-D markers of the PTQ algorithms besides RTN's circle, so the series differ beyond colour."""
BASELINE_SYMBOLS = {"fp32": "star", "bf16": "diamond"}
BASELINE_SYMBOLS_3D = {"fp32": "cross", "bf16": "x"}  # 3-D markers: a short list
OPEN_3D = ("circle", "diamond", "square")  # the 3-D markers with a hollow variant
FRONT_COLOR = "rgba(20, 20, 20, 0.75)"
SELECTED_COLOR = "crimson"
SIMULATED_NOTE = "hollow = simulated latency (an upper bound)"
HATCH_NOTE = "hatched = simulated (no real kernel at this width)"

LAYER_VALUES = {
    "latency_share": "share of model latency",
    "weight_sqnr_db": "weight SQNR (dB, higher is better)",
    "output_sqnr_db": "output SQNR vs float (dB, higher is better)",
    "bytes": "bytes as stored",
}
SENSITIVITY_VALUES = {
    "metric_drop": ("metric drop (damage, lower is better)", "min"),
    "kl": ("KL divergence from float (lower is better)", "min"),
    "weight_sqnr_db": ("weight SQNR (dB, higher is better)", "max"),
    "output_sqnr_db": ("output SQNR (dB, higher is better)", "max"),
    "metric": ("metric with this layer quantized", "max"),
    "size_bytes": ("bytes stored by the layer", "min"),
    "latency_ms": ("layer latency (ms)", "min"),
}
GRID_LINES_MAX = 64  # more representable values than this: a rug instead of one line each


# --- reading rows ---------------------------------------------------------------------------


def _get(row: Row, path: str) -> Any:
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _metric_path(metric: str) -> str:
    return metric if "." in metric else f"metrics.{metric}"


def _metric_name(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def _sense(name: str) -> str:
    return METRIC_SENSES.get(name) or metric_sense(name)


def metric_of(rows: Iterable[Row]) -> tuple[str, str]:
    """``(path, sense)`` of the quality axis: the rows' task metric (``metric_name``) where some
    row has a value for it, else the output SQNR against float (models without labels)."""
    rows = list(rows)
    for row in rows:
        name = row.get("metric_name")
        if name and any(_number(_get(r, f"metrics.{name}")) is not None for r in rows):
            return f"metrics.{name}", _sense(name)
    return "metrics.sqnr_db", "max"


def _quality_axis(rows: Sequence[Row], metric: str | None) -> tuple[str, str]:
    if not metric:
        return metric_of(rows)
    return _metric_path(metric), _sense(_metric_name(metric))


def _is_fp32(row: Row) -> bool:
    if row.get("label") == "fp32":
        return True
    config = row.get("config")
    default = config.get("default", "missing") if isinstance(config, Mapping) else "missing"
    return row.get("kind") == "baseline" and row.get("weight_bits") is None and default is None


def float_metric(rows: Iterable[Row], metric: str | None = None) -> float | None:
    """The fp32 baseline row's value of ``metric`` (name or path; default: the rows' task
    metric, see `metric_of`), or None when the rows hold no fp32 row or it has no value."""
    rows = list(rows)
    path = _metric_path(metric) if metric else metric_of(rows)[0]
    for row in rows:
        if _is_fp32(row):
            return _number(_get(row, path))
    return None


def series_of(row: Row) -> str:
    """The legend series of a row: the fp32/bf16 baselines, uniform PTQ per algorithm
    (``PTQ · RTN``, ``PTQ · GPTQ``, ...), QAT (which starts from round-to-nearest), and mixed
    plans (per-layer settings: searched plans, what-if edits)."""
    kind = row.get("kind")
    if kind == "baseline":
        return BASELINE_SERIES
    if kind == "mixed":
        return MIXED_SERIES
    algorithm = row.get("algorithm") or "rtn"
    if row.get("method") == "qat":
        return QAT_SERIES if algorithm == "rtn" else f"{QAT_SERIES} · {algorithm_name(algorithm)}"
    return ptq_series(algorithm)


def _series_rank(name: str) -> tuple[int, int, str]:
    """Legend order: baselines, PTQ by algorithm (RTN first), QAT, mixed plans, the rest."""
    ptq = [ptq_series(a) for a in ALGORITHM_NAMES]
    if name == BASELINE_SERIES:
        return (0, 0, name)
    if name.startswith("PTQ"):
        return (1, ptq.index(name) if name in ptq else len(ptq), name)
    if name.startswith(QAT_SERIES):
        return (2, 0, name)
    if name == MIXED_SERIES:
        return (3, 0, name)
    return (4, 0, name)


def _series_colors(names: Iterable[str]) -> dict[str, str]:
    colors, spare = {}, 0
    for name in sorted(set(names), key=_series_rank):
        if name in SERIES_COLORS:
            colors[name] = SERIES_COLORS[name]
        else:
            colors[name] = PALETTE[spare % len(PALETTE)]
            spare += 1
    return colors


def _base_symbol(row: Row, series: str, three_d: bool = False) -> str:
    if series == BASELINE_SERIES:
        symbols = BASELINE_SYMBOLS_3D if three_d else BASELINE_SYMBOLS
        return symbols.get(row.get("label"), "square")
    if series.startswith(QAT_SERIES):
        return "square" if three_d else "triangle-up"
    if series == MIXED_SERIES:
        return "diamond" if three_d else "square"
    if three_d:
        return "circle"
    return ALGORITHM_SYMBOLS.get(str(row.get("algorithm")), "circle")


def _symbol(row: Row, series: str, hollow: bool, three_d: bool = False) -> str:
    base = _base_symbol(row, series, three_d)
    if hollow and (not three_d or base in OPEN_3D):
        return f"{base}-open"
    return base


def _simulated(row: Row) -> bool:
    return row.get("latency_kind") == "simulated"


# --- formatting -----------------------------------------------------------------------------


def _fmt_metric(name: str, value: float | None) -> str:
    if value is None:
        return "–"
    if name in ("accuracy", "agreement"):
        return f"{value:.2%}"
    if name.endswith("_db"):
        return f"{value:.2f} dB"
    return f"{value:.4g}"


def _size_unit(sizes: Sequence[float]) -> tuple[float, str]:
    """Same units as the results table (``size_kb`` = bytes / 1024)."""
    return (2**20, "MiB") if sizes and max(sizes) >= 2**20 else (2**10, "KiB")


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    scale, unit = _size_unit([n])
    return f"{n / scale:,.1f} {unit} ({int(n):,} B)"


def _bits(row: Row) -> str:
    if row.get("kind") == "mixed":
        bpw = _number(row.get("bits_per_weight"))
        return "mixed plan" + ("" if bpw is None else f", {bpw:.2f} bits/weight on average")
    wb = row.get("weight_bits")
    if wb is None:
        return f"float ({row.get('label') or 'fp32'})"
    act = row.get("act_bits")
    text = f"W{wb} {row.get('granularity') or ''}".rstrip()
    text += f" · A{act}" if act is not None else " · activations float"
    if act is not None and row.get("act_granularity"):
        text += f" {row['act_granularity']}"
    return text


def _seconds(row: Row, name: str) -> float | None:
    seconds = row.get("seconds")
    return _number(seconds.get(name)) if isinstance(seconds, Mapping) else None


def _method_line(row: Row) -> str | None:
    """How the row's model was produced and what that cost before deployment: the PTQ
    algorithm and its calibration seconds, or QAT's steps and training seconds."""
    kind = row.get("kind")
    if kind == "baseline":
        return None
    calibrate, algorithm_s = _seconds(row, "calibrate"), _seconds(row, "algorithm")
    reused = _seconds(row, "statistics_reused") or 0.0
    if row.get("qat_steps"):
        train = _seconds(row, "qat")
        return f"QAT from RTN: {row['qat_steps']} steps" + (
            "" if train is None else f" · training {train:.1f} s"
        )
    if kind == "mixed":
        counts = row.get("algorithms") or {}
        text = "mixed plan"
        if isinstance(counts, Mapping) and counts:
            text += ": " + ", ".join(
                f"{algorithm_name(str(a))} ×{n}" for a, n in sorted(counts.items())
            )
    else:
        text = f"PTQ, {algorithm_name(str(row.get('algorithm') or 'rtn'))}"
    if calibrate is not None:
        text += f" · calibration {calibrate + reused:.1f} s"
        if algorithm_s is not None and row.get("algorithm") not in (None, "rtn"):
            text += f" (of which the algorithm {algorithm_s:.1f} s)"
        if reused:
            text += f"<br>input statistics ({reused:.1f} s of it) reused from an earlier row"
    return text


def _kernels_summary(row: Row) -> str:
    kernels = row.get("kernels") or {}
    if not kernels:
        return "none (float model)"
    counts = Counter(str(k) for k in kernels.values())
    return ", ".join(f"{k} ×{n}" for k, n in counts.most_common())


def _interval(row: Row, path: str, base: float | None) -> tuple[float | None, float | None]:
    """The absolute 95 % interval of ``path`` for ``row`` (see the module docstring)."""
    name = _metric_name(path)
    ci = (row.get("metrics_ci") or {}).get(name)
    if not isinstance(ci, Sequence) or len(ci) != 2:
        return None, None
    lo, hi = _number(ci[0]), _number(ci[1])
    if lo is None or hi is None:
        return None, None
    if name in TASK_METRICS or name == row.get("metric_name"):
        if base is None:
            return None, None
        return base + lo, base + hi
    return lo, hi


def _hover(row: Row, path: str, base: float | None, on_front: bool | None = None) -> str:
    name = _metric_name(path)
    value = _number(_get(row, path))
    lo, hi = _interval(row, path, base)
    lines = [f"<b>{row.get('label') or row.get('key')}</b> — {series_of(row)}", _bits(row)]
    method = _method_line(row)
    if method:
        lines.append(method)
    size = _number(row.get("size_bytes"))
    bpw = _number(row.get("bits_per_weight"))
    lines.append(f"size: {_fmt_bytes(size)}" + ("" if bpw is None else f" · {bpw:.2f} bits/weight"))
    latency = _number(row.get("latency_ms"))
    if latency is not None:
        kind = row.get("latency_kind") or "measured"
        note = " — upper bound, timed on the next wider kernel" if kind == "simulated" else ""
        lines.append(f"latency: {latency:.3g} ms ({kind}){note}")
    metric = f"{name}: {_fmt_metric(name, value)}"
    if lo is not None and hi is not None:
        metric += f" (95% CI {_fmt_metric(name, lo)} – {_fmt_metric(name, hi)})"
    lines.append(metric)
    lines.append(f"kernels: {_kernels_summary(row)}")
    fallbacks = row.get("fallbacks") or {}
    if fallbacks:
        lines.append(f"fallbacks: {len(fallbacks)} layer(s)")
    if on_front:
        lines.append("on the Pareto front")
    return "<br>".join(lines)


# --- the Pareto scatter ---------------------------------------------------------------------


def _plotted(rows: Iterable[Row], paths: Sequence[str]) -> list[Row]:
    return [r for r in rows if all(_number(_get(r, p)) is not None for p in paths)]


def _axis_title(name: str, sense: str) -> str:
    better = "higher" if sense == "max" else "lower"
    return f"{name} ({better} is better)"


def _log_axis(values: Sequence[float]) -> bool:
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) and bool(values) and max(values) / min(values) > 30


def pareto_figure(
    rows: Iterable[Row],
    *,
    x: str = "size_bytes",
    metric: str | None = None,
    selected_key: str | None = None,
    title: str | None = None,
    log_x: bool | None = None,
    float_value: float | None = None,
) -> go.Figure:
    """The task metric (or ``metric``) against size (``x="size_bytes"``) or latency
    (``x="latency_ms"``), one trace per `series_of`, the front highlighted, confidence intervals
    as error bars, PTQ → QAT recovery as arrows and the fp32 metric as a dashed line.

    ``log_x`` defaults to a log axis when x spans more than a factor 30. ``float_value`` is the
    float model's metric (default: the fp32 row's) that the task metric's delta interval is
    centred on. Rows without a value on either axis are left out.
    """
    all_rows = list(rows)
    path, sense = _quality_axis(all_rows, metric)
    name = _metric_name(path)
    base = float_value if float_value is not None else float_metric(all_rows, path)
    plotted = _plotted(all_rows, [x, path])
    latency_x = x == "latency_ms"

    xs_raw = [float(_get(r, x)) for r in plotted]
    scale, unit = _size_unit(xs_raw) if x == "size_bytes" else (1.0, "")
    if log_x is None:
        log_x = _log_axis(xs_raw)

    def xv(row: Row) -> float:
        return float(_get(row, x)) / scale

    flags = flag_pareto(plotted, [(x, "min"), (path, sense)]) if plotted else []
    on_front = {r.get("key") for r, f in zip(plotted, flags, strict=True) if f}

    fig = go.Figure()
    by_series: dict[str, list[Row]] = {}
    for row in plotted:
        by_series.setdefault(series_of(row), []).append(row)
    colors = _series_colors(by_series)
    for series in sorted(by_series, key=_series_rank):
        members = by_series[series]
        ys = [float(_get(r, path)) for r in members]
        plus, minus, has_bars = [], [], False
        for r, y in zip(members, ys, strict=True):
            lo, hi = _interval(r, path, base)
            if lo is None or hi is None:
                plus.append(0.0)
                minus.append(0.0)
            else:
                plus.append(max(0.0, hi - y))
                minus.append(max(0.0, y - lo))
                has_bars = True
        symbols = [_symbol(r, series, latency_x and _simulated(r)) for r in members]
        baseline = series == BASELINE_SERIES
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
                hovertext=[_hover(r, path, base, r.get("key") in on_front) for r in members],
                hovertemplate="%{hovertext}<extra></extra>",
                marker={
                    "symbol": symbols,
                    "size": 13 if baseline else 10,
                    "color": colors[series],
                    "line": {"width": 1.5, "color": colors[series]},
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
                y=[float(_get(r, path)) for r in front],
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
                hovertext=[_hover(r, path, base, True) for r in front],
                hovertemplate="%{hovertext}<extra></extra>",
            )
        )

    by_key = {r.get("key"): r for r in plotted}
    if selected_key is not None and selected_key in by_key:
        chosen = by_key[selected_key]
        fig.add_trace(
            go.Scatter(
                x=[xv(chosen)],
                y=[float(_get(chosen, path))],
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
                hovertext=[_hover(chosen, path, base, selected_key in on_front)],
                hovertemplate="%{hovertext}<extra></extra>",
            )
        )

    if latency_x and any(_simulated(r) for r in plotted):
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
        p_y, q_y = float(_get(parent, path)), float(_get(row, path))
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
                f"QAT recovery: {name} {_fmt_metric(name, p_y)} (PTQ) → "
                f"{_fmt_metric(name, q_y)} ({row.get('label')})"
            ),
        )

    if base is not None:
        fig.add_hline(
            y=base,
            name="fp32-metric",
            line={"dash": "dash", "color": "#4d4d4d", "width": 1},
            annotation_text=f"fp32 {_fmt_metric(name, base)}",
            annotation_position="bottom left",
            annotation_font={"size": 10, "color": "#4d4d4d"},
        )

    if x == "size_bytes":
        x_title = f"size as stored ({unit})"
    elif latency_x:
        workload = next(
            (r.get("latency_workload") for r in plotted if r.get("latency_workload")), None
        )
        x_title = "latency (ms" + (f", {workload} workload" if workload else "") + ")"
        if any(_simulated(r) for r in plotted):
            x_title += " — hollow markers: simulated"
    else:
        x_title = X_AXES.get(x, x)
    model = next((r.get("model") for r in plotted if r.get("model")), None)
    default_title = f"{name} against {X_AXES.get(x, x)}" + (f" — {model}" if model else "")
    fig.update_layout(
        title=title or default_title,
        xaxis={"title": x_title, "type": "log" if log_x else "linear"},
        yaxis={
            "title": _axis_title(name, sense),
            "tickformat": ".1%" if name in ("accuracy", "agreement") else None,
        },
        legend={"title": "series"},
        hovermode="closest",
        clickmode="event+select",
        margin={"t": 60},
    )
    if not plotted:
        _empty_note(fig, f"no rows with both {X_AXES.get(x, x)} and {name} to plot yet")
    return fig


def pareto_3d_figure(
    rows: Iterable[Row],
    *,
    metric: str | None = None,
    selected_key: str | None = None,
    title: str | None = None,
    float_value: float | None = None,
) -> go.Figure:
    """Size, latency and the metric in 3-D; the points on the three-axis front (size and latency
    minimized, the metric in its sense) ringed; simulated latencies hollow."""
    all_rows = list(rows)
    path, sense = _quality_axis(all_rows, metric)
    name = _metric_name(path)
    base = float_value if float_value is not None else float_metric(all_rows, path)
    plotted = _plotted(all_rows, ["size_bytes", "latency_ms", path])
    scale, unit = _size_unit([float(r["size_bytes"]) for r in plotted])
    axes = [("size_bytes", "min"), ("latency_ms", "min"), (path, sense)]
    flags = flag_pareto(plotted, axes) if plotted else []
    on_front = {r.get("key") for r, f in zip(plotted, flags, strict=True) if f}

    def coords(members: Sequence[Row]) -> dict[str, list[float]]:
        return {
            "x": [float(r["size_bytes"]) / scale for r in members],
            "y": [float(r["latency_ms"]) for r in members],
            "z": [float(_get(r, path)) for r in members],
        }

    fig = go.Figure()
    by_series: dict[str, list[Row]] = {}
    for row in plotted:
        by_series.setdefault(series_of(row), []).append(row)
    colors = _series_colors(by_series)
    for series in sorted(by_series, key=_series_rank):
        members = by_series[series]
        fig.add_trace(
            go.Scatter3d(
                **coords(members),
                mode="markers+text" if series == BASELINE_SERIES else "markers",
                text=[r.get("label") for r in members] if series == BASELINE_SERIES else None,
                name=series,
                meta="series",
                customdata=[r.get("key") for r in members],
                hovertext=[_hover(r, path, base, r.get("key") in on_front) for r in members],
                hovertemplate="%{hovertext}<extra></extra>",
                marker={
                    "symbol": [_symbol(r, series, _simulated(r), three_d=True) for r in members],
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
                hovertext=[_hover(r, path, base, True) for r in front],
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
                hovertext=[_hover(chosen, path, base, selected_key in on_front)],
                hovertemplate="%{hovertext}<extra></extra>",
                marker={"symbol": "circle-open", "size": 16, "color": SELECTED_COLOR},
            )
        )
    if any(_simulated(r) for r in plotted):
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
        title=title or f"size, latency and {name}",
        scene={
            "xaxis": {"title": f"size ({unit})"},
            "yaxis": {"title": "latency (ms)"},
            "zaxis": {"title": _axis_title(name, sense)},
        },
        legend={"title": "series"},
        margin={"l": 0, "r": 0, "t": 50, "b": 0},
    )
    if not plotted:
        _empty_note(fig, f"no rows with size, latency and {name} to plot yet")
    return fig


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
    path, sense = _quality_axis(all_rows, metric)
    name = _metric_name(path)
    base = float_value if float_value is not None else float_metric(all_rows, path)
    plotted = [
        r
        for r in _plotted(all_rows, [path])
        if r.get("kind") == "uniform" and r.get("weight_bits") is not None
    ]
    order: dict[str, float] = {}
    for row in plotted:
        size = _number(row.get("size_bytes")) or 0.0
        order[setting_of(row)] = max(order.get(setting_of(row), 0.0), size)
    categories = sorted(order, key=lambda c: (-order[c], c))
    by_series: dict[str, list[Row]] = {}
    for row in plotted:
        by_series.setdefault(series_of(row), []).append(row)
    colors = _series_colors(by_series)
    fig = go.Figure()
    extent = [] if base is None else [base]  # what the y range must show
    for series in sorted(by_series, key=_series_rank):
        members = by_series[series]
        ys = [float(_get(r, path)) for r in members]
        plus, minus = [], []
        for r, y in zip(members, ys, strict=True):
            lo, hi = _interval(r, path, base)
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
                hovertext=[_hover(r, path, base) for r in members],
                hovertemplate="%{hovertext}<extra></extra>",
                marker={
                    "symbol": [_symbol(r, series, False) for r in members],
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
            annotation_text=f"fp32 {_fmt_metric(name, base)}",
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
            "title": _axis_title(name, sense),
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
        _empty_note(fig, f"no uniform configurations with {name} to compare yet")
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


def _empty_note(fig: go.Figure, text: str) -> None:
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


# --- sensitivity ----------------------------------------------------------------------------


def sensitivity_heatmap(sensitivity: Mapping[str, Any], value: str = "metric_drop") -> go.Figure:
    """Layers (rows) by settings (columns) of a `Sensitivity.to_dict()`; a cell where the setting
    does not apply to the layer is empty (None), its hover says why."""
    if value not in SENSITIVITY_VALUES:
        raise ValueError(f"value must be one of {sorted(SENSITIVITY_VALUES)}, got {value!r}")
    layers = list(sensitivity.get("layers") or [])
    settings = list(sensitivity.get("settings") or [])
    cells = {(c["layer"], c["setting"]): c for c in sensitivity.get("cells") or []}
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
            v = _number(cell.get(value))
            z_row.append(v)
            simulated = value == "latency_ms" and cell.get("simulated")
            t_row.append("" if v is None else f"{v:.3g}" + ("*" if simulated else ""))
            details = [
                f"{title}: {'–' if v is None else f'{v:.4g}'}"
                + (" (simulated)" if simulated else "")
            ]
            for extra in ("metric_drop", "kl", "weight_sqnr_db", "output_sqnr_db", "size_bytes"):
                if extra != value and _number(cell.get(extra)) is not None:
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
    values = [_number(layer.get(value)) for layer in layers]
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
        for k, c in zip(sorted(by_kernel), _kernel_palette(len(by_kernel)), strict=True)
    }
    fig = go.Figure()
    for kernel in sorted(by_kernel):
        fig.add_trace(_layer_bars(by_kernel[kernel], value, row, kernel, colors[kernel]))
    if any(layer.get("simulated") for layer in layers):
        _hatch_legend(fig)
    if layers and all(_number(layer.get(value)) is None for layer in layers):
        reason = (
            "per-layer latency is not measured when the row's latency is simulated"
            if value == "latency_share" and _simulated(row)
            else f"no {LAYER_VALUES[value]} recorded for this row"
        )
        _empty_note(fig, reason)
    elif not layers:
        _empty_note(fig, "this row has no per-layer report")
    _layer_layout(
        fig,
        f"{row.get('label') or row.get('key')}: {LAYER_VALUES[value]} per layer",
        names,
        value,
        barmode="relative",
        legend="kernel",
    )
    return fig


def _kernel_palette(n: int) -> list[str]:
    base = [c for c in SERIES_COLORS.values() if c != SERIES_COLORS[BASELINE_SERIES]]
    colors = [*base, *PALETTE]
    return [colors[i % len(colors)] for i in range(n)]


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


# --- lessons --------------------------------------------------------------------------------


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
        lo, hi = (_number(v) for v in clip) if len(clip) == 2 else (None, None)
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


# --- kernel benchmark -----------------------------------------------------------------------


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
        if _number(row.get("speedup_vs_fp32")) is None:
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
    colors = _kernel_palette(len(traces))
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
        _empty_note(fig, "no benchmark rows yet")
    return fig


# --- export ---------------------------------------------------------------------------------

# plotly.js's only network address: the default base URL of the topojson files of geo maps,
# which no figure here draws. Pointed at a relative path so a saved page never reaches out.
_TOPOJSON_CDN = '"https://cdn.plot.ly/un/"'


def to_html(fig: go.Figure) -> str:
    """A standalone HTML page of ``fig`` with plotly.js inlined: it opens offline."""
    html = fig.to_html(include_plotlyjs=True, full_html=True, config={"displaylogo": False})
    return html.replace(_TOPOJSON_CDN, '"./topojson/"')
