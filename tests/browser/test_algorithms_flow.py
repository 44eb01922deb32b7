"""The PTQ algorithms in a real browser: the Sweep page's algorithm dimension runs round-to-nearest,
GPTQ and AWQ on tiny-lm, and the Pareto page draws them as distinct, labelled series whose
hover texts name the algorithm and its calibration cost.

The run works on tiny-lm with a small uploaded text (the first 15,000 characters of its held-out
split, 4,478 tokens of its own tokenizer: 8 calibration sequences of 128 tokens from the start,
the least GPTQ and AWQ take, and the rest scored),
prepared the way the Model page's data upload leaves a run
(`explorer.uploads.data_source`, then the run's model source), and the sweep applies to the
first layer's MLP only (``model.layers.0.mlp.*``; the other layers stay fp32) with one timed
repeat,
so that GPTQ and AWQ run on real linear layers within the test's time.

The sweep runs once, in the Sweep page of a visitor of that run (`algorithm_sweep`); each test
then opens the app as a visitor of its own at that run's URL and checks one thing. This module
runs its own server (``own_app_server``), so its rows stay out of the session server's store.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from explorer.models.tinylm import split_text
from explorer.sweep.context import ModelSource
from explorer.sweep.store import ResultStore
from explorer.uploads import data_source

pytestmark = [pytest.mark.browser, pytest.mark.slow]

expect: Any = None  # playwright's `expect`, imported once the browser fixture has not skipped

AppServer = Any  # tests/browser/conftest.py's AppServer (conftest modules are not imported)
RUN = "a160a160a160"
CHARS = 15_000
PATTERN = "model.layers.0.mlp.*"
SWEEP_TIMEOUT_S = 240
SERIES = ["fp32/bf16 baseline", "PTQ · RTN", "PTQ · GPTQ", "PTQ · AWQ"]
TRACES = """el => (el.data || []).filter(t => t.meta === 'series')
    .map(t => ({name: t.name, keys: t.customdata, hover: t.hovertext}))"""
POINTS = """el => Array.from(el.querySelectorAll('.scatterlayer .trace')).flatMap(g => {
    const trace = g.__data__ && g.__data__[0] && g.__data__[0].trace;
    if (!trace || trace.meta !== 'series') return [];
    return Array.from(g.querySelectorAll('.point')).map(p => {
        const r = p.getBoundingClientRect();
        return {name: trace.name, x: r.x + r.width / 2, y: r.y + r.height / 2};
    });
})"""


@pytest.fixture(scope="module")
def app_server(own_app_server: AppServer) -> AppServer:
    return own_app_server


@pytest.fixture(scope="module", autouse=True)
def _playwright_expect(browser: Any) -> None:
    global expect
    from playwright.sync_api import expect as playwright_expect

    expect = playwright_expect


@pytest.fixture(scope="module")
def tiny_run(app_server: AppServer) -> str:
    """A run whose model is tiny-lm on a small uploaded text, as the Model page leaves it."""
    text = split_text("eval")[:CHARS]
    run_dir = app_server.cache / "runs" / RUN
    source, _ = data_source(
        text.encode(),
        "tiny-eval.txt",
        run_dir,
        ModelSource(model="tiny-lm"),
    )
    (run_dir / "run.json").write_text(json.dumps({"source": source.to_dict()}))
    return RUN


def idle(page: Any, timeout: float = 60_000) -> None:
    """Wait until the page's script run has finished (Streamlit marks the app root)."""
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(
        timeout=timeout
    )


def pick(page: Any, multiselect: str, remove: list[str], add: list[str]) -> None:
    """Change a multiselect (by widget key): remove chips, then choose options."""
    box = page.locator(f".st-key-{multiselect}")
    for value in remove:
        box.get_by_role("button", name=f"Remove {value}", exact=True).click()
        idle(page)
    for value in add:
        box.get_by_role("combobox").click()
        page.get_by_role("option", name=value, exact=True).click()
        page.keyboard.press("Escape")
        idle(page)


def fill(page: Any, key: str, value: str) -> None:
    """Type ``value`` into a text or number input (by widget key) and commit it."""
    field = page.locator(f".st-key-{key} input")
    field.fill(value)
    field.press("Enter")
    idle(page)


@pytest.fixture(scope="module")
def algorithm_sweep(new_user: Any, app_server: AppServer, tiny_run: str) -> float:
    """On the Sweep page of the tiny-lm run: W4 g32 on the first block's MLP by RTN, GPTQ and
    AWQ, run to the end; returns its seconds."""
    with new_user() as page:
        open_run(page, app_server, tiny_run, "Sweep")
        page.locator(".st-key-spec-bits").get_by_role("combobox").wait_for(timeout=60_000)
        idle(page)
        expect(page.get_by_text(re.compile(r"Model: tiny-lm"))).to_be_visible()
        pick(page, "spec-bits", remove=["8"], add=[])
        pick(page, "spec-granularity", remove=["channel"], add=["group32"])
        pick(
            page,
            "spec-algorithm",
            remove=[],
            add=["GPTQ (error compensation)", "AWQ (activation-aware scales)"],
        )
        fill(page, "spec-pattern", PATTERN)
        page.get_by_text("Run settings").click()
        fill(page, "run-repeats", "1")
        fill(page, "run-n_boot", "100")
        expect(page.get_by_text(re.compile(r"^3 configurations plus"))).to_be_visible()
        started = time.monotonic()
        page.get_by_role("button", name="Run sweep").click()
        expect(page.get_by_text("Sweep finished: 5 of 5 rows.")).to_be_visible(
            timeout=SWEEP_TIMEOUT_S * 1000
        )
        return time.monotonic() - started


