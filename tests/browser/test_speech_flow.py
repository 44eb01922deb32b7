"""Speech in a real browser: whisper-tiny-en on five espeak-ng utterances (the first calibrates,
an evaluation budget of 4 keeps the rest), the start of its default sweep stored for this run
as the app's worker stores it, then the Pareto page draws its points: word error rate against
size, and against the real-time factor of the 10 s transcription, with the faster-whisper
side by side offered beside them.

The default sweep of a speech model is long (every row transcribes the utterances and times
the 10 s clip), so this test runs two of its entries only: the fp32 baseline and its first
quantized configuration (W8 weight-only per channel), without per-layer reports (the Layers
page on a speech run is tests/app/test_speech_pages.py's), in this process, into the store of
this module's own server (``own_app_server``), owned by the run (a run on its own audio sees
only its own rows).
"""

from __future__ import annotations

import importlib.util
import json
import time
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

AppServer = Any  # tests/browser/conftest.py's AppServer (conftest modules are not imported)
RUN = "5bee5bee5bee"
ENTRIES = 2
TRACES = """el => (el.data || []).filter(t => t.meta === 'series')
    .map(t => ({name: t.name, keys: t.customdata, x: t.x, y: t.y}))"""
AXES = """el => [el.layout.xaxis.title.text, el.layout.yaxis.title.text]"""


@pytest.fixture(scope="module")
def app_server(own_app_server: AppServer) -> AppServer:
    return own_app_server


@pytest.fixture(scope="module")
def swept(app_server: AppServer) -> dict[str, Any]:
    from targets.speech_audio import write_speech_folder

    from explorer.sweep.context import ModelSource, open_context
    from explorer.sweep.default import default_entries
    from explorer.sweep.runner import RunSettings, run_sweep
    from explorer.sweep.store import ResultStore

    t0 = time.monotonic()
    folder = write_speech_folder(app_server.cache.parent / "speech")
    source = ModelSource(model="whisper-tiny-en", data=str(folder))
    ctx = open_context(source)
    default = default_entries(ctx.model)[0]
    entries = [e for e in default if e.label == "fp32"]
    entries += [next(e for e in default if e.kind != "baseline")]
    settings = RunSettings(repeats=1, warmup=0, n_boot=200, eval_budget=4, per_layer=False)
    with ResultStore(app_server.store) as store:
        events = list(run_sweep(ctx, entries, store, settings=settings, owner=RUN))
    rows = {e.row["key"]: e.row for e in events if e.kind == "row" and e.row}
    assert len(rows) == ENTRIES, [(e.kind, e.label, e.reason) for e in events]
    run_dir = app_server.cache / "runs" / RUN
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({"source": source.to_dict()}))
    return {"rows": rows, "seconds": round(time.monotonic() - t0, 1)}


def idle(page: Any, timeout: float = 240_000) -> None:
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(
        timeout=timeout
    )


def test_pareto_page_draws_the_speech_sweep(
    page: Any, app_server: AppServer, swept: dict[str, Any], report: Any
) -> None:
    report("speech_sweep_s", swept["seconds"])
    rows = swept["rows"]
    assert all(r["task"] == "speech" and r["n_samples"] == 4 for r in rows.values())
    t0 = time.monotonic()
    page.goto(f"{app_server.url}/pareto?run={RUN}")
    page.get_by_role("heading", level=1, name="Pareto fronts").wait_for(timeout=240_000)
    idle(page)
    size_plot = page.locator(".st-key-pareto-size .js-plotly-plot")
    size_plot.locator(".scatterlayer .point").first.wait_for(timeout=240_000)
    drawn = {k: t["name"] for t in size_plot.evaluate(TRACES) for k in t["keys"]}
    assert set(drawn) == set(rows)  # every stored row is a point
    by_label = {rows[k]["label"]: name for k, name in drawn.items()}
    assert by_label == {"fp32": "fp32/bf16 baseline", "W8 channel sym ptq": "PTQ · RTN"}
    x_title, y_title = size_plot.evaluate(AXES)
    assert y_title == "word error rate (%), lower is better"
    assert x_title.startswith("size as stored (MiB)")

    page.get_by_role("tab", name="Quality vs latency").click()
    speed_plot = page.locator(".st-key-pareto-latency .js-plotly-plot")
    speed_plot.locator(".scatterlayer .point").first.wait_for()
    x_title, y_title = speed_plot.evaluate(AXES)
    assert x_title == "real-time factor (10 s audio)"
    traces = speed_plot.evaluate(TRACES)
    points = {k: x for t in traces for k, x in zip(t["keys"], t["x"], strict=True)}
    for key, x in points.items():
        assert x == pytest.approx(rows[key]["latency"]["transcribe_10s"]["rtf"], rel=1e-9)
    assert set(points) == set(rows)
    if importlib.util.find_spec("faster_whisper") is not None:
        button = page.get_by_role("button", name="Measure faster-whisper (float32 and int8)")
        assert button.count() == 1
    report("speech_pareto_page_s", round(time.monotonic() - t0, 1))
