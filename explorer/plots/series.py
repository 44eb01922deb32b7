"""The legend series of a result row (`series_of`) and its colour and marker: the one visual
language every figure uses."""

from __future__ import annotations

from collections.abc import Iterable

from explorer.plots.rows import Row

ALGORITHM_NAMES = {"rtn": "RTN", "gptq": "GPTQ", "awq": "AWQ", "smoothquant": "SmoothQuant"}
BASELINE_SERIES = "fp32/bf16 baseline"
MIXED_SERIES = "mixed (per layer)"  # searched plans and what-if edits
QAT_SERIES = "QAT"


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


TARGET_LABELS = {"onnxruntime": "ONNX Runtime", "llamacpp": "llama.cpp"}
TARGET_SEP = " @ "  # between a series and the runtime it was measured in


def target_label(row: Row) -> str | None:
    """The runtime a row was measured in, as the legend writes it; None for the explorer's own
    engine (``native``, and rows from before targets existed)."""
    target = row.get("target") or "native"
    return None if target == "native" else TARGET_LABELS.get(target, target)


def split_series(name: str) -> tuple[str, str | None]:
    """``"PTQ · RTN @ ONNX Runtime"`` → ``("PTQ · RTN", "ONNX Runtime")``."""
    base, _, target = name.partition(TARGET_SEP)
    return base, target or None


def series_of(row: Row) -> str:
    """The legend series of a row: the fp32/bf16 baselines, uniform PTQ per algorithm
    (``PTQ · RTN``, ``PTQ · GPTQ``, ...), QAT (which starts from round-to-nearest), and mixed
    plans (per-layer settings: searched plans, what-if edits); a row measured in another
    runtime than the explorer's own says which (``PTQ · RTN @ ONNX Runtime``), so the same
    configuration appears once per target."""
    base = _base_series(row)
    target = target_label(row)
    return base if target is None else f"{base}{TARGET_SEP}{target}"


def _base_series(row: Row) -> str:
    kind = row.get("kind")
    if kind == "baseline":
        return BASELINE_SERIES
    if kind == "mixed":
        return MIXED_SERIES
    algorithm = row.get("algorithm") or "rtn"
    if row.get("method") == "qat":
        return QAT_SERIES if algorithm == "rtn" else f"{QAT_SERIES} · {algorithm_name(algorithm)}"
    return ptq_series(algorithm)


def series_rank(name: str) -> tuple[int, int, str]:
    """Legend order: baselines, PTQ by algorithm (RTN first), QAT, mixed plans, the rest; the
    explorer's own series before another runtime's of the same kind."""
    name, target = split_series(name)
    if target is not None:
        rank = series_rank(name)
        return (rank[0], rank[1], f"{rank[2]}{TARGET_SEP}{target}")
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


def series_colors(names: Iterable[str]) -> dict[str, str]:
    colors, spare = {}, 0
    for name in sorted(set(names), key=series_rank):
        if name in SERIES_COLORS:
            colors[name] = SERIES_COLORS[name]
        else:
            colors[name] = PALETTE[spare % len(PALETTE)]
            spare += 1
    return colors


def _base_symbol(row: Row, series: str, three_d: bool = False) -> str:
    series = split_series(series)[0]
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


def marker_symbol(row: Row, series: str, hollow: bool, three_d: bool = False) -> str:
    base = _base_symbol(row, series, three_d)
    if hollow and (not three_d or base in OPEN_3D):
        return f"{base}-open"
    return base


def kernel_palette(n: int) -> list[str]:
    base = [c for c in SERIES_COLORS.values() if c != SERIES_COLORS[BASELINE_SERIES]]
    colors = [*base, *PALETTE]
    return [colors[i % len(colors)] for i in range(n)]