def open_run(page: Any, server: AppServer, run: str, name: str) -> None:
    """Open the app at run ``run``'s URL (the app's frame first, as a user opens it), then the
    page ``name`` from the sidebar."""
    page.goto(f"{server.url}/?run={run}")
    page.get_by_role("heading", level=1, name="Model", exact=True).wait_for(timeout=60_000)
    page.locator('[data-testid="stSidebarNav"] a', has_text=name).click()
    heading = "Pareto fronts" if name == "Pareto" else name
    page.get_by_role("heading", level=1, name=heading, exact=True).wait_for(timeout=60_000)
    idle(page)


def test_sweep_page_runs_the_algorithm_dimension(
    app_server: AppServer, tiny_run: str, algorithm_sweep: float, report: Any
) -> None:
    report("algorithm_sweep_tiny_lm_s", round(algorithm_sweep, 1))
    with ResultStore(app_server.store) as store:
        rows = {r["label"]: r for r in store.rows(owner=tiny_run)}
    assert len(rows) == 5
    for algorithm in ("rtn", "gptq", "awq"):
        name = "" if algorithm == "rtn" else f"{algorithm} "
        row = rows[f"W4 group32 sym {name}ptq on {PATTERN}"]  # the layers it applies to
        assert (row["method"], row["algorithm"]) == ("ptq", algorithm)
        assert row["algorithms"] == {algorithm: 3}  # gate, up and down of the first layer
        assert row["metrics"]["perplexity"] > 1
    gptq = rows[f"W4 group32 sym gptq ptq on {PATTERN}"]
    assert gptq["seconds"]["algorithm"] > 0


def test_pareto_page_shows_each_algorithm_as_a_series(
    page: Any, app_server: AppServer, tiny_run: str, algorithm_sweep: float, browser_dir: Path
) -> None:
    open_run(page, app_server, tiny_run, "Pareto")
    plot = page.locator(".st-key-pareto-size .js-plotly-plot")
    plot.locator(".scatterlayer .point").first.wait_for()
    traces = {t["name"]: t for t in plot.evaluate(TRACES)}
    assert list(traces) == SERIES
    with ResultStore(app_server.store) as store:
        rows = {r["key"]: r for r in store.rows(owner=tiny_run)}
    for name in SERIES[1:]:
        (key,) = traces[name]["keys"]
        assert rows[key]["algorithm"] == name.split(" · ")[1].lower()
    # the legend as drawn names every series
    legend = plot.locator(".legend .legendtext").all_text_contents()
    assert set(SERIES) <= set(legend)
    # hovering the GPTQ point shows its series, its algorithm and its calibration cost
    (point,) = [p for p in plot.evaluate(POINTS) if p["name"] == "PTQ · GPTQ"]
    page.mouse.move(point["x"], point["y"])
    hover = page.locator(".st-key-pareto-size .hoverlayer .hovertext")
    expect(hover.first).to_contain_text("PTQ · GPTQ")
    text = hover.first.text_content() or ""
    assert re.search(r"PTQ, GPTQ · calibration \d+\.\d s", text), text
    page.screenshot(path=str(browser_dir / "algorithms-pareto.png"))


def test_layers_whatif_puts_gptq_on_one_more_layer(
    page: Any, app_server: AppServer, tiny_run: str, algorithm_sweep: float
) -> None:
    """The RTN row (first layer's MLP at W4 g32) with ``self_attn.o_proj``, fp32 there, set
    to W4 g32 by GPTQ: a new row whose layers record which algorithm produced them."""
    with ResultStore(app_server.store) as store:
        rows = store.rows(owner=tiny_run)
    (rtn,) = [r for r in rows if r["algorithm"] == "rtn"]
    open_run(page, app_server, tiny_run, "Pareto")
    picker = page.get_by_role("combobox", name="Selected configuration")
    picker.click()
    picker.fill(rtn["label"])  # the select box filters its options by what is typed
    page.keyboard.press("Enter")
    idle(page)
    expect(picker).to_have_value(rtn["label"])
    page.get_by_role("button", name="Open layers").click()
    page.get_by_role("heading", level=1, name="Layers", exact=True).wait_for()
    idle(page)
    for label, option in (
        ("Layer", re.compile(r"^model\.layers\.0\.self_attn\.o_proj ")),
        ("New setting", "W4 g32 gptq"),
    ):
        box = page.get_by_role("combobox", name=label, exact=True)
        box.scroll_into_view_if_needed()
        box.click()
        page.get_by_role("option", name=option, exact=isinstance(option, str)).first.click()
        idle(page)
    page.get_by_role("button", name="Re-evaluate").click()
    expect(
        page.get_by_text(re.compile(r"^Layers by PTQ algorithm: gptq ×1, rtn ×3"))
    ).to_be_visible(timeout=SWEEP_TIMEOUT_S * 1000)
    with ResultStore(app_server.store) as store:
        (new,) = [r for r in store.rows(owner=tiny_run) if r["sweep"] == "whatif"]
    assert new["label"] == (
        f"mixed: model.layers.0.self_attn.o_proj=W4 group32 sym gptq ptq, "
        f"{PATTERN}=W4 group32 sym ptq"
    )
    assert new["algorithms"] == {"gptq": 1, "rtn": 3}
    quantized = {lay["name"]: lay["algorithm"] for lay in new["layers"] if lay["algorithm"]}
    assert quantized == {  # the other layers stay fp32
        "model.layers.0.self_attn.o_proj": "gptq",
        "model.layers.0.mlp.gate_proj": "rtn",
        "model.layers.0.mlp.up_proj": "rtn",
        "model.layers.0.mlp.down_proj": "rtn",
    }
