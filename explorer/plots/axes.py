"""Which axes a task's results are drawn on, and what they are called.

Most tasks plot their metric under its own name against the time of a workload in
milliseconds. A speech recognizer is judged differently by the people who deploy one: its word
error rate is read in percent, and its speed as a real-time factor, the seconds it takes to
transcribe one second of audio (below 1: faster than real time; the speech task's
``transcribe_10s`` workload reports it as ``rtf``). `latency_axis` picks the real-time factor
wherever the rows' timed workload reports one, so any transcription workload gets it, not a
model picked by name. The factor is the workload's median time divided by a constant (the
audio's length), so its front is the front of the time in milliseconds.

Imports: `explorer.plots.rows`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from explorer.plots.rows import Row, finite_number, row_value

RTF = "rtf"
"""The key of a workload's real-time factor in a row's ``latency`` timings."""
METRIC_TITLES = {"wer": "word error rate (%)"}
"""Axis titles of metrics whose short name would not tell a reader what they are."""
PERCENT_METRICS = ("accuracy", "agreement", "wer")
"""Shares of samples: stored as fractions, drawn as percentages."""


def metric_title(name: str) -> str:
    """The axis title of metric ``name`` (``wer`` → ``word error rate (%)``)."""
    return METRIC_TITLES.get(name, name)


def metric_label(name: str) -> str:
    """The metric as a figure's title writes it (``wer`` → ``word error rate``)."""
    return metric_title(name).removesuffix(" (%)")


def rtf_path(workload: str) -> str:
    """The dotted path of a workload's real-time factor in a row."""
    return f"latency.{workload}.{RTF}"


def is_rtf(path: str) -> bool:
    return path.startswith("latency.") and path.endswith(f".{RTF}")


def latency_axis(rows: Iterable[Row], workload: str | None = None) -> str:
    """The latency axis of ``rows``: the real-time factor of ``workload`` (default: the rows'
    own timed workload, ``latency_workload``) where some row reports one, else
    ``latency_ms``."""
    rows = list(rows)
    names = [workload] if workload else [r.get("latency_workload") for r in rows]
    for name in dict.fromkeys(n for n in names if isinstance(n, str)):
        if any(finite_number(row_value(r, rtf_path(name))) is not None for r in rows):
            return rtf_path(name)
    return "latency_ms"


def audio_seconds(rows: Sequence[Row], path: str) -> float | None:
    """The audio length behind the real-time factors at ``path``: a row's median time of the
    workload over its factor, or None where no row has both."""
    timing = path.removesuffix(f".{RTF}")
    for row in rows:
        rtf = finite_number(row_value(row, path))
        ms = finite_number(row_value(row, f"{timing}.median_ms"))
        if rtf and ms:
            return ms / 1000.0 / rtf
    return None


def latency_title(rows: Sequence[Row], path: str) -> str:
    """The latency axis's title: ``real-time factor (10 s audio)``, or ``latency (ms, <the
    workload> workload)``."""
    if is_rtf(path):
        seconds = audio_seconds(rows, path)
        return "real-time factor" + ("" if seconds is None else f" ({seconds:.3g} s audio)")
    workload = next((r.get("latency_workload") for r in rows if r.get("latency_workload")), None)
    return "latency (ms" + (f", {workload} workload" if workload else "") + ")"


def axis_name(path: str) -> str:
    """An x axis in the words of a figure's title."""
    if is_rtf(path):
        return "real-time factor"
    return {"size_bytes": "size as stored", "latency_ms": "latency"}.get(path, path)
