"""A speech recognizer's Pareto axes (`explorer.plots.axes`): word error rate in percent, lower
is better, against size and against the real-time factor of ``transcribe_10s``; faster-whisper's
reference points drawn beside the rows, labelled, off the front. Synthetic rows shaped like the
speech task's (a fraction WER with a delta interval, ``latency.transcribe_10s.rtf``)."""

from __future__ import annotations

from typing import Any

import pytest

from explorer import plots
from explorer.plots.axes import audio_seconds, latency_axis, latency_title, metric_title
from explorer.sweep.pareto import flag_pareto

from .test_plots import make_row, traces

RTF = "latency.transcribe_10s.rtf"
FLOAT_WER = 0.30


def speech_row(key: str, *, size: float, ms: float, wer: float, **kw: Any) -> dict[str, Any]:
    row = make_row(key, size=size, latency=ms, value=wer, metric_name="wer", **kw)
    row["task"] = "speech"
    row["latency_workload"] = "transcribe_10s"
    row["latency"] = {"transcribe_10s": {"median_ms": ms, "rtf": ms / 1000.0 / 10.0}}
    return row


def speech_rows() -> list[dict[str, Any]]:
    return [
        speech_row("fp32", kind="baseline", label="fp32", bits=None, size=150e6, ms=1300.0,
                   wer=FLOAT_WER, ci=(0.0, 0.0)),
        speech_row("w8", size=40e6, ms=2000.0, wer=0.295, ci=(-0.02, 0.01)),
        speech_row("w8a8", size=40e6, ms=900.0, wer=0.31, ci=(-0.01, 0.03)),
        speech_row("w4", bits=4, size=22e6, ms=2100.0, wer=0.45, ci=(0.1, 0.2)),
    ]  # fmt: skip


def fw_row(compute_type: str, ms: float, wer: float, ci: list[float] | None) -> dict[str, Any]:
    """Shaped as `explorer.targets.faster_whisper.reference_rows` returns them."""
    return {
        "key": f"faster-whisper:{compute_type}",
        "label": f"faster-whisper {compute_type}",
        "kind": "reference",
        "target": "faster-whisper",
        "metric_name": "wer",
        "metrics": {"wer": wer},
        "metrics_ci": {"wer": ci},
        "latency_ms": ms,
        "latency_workload": "transcribe_10s",
        "latency": {"transcribe_10s": {"median_ms": ms, "rtf": ms / 1e4}},
    }


def test_the_latency_axis_is_the_real_time_factor_where_rows_report_one() -> None:
    rows = speech_rows()
    assert latency_axis(rows) == RTF
    assert latency_axis(rows, "transcribe_10s") == RTF
    assert latency_axis(rows, "other") == "latency_ms"  # a workload without a factor
    assert latency_axis([make_row("a")]) == "latency_ms"  # other tasks: milliseconds
    assert latency_axis([]) == "latency_ms"
    assert audio_seconds(rows, RTF) == pytest.approx(10.0, rel=1e-12)
    assert latency_title(rows, RTF) == "real-time factor (10 s audio)"
    assert metric_title("wer") == "word error rate (%)" and metric_title("kl") == "kl"


def test_wer_against_real_time_factor() -> None:
    rows = speech_rows()
    fig = plots.pareto_figure(rows, x=latency_axis(rows), log_x=False)
    assert fig.layout.xaxis.title.text == "real-time factor (10 s audio)"
    assert fig.layout.yaxis.title.text == "word error rate (%), lower is better"
    assert fig.layout.yaxis.tickformat == ".1%"  # fractions drawn as percentages
    assert fig.layout.title.text == "word error rate against real-time factor — toy"
    xs = {k: x for t in traces(fig, "series") for k, x in zip(t.customdata, t.x, strict=True)}
    assert xs == pytest.approx({"fp32": 0.13, "w8": 0.2, "w8a8": 0.09, "w4": 0.21})
    # lower WER is better: w8a8 is the fastest; fp32 and w8 each have a lower WER than every
    # faster row; w4 is slower and worse than w8
    (front,) = traces(fig, "front")
    assert sorted(front.customdata) == ["fp32", "w8", "w8a8"]
    flags = flag_pareto(rows, [(RTF, "min"), ("metrics.wer", "min")])
    assert sorted(r["key"] for r, f in zip(rows, flags, strict=True) if f) == ["fp32", "w8", "w8a8"]
    hover = next(h for t in traces(fig, "series") for h in t.hovertext if ">w8a8<" in h)
    assert "real-time factor: 0.090 (faster than real time)" in hover
    assert "wer: 31.00%" in hover


def test_wer_against_size_and_in_three_axes() -> None:
    rows = speech_rows()
    fig = plots.pareto_figure(rows, x="size_bytes", explain=True)
    assert fig.layout.yaxis.title.text == "word error rate (%), lower is better"
    assert sorted(traces(fig, "front")[0].customdata) == ["w4", "w8"]  # w8 beats fp32
    # the cliff of a lower-is-better metric rises: 8 → 4 bits, 29.50 % → 45.00 %
    cliff = next(a for a in fig.layout.annotations if a.name == "bit-cliff")
    assert "word error rate rises from 29.50%" in cliff.text
    three = plots.pareto_3d_figure(rows, latency=RTF)
    assert three.layout.scene.yaxis.title.text == "real-time factor (10 s audio)"
    assert list(traces(three, "series")[0].y) == pytest.approx([0.13])


def test_faster_whisper_points_beside_the_rows() -> None:
    rows = speech_rows()
    refs = [fw_row("float32", 1450.0, 0.29, [-0.03, 0.01]), fw_row("int8", 930.0, 0.292, None)]
    fig = plots.pareto_figure(rows, x=RTF, references=refs, log_x=False)
    drawn = traces(fig, "reference")
    assert [t.name for t in drawn] == ["faster-whisper float32", "faster-whisper int8"]
    assert [list(t.text) for t in drawn] == [["faster-whisper float32"], ["faster-whisper int8"]]
    assert [t.x[0] for t in drawn] == pytest.approx([0.145, 0.093])
    assert all(list(t.customdata) == [None] for t in drawn)  # a click selects no stored row
    # float32's bar: the float model's WER plus the interval of the difference
    f32 = drawn[0]
    assert f32.error_y.visible and not drawn[1].error_y.visible
    assert 0.29 + f32.error_y.array[0] == pytest.approx(FLOAT_WER + 0.01)
    assert 0.29 - f32.error_y.arrayminus[0] == pytest.approx(FLOAT_WER - 0.03)
    # never on the front, though faster-whisper float32 beats w8 on both axes here
    assert sorted(traces(fig, "front")[0].customdata) == ["fp32", "w8", "w8a8"]
    assert "reference runtime" in f32.hovertext[0]
    assert "real-time factor: 0.145" in f32.hovertext[0]
    # the size plot has no size for them: they are left out
    assert traces(plots.pareto_figure(rows, references=refs), "reference") == []
