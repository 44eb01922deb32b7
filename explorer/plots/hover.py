"""What a point says about its row: size and bits, method and timings, kernels, the metric's
confidence interval, and the hover text that joins them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from explorer.measure.display import format_metric
from explorer.plots.axes import rtf_path
from explorer.plots.rows import TASK_METRICS, Row, finite_number, metric_name_of, row_value
from explorer.plots.series import algorithm_name, series_of


def size_unit(sizes: Sequence[float]) -> tuple[float, str]:
    """Same units as the results table (``size_kb`` = bytes / 1024)."""
    return (2**20, "MiB") if sizes and max(sizes) >= 2**20 else (2**10, "KiB")


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    scale, unit = size_unit([n])
    return f"{n / scale:,.1f} {unit} ({int(n):,} B)"


def _bits(row: Row) -> str:
    if row.get("kind") == "mixed":
        bpw = finite_number(row.get("bits_per_weight"))
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
    return finite_number(seconds.get(name)) if isinstance(seconds, Mapping) else None


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


def metric_interval(row: Row, path: str, base: float | None) -> tuple[float | None, float | None]:
    """The absolute 95 % interval of ``path`` for ``row`` (see the module docstring)."""
    name = metric_name_of(path)
    ci = (row.get("metrics_ci") or {}).get(name)
    if not isinstance(ci, Sequence) or len(ci) != 2:
        return None, None
    lo, hi = finite_number(ci[0]), finite_number(ci[1])
    if lo is None or hi is None:
        return None, None
    if name in TASK_METRICS or name == row.get("metric_name"):
        if base is None:
            return None, None
        return base + lo, base + hi
    return lo, hi


def hover_text(row: Row, path: str, base: float | None, on_front: bool | None = None) -> str:
    name = metric_name_of(path)
    value = finite_number(row_value(row, path))
    lo, hi = metric_interval(row, path, base)
    lines = [f"<b>{row.get('label') or row.get('key')}</b> — {series_of(row)}", _bits(row)]
    method = _method_line(row)
    if method:
        lines.append(method)
    size = finite_number(row.get("size_bytes"))
    bpw = finite_number(row.get("bits_per_weight"))
    lines.append(f"size: {_fmt_bytes(size)}" + ("" if bpw is None else f" · {bpw:.2f} bits/weight"))
    latency = finite_number(row.get("latency_ms"))
    if latency is not None:
        kind = row.get("latency_kind") or "measured"
        note = " — upper bound, timed on the next wider kernel" if kind == "simulated" else ""
        lines.append(f"latency: {latency:.3g} ms ({kind}){note}")
    rtf = _rtf(row)
    if rtf is not None:
        lines.append(f"real-time factor: {rtf:.3f} ({_rtf_words(rtf)})")
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


def _rtf(row: Row) -> float | None:
    workload = row.get("latency_workload")
    return finite_number(row_value(row, rtf_path(workload))) if workload else None


def _rtf_words(rtf: float) -> str:
    return "faster than real time" if rtf < 1 else "slower than real time"


def reference_hover(row: Row, path: str, base: float | None) -> str:
    """The hover text of another runtime's reference point (`pareto_figure`'s ``references``):
    what it is, its time and its metric with the interval of its difference from float."""
    name = metric_name_of(path)
    value = finite_number(row_value(row, path))
    lo, hi = metric_interval(row, path, base)
    lines = [f"<b>{row.get('label')}</b> — reference runtime, not an explorer configuration"]
    if row.get("detail"):
        lines.append(str(row["detail"]))
    latency, rtf = finite_number(row.get("latency_ms")), _rtf(row)
    if latency is not None:
        lines.append(f"latency: {latency:.3g} ms (measured)")
    if rtf is not None:
        lines.append(f"real-time factor: {rtf:.3f} ({_rtf_words(rtf)})")
    metric = f"{name}: {format_metric(name, value)}"
    if lo is not None and hi is not None:
        metric += f" (95% CI {format_metric(name, lo)} – {format_metric(name, hi)})"
    lines.append(metric)
    return "<br>".join(lines)
