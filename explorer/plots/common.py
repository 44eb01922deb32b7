"""What every figure shares: the legend series of a result row (`series_of`) with its colour and
marker, reading a row's values (`metric_of`, `float_metric`), the metric's confidence interval,
the hover text of a point, and the note an empty figure shows.

Imports: plotly, `explorer.sweep.pareto`. No streamlit.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from explorer.measure.display import format_metric
from explorer.sweep.pareto import METRIC_SENSES, metric_sense

Row = Mapping[str, Any]

ALGORITHM_NAMES = {"rtn": "RTN", "gptq": "GPTQ", "awq": "AWQ", "smoothquant": "SmoothQuant"}
BASELINE_SERIES = "fp32/bf16 baseline"
MIXED_SERIES = "mixed (per layer)"  # searched plans and what-if edits
QAT_SERIES = "QAT"
TASK_METRICS = ("accuracy", "perplexity")  # their CI is of the delta against float


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
SELECTED_COLOR = "crimson"

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

_fmt_metric = format_metric  # the old name, until plots/pareto.py imports format_metric


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
    metric = f"{name}: {format_metric(name, value)}"
    if lo is not None and hi is not None:
        metric += f" (95% CI {format_metric(name, lo)} – {format_metric(name, hi)})"
    lines.append(metric)
    lines.append(f"kernels: {_kernels_summary(row)}")
    fallbacks = row.get("fallbacks") or {}
    if fallbacks:
        lines.append(f"fallbacks: {len(fallbacks)} layer(s)")
    if on_front:
        lines.append("on the Pareto front")
    return "<br>".join(lines)


# --- shared by several figures --------------------------------------------------------------


def _plotted(rows: Iterable[Row], paths: Sequence[str]) -> list[Row]:
    return [r for r in rows if all(_number(_get(r, p)) is not None for p in paths)]


def _axis_title(name: str, sense: str) -> str:
    better = "higher" if sense == "max" else "lower"
    return f"{name} ({better} is better)"


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


def _kernel_palette(n: int) -> list[str]:
    base = [c for c in SERIES_COLORS.values() if c != SERIES_COLORS[BASELINE_SERIES]]
    colors = [*base, *PALETTE]
    return [colors[i % len(colors)] for i in range(n)]
