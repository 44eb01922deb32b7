"""Speech in a real browser: the whole default sweep of a Whisper (every row
`default_entries` gives it: the fp32 and bf16 baselines, W8, W8A8, W4 g32 and g128, the
encoder at 8 bits with the decoder at 4, and W4 g128 trained by QAT for its real
`QAT_STEPS` steps on the folder's ``train/`` audio), stored for this run as the app's worker
stores it, then the Pareto page draws one point per entry: word error rate against size, and
against the real-time factor of the 10 s transcription.

The sweep of the real whisper-tiny-en takes half an hour of CPU (QAT alone), so the model is
the tiny random Whisper of tests/tasks/test_speech.py (d_model 32, one layer each side, two
heads, a 200-token BPE, a 2 s window) with Whisper's 80 mel bins, evaluated on 4 tone
utterances of ``eval/`` and trained on the 5 disjoint ones of ``train/``. Its rows are
meaningless as numbers; what is checked is that every row of the default sweep runs and
reaches both plots. The sweep runs without per-layer reports (the Layers page on a speech run
is tests/app/test_speech_pages.py's), in this process, into the store of this module's own
server (``own_app_server``), owned by the run. faster-whisper runs the built-in model's
CTranslate2 files only, so the page says why it draws no faster-whisper points here.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

AppServer = Any  # tests/browser/conftest.py's AppServer (conftest modules are not imported)
RUN = "5bee5bee5bee"
ENTRIES = 8  # the default sweep of a Whisper (tests/tasks/test_speech.py lists them)
TRACES = """el => (el.data || []).filter(t => t.meta === 'series')
    .map(t => ({name: t.name, keys: t.customdata, x: t.x, y: t.y}))"""
AXES = """el => [el.layout.xaxis.title.text, el.layout.yaxis.title.text]"""


@pytest.fixture(scope="module")
def app_server(own_app_server: AppServer) -> AppServer:
    return own_app_server


@pytest.fixture(scope="module")
def swept(app_server: AppServer) -> dict[str, Any]:
    import torch
    from tasks.builders import sentences
    from tasks.test_speech import save_whisper, write_folder

    from explorer.models.whisper_plans import QAT_STEPS
    from explorer.sweep.context import ModelSource, open_context
    from explorer.sweep.default import default_entries
    from explorer.sweep.runner import RunSettings, run_sweep
    from explorer.sweep.store import ResultStore

    t0 = time.monotonic()
    root = app_server.cache.parent / "speech"
    save_whisper(root / "model", mel_bins=80)
    write_folder(root / "data" / "eval", n=4)
    write_folder(root / "data" / "train", texts=sentences(5, seed=11))
    source = ModelSource(model=str(root / "model"), data=str(root / "data"))
    ctx = open_context(source)
    entries, skipped = default_entries(ctx.model)
    assert not skipped and len(entries) == ENTRIES
    assert entries[-1].qat_steps == QAT_STEPS  # the QAT row at its real length
    settings = RunSettings(repeats=1, warmup=0, n_boot=200, eval_budget=4, per_layer=False)
    # One thread: the tiny model's operations take microseconds, and two threads waiting on each
    # other on a loaded 2-core machine made the QAT row 33 times slower (74.6 s against 2.3 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ResultStore(app_server.store) as store:
            events = list(run_sweep(ctx, entries, store, settings=settings, owner=RUN))
    finally:
        torch.set_num_threads(threads)
    rows = {e.row["key"]: e.row for e in events if e.kind == "row" and e.row}
    assert [r["label"] for r in rows.values()] == [e.label for e in entries], [
        (e.kind, e.label, e.reason) for e in events
    ]
    qat = rows[next(k for k, r in rows.items() if r["label"] == entries[-1].label)]
    assert (qat["qat_steps"], qat["qat_data"]) == (QAT_STEPS, "train")
    run_dir = app_server.cache / "runs" / RUN
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({"source": source.to_dict()}))
    return {
        "rows": rows,
        "labels": [e.label for e in entries],
        "seconds": round(time.monotonic() - t0, 1),
    }


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
    assert sorted(by_label) == sorted(swept["labels"])  # one point per default entry
    ptq = swept["labels"][2:-2]  # W8, W8A8, W4 g32 and g128; the mixed plan and QAT follow
    assert by_label == {
        "fp32": "fp32/bf16 baseline",
        "bf16": "fp32/bf16 baseline",
        **dict.fromkeys(ptq, "PTQ · RTN"),
        swept["labels"][-2]: "mixed (per layer)",
        swept["labels"][-1]: "QAT",
    }
    x_title, y_title = size_plot.evaluate(AXES)
    assert y_title == "word error rate (%), lower is better"
    assert x_title.startswith("size as stored (KiB)")  # a tiny model

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
    # a custom Whisper has no CTranslate2 files: the page says so instead of offering the button
    page.get_by_text(
        "No faster-whisper points: faster-whisper runs the original CTranslate2"
    ).wait_for()
    report("speech_pareto_page_s", round(time.monotonic() - t0, 1))
