"""The app in a real browser: each test is a new visitor (a browser context of its own, so a run
id of its own) who opens the app and does one thing:

- the first page is interactive soon after ``streamlit run`` (on a server of the test's own);
- the default sweep, started by the first open of the default model, reaches the Pareto plot;
- a further small sweep (W5 per channel) on the Sweep page adds its row to the plot;
- a click on a point of the Pareto plot opens the Layers page on that row;
- the what-if editor changes one layer: a new row with other numbers, then shown;
- moving between pages with results loaded is quick;
- an export downloads and reloads with `explorer` to outputs identical to quantizing the same
  row directly;
- choosing a configuration in the Layers page's select box shows it;
- uploads belong to the run id in the URL: a second visitor sees neither the first one's
  uploaded weights nor the rows computed from them, and a garbage upload is refused in the page.

What they share is the module's server and its results store, filled once by `default_sweep`
(a visitor opens the app and the default sweep runs to the end), so any test runs alone.

The targets stated for the app are timed and printed (pytest's terminal summary,
``browser-timings.json``): the first page interactive within 5 s of ``streamlit run`` and page
moves within 1 s (median), on a quiet 2-core machine. The asserted bounds are twice those:
CI runs these tests on 2 cores that the server's sweep workers and Chromium share, where the
figures measured on a quiet machine (first page 3.3 s median, 2.5 to 5.7 s; page moves 0.31 s
median) roughly double. On a machine loaded beyond two runnable processes per CPU by other jobs
(a shared development machine: 6.2 s at load 13 and 27 s at load 20 on 2 CPUs) the figures are
printed and the bound is not judged (`judge_timing`).

With ``EXPLORER_SCREENSHOTS=1`` the Pareto and Layers pages are saved to ``docs/screenshots/``
(the README shows them); otherwise the working tree is left alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import torch

from explorer.bundle import build_row_model, plan_document
from explorer.export.load import read_export_plan
from explorer.machine import usable_cpus
from explorer.models.catalog import DEFAULT_MODEL
from explorer.nn.convert import quant_modules
from explorer.sweep.context import ModelContext, ModelSource, open_context
from explorer.sweep.default import default_entries
from explorer.sweep.export import load_export
from explorer.sweep.store import ResultStore

pytestmark = pytest.mark.browser

expect: Any = None  # playwright's `expect`, imported once the browser fixture has not skipped

AppServer = Any  # tests/browser/conftest.py's AppServer (conftest modules are not imported)
ROOT = Path(__file__).resolve().parents[2]
VIEWPORT = {"width": 1400, "height": 900}  # as the contexts of conftest.py
SCREENSHOTS = ROOT / "docs" / "screenshots"
DEFAULT_SWEEP_TIMEOUT_S = 240
SWEEP_TIMEOUT_MS = 120_000
FIRST_PAGE_TARGET_S = 5.0
PAGE_MOVE_TARGET_S = 1.0
CI_MARGIN = 2.0  # why: the module docstring
OVERLOADED = 2.0  # runnable processes per CPU beyond which no timing target is judged
TITLES = {
    "Model": "Model",
    "Sweep": "Sweep",
    "Pareto": "Pareto fronts",
    "Layers": "Layers",
    "Learn": re.compile(r"Learn$"),
    "Kernels": re.compile(r"Kernels$"),
    "Export": re.compile(r"Export$"),
}
SERIES_KEYS = """el => (el.data || []).filter(t => t.meta === 'series')
    .flatMap(t => (t.customdata || []).map(c => Array.isArray(c) ? c[0] : c))"""
DRAWN_POINTS = """el => Array.from(el.querySelectorAll('.scatterlayer .trace')).flatMap(g => {
    const trace = g.__data__ && g.__data__[0] && g.__data__[0].trace;
    if (!trace) return [];
    return Array.from(g.querySelectorAll('.point')).map(p => {
        const r = p.getBoundingClientRect();
        const c = (trace.customdata || [])[p.__data__.i];
        return {key: Array.isArray(c) ? c[0] : (c ?? null), meta: trace.meta ?? null,
                x: r.x + r.width / 2, y: r.y + r.height / 2, w: r.width};
    });
})"""


@pytest.fixture(scope="module", autouse=True)
def _playwright_expect(browser: Any) -> None:
    global expect
    from playwright.sync_api import expect as playwright_expect

    expect = playwright_expect


@pytest.fixture(scope="module")
def default_ctx(app_server: AppServer) -> ModelContext:
    """The default model, opened in this process to check what the app shows and exports."""
    return open_context(ModelSource(model=DEFAULT_MODEL))


@pytest.fixture(scope="module")
def default_sweep(
    new_user: Any, app_server: AppServer, default_ctx: ModelContext
) -> dict[str, Any]:
    """A first visitor opens the app on the default model, which starts the default sweep; the
    store holds all of its rows when this returns. Records the seconds from the open to the
    first quantized row stored and to the last."""
    expected = {entry.label for entry in default_entries(default_ctx.model)[0]}
    with new_user() as first:
        opened_at = time.monotonic()
        first.goto(app_server.url + "/")
        progress = first.get_by_text(
            re.compile(r"Evaluated \d+ of \d+ configurations|Starting the sweep")
        )
        expect(progress.first).to_be_visible(timeout=DEFAULT_SWEEP_TIMEOUT_S * 1000)
        first_rows = None
        while True:
            rows = stored_rows(app_server)
            if first_rows is None and any(r.get("kind") != "baseline" for r in rows.values()):
                first_rows = time.monotonic() - opened_at
            labels = {r["label"] for r in rows.values()}
            if expected <= labels or time.monotonic() - opened_at > DEFAULT_SWEEP_TIMEOUT_S:
                break
            time.sleep(1)
        complete = time.monotonic() - opened_at
    assert expected <= labels, f"the default sweep did not store {sorted(expected - labels)}"
    return {"expected": expected, "first_rows_s": first_rows, "complete_s": complete}


# --- helpers -------------------------------------------------------------------------------------


def open_app(page: Any, server: AppServer, name: str = "Model") -> str:
    """Open the app as a new visitor, then page ``name``; returns the visitor's run id."""
    page.goto(server.url + "/")
    expect(page.get_by_role("combobox", name="Built-in model")).to_be_enabled(timeout=60_000)
    idle(page)
    if name != "Model":
        go(page, name)
        idle(page)
    return run_of(page)


def title(page: Any, name: str) -> Any:
    text = TITLES[name]
    return page.get_by_role("heading", level=1, name=text, exact=isinstance(text, str))


def idle(page: Any, timeout: float = 60_000) -> None:
    """Wait until the page's script run has finished (Streamlit marks the app root)."""
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(
        timeout=timeout
    )


def go(page: Any, name: str) -> float:
    """Click ``name`` in the sidebar; seconds until the target page's title is visible."""
    start = time.monotonic()
    page.locator('[data-testid="stSidebarNav"] a', has_text=name).click()
    title(page, name).wait_for()
    return time.monotonic() - start


def run_of(page: Any) -> str:
    runs = parse_qs(urlparse(page.url).query).get("run")
    assert runs, f"no run id in the URL {page.url}"
    return runs[0]


def stored_rows(server: AppServer, owner: str | None = "") -> dict[str, dict[str, Any]]:
    with ResultStore(server.store) as store:
        return {row["key"]: row for row in store.rows(owner=owner)}


def chart(page: Any, key: str = "pareto-size") -> Any:
    return page.locator(f".st-key-{key} .js-plotly-plot")


def plotted_keys(page: Any, key: str = "pareto-size") -> list[str]:
    """Row keys of the configurations drawn on a chart (empty when the page has no results)."""
    idle(page)
    plot = chart(page, key)
    empty = page.get_by_text(re.compile(r"^No results for"))
    # Plotly loads lazily: the chart's container comes before the drawn points.
    plot.locator(".scatterlayer .point").or_(empty).first.wait_for()
    if empty.count():
        return []
    return plot.evaluate(SERIES_KEYS)


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


def choose(page: Any, label: str, option: str | re.Pattern[str]) -> None:
    page.get_by_role("combobox", name=label, exact=True).click()
    page.get_by_role("option", name=option, exact=isinstance(option, str)).first.click()
    idle(page)


def run_small_sweep(
    page: Any,
    server: AppServer,
    *,
    bits: str,
    granularity: str | None = None,
    owner: str = "",
) -> dict[str, Any]:
    """On the Sweep page: weight bits ``bits`` only (and ``granularity`` instead of channel),
    run, and return the new row once it is stored and the page says the sweep finished."""
    label = f"W{bits} {granularity or 'channel'} sym ptq"
    go(page, "Sweep")
    page.locator(".st-key-spec-bits").get_by_role("combobox").wait_for()
    idle(page)
    pick(page, "spec-bits", remove=["8", "4"], add=[bits])
    if granularity:
        pick(page, "spec-granularity", remove=["channel"], add=[granularity])
    expect(page.get_by_text(re.compile(r"^1 configuration plus"))).to_be_visible()
    page.get_by_role("button", name="Run sweep").click()
    # An earlier sweep's "finished" may still be on the page: the store says when this one is.
    deadline = time.monotonic() + SWEEP_TIMEOUT_MS / 1000
    while not (new := [r for r in stored_rows(server, owner).values() if r["label"] == label]):
        assert time.monotonic() < deadline, f"{label} was not stored in time"
        time.sleep(0.5)
    expect(page.get_by_text("Sweep finished: 3 of 3 rows.")).to_be_visible(timeout=30_000)
    expect(page.get_by_role("button", name="Run sweep")).to_be_enabled()
    assert len(new) == 1
    return new[0]


def screenshot(page: Any, name: str, height: int, anchor: Any | None = None) -> None:
    """Save the page (the top ``height`` pixels) to docs/screenshots/<name> when
    EXPLORER_SCREENSHOTS=1."""
    if os.environ.get("EXPLORER_SCREENSHOTS") != "1":
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": VIEWPORT["width"], "height": height})
    try:
        page.mouse.move(5, 5)  # no hover label over the chart
        page.evaluate("document.activeElement && document.activeElement.blur()")
        page.wait_for_timeout(1500)  # plotly redraws at the new size
        if anchor is not None:
            anchor.scroll_into_view_if_needed()
        page.screenshot(path=str(SCREENSHOTS / name))
    finally:
        page.set_viewport_size(VIEWPORT)
        page.wait_for_timeout(500)


# --- the tests ----------------------------------------------------------------------------------


def judge_timing(measured: float, target: float, what: str) -> None:
    """Assert ``measured`` within `CI_MARGIN` times ``target``; on a machine loaded beyond
    `OVERLOADED` processes per CPU (other jobs than these tests), skip instead, saying so: the
    targets are stated for a quiet machine and such a load multiplies every figure."""
    load, cpus = os.getloadavg()[0], usable_cpus()
    if load > OVERLOADED * cpus:
        pytest.skip(
            f"{what} {measured:.2f} s with load average {load:.1f} on {cpus} CPUs: not a quiet "
            f"machine, so the {target:g} s target (bound {target * CI_MARGIN:g} s) is not judged"
        )
    assert measured < target * CI_MARGIN, f"{what} {measured:.2f} s (target {target:g} s)"


def test_first_page_is_interactive(page: Any, fresh_app_server: AppServer, report: Any) -> None:
    page.goto(fresh_app_server.url + "/")
    model_box = page.get_by_role("combobox", name="Built-in model")
    expect(model_box).to_be_enabled(timeout=60_000)
    ready = time.monotonic()
    after_launch = ready - fresh_app_server.launched_at
    report("first_page_interactive_after_launch_s", round(after_launch, 3))
    report("first_page_interactive_after_health_s", round(ready - fresh_app_server.healthy_at, 3))
    print(f"first page interactive {after_launch:.2f} s after launch (target 5 s)")
    expect(model_box).to_have_value(DEFAULT_MODEL)
    expect(title(page, "Model")).to_be_visible()
    judge_timing(after_launch, FIRST_PAGE_TARGET_S, "first page interactive after launch")


def test_default_sweep_points_reach_the_pareto_plot(
    page: Any, app_server: AppServer, default_sweep: dict[str, Any], report: Any
) -> None:
    report("default_sweep_first_rows_after_open_s", round(default_sweep["first_rows_s"], 1))
    report("default_sweep_complete_after_open_s", round(default_sweep["complete_s"], 1))
    run = open_app(page, app_server, "Pareto")
    keys = plotted_keys(page)
    rows = stored_rows(app_server)
    labels = {rows[k]["label"] for k in keys if k in rows}
    assert default_sweep["expected"] <= labels, (
        f"missing on the plot: {sorted(default_sweep['expected'] - labels)}"
    )
    assert set(keys) <= set(rows), "every point is a stored row"
    assert default_sweep["first_rows_s"] < 120, "the default sweep's first rows took over 2 min"
    assert run_of(page) == run, "the run id stays in the URL"
    screenshot(page, "pareto.png", 1000, anchor=title(page, "Pareto"))


def test_further_sweep_adds_its_row(
    page: Any, app_server: AppServer, default_sweep: dict[str, Any]
) -> None:
    open_app(page, app_server)
    new = run_small_sweep(page, app_server, bits="5")  # a width the default sweep lacks
    go(page, "Pareto")
    assert new["key"] in plotted_keys(page)


def test_clicking_a_point_opens_its_layers(
    page: Any, app_server: AppServer, default_sweep: dict[str, Any]
) -> None:
    run = open_app(page, app_server, "Pareto")
    plotted_keys(page)  # the points are drawn
    plot = chart(page)
    expect(plot).to_be_visible()
    plot.scroll_into_view_if_needed()
    points = plot.evaluate(DRAWN_POINTS)
    rows = stored_rows(app_server)
    # The quantized point farthest from any other drawn point: a click there is unambiguous
    # (several configurations share a size and an accuracy and are drawn on top of each other).
    candidates = [
        p
        for p in points
        if p["meta"] == "series" and rows.get(p["key"], {}).get("kind") not in (None, "baseline")
    ]
    assert candidates, f"no quantized points drawn: {points}"

    def room(p: dict[str, Any]) -> float:
        others = [q for q in points if q["key"] != p["key"]]
        return min(((p["x"] - q["x"]) ** 2 + (p["y"] - q["y"]) ** 2) ** 0.5 for q in others)

    target = max(candidates, key=room)
    assert room(target) > target["w"], "every quantized point is overlapped by another one"
    page.mouse.move(target["x"], target["y"])
    page.wait_for_timeout(300)  # plotly's hover, which its click handler reads
    page.mouse.click(target["x"], target["y"])

    page.wait_for_url(re.compile(r"/layers\?(.*&)?run=" + run))
    title(page, "Layers").wait_for()
    label = rows[target["key"]]["label"]
    expect(page.get_by_role("combobox", name="Configuration")).to_have_value(
        re.compile("^" + re.escape(label))
    )
    run_file = app_server.cache / "runs" / run / "run.json"
    assert json.loads(run_file.read_text())["selected_row"] == target["key"]


def test_whatif_edit_adds_a_row_with_other_numbers(
    page: Any, app_server: AppServer, default_sweep: dict[str, Any]
) -> None:
    label = "W8 channel sym ptq"  # a PTQ row: the what-if editor re-evaluates PTQ rows
    old = next(r for r in stored_rows(app_server).values() if r["label"] == label)
    open_app(page, app_server, "Layers")
    choose(page, "Configuration", label)
    # the rerun for the chosen row has drawn its chart: the layer boxes below are that row's
    # (choose() can return before the rerun starts; see test_export_reloads_to_identical_outputs)
    expect(page.get_by_text(re.compile(f"^{re.escape(label)}: "))).to_be_visible()
    layer_box = page.get_by_role("combobox", name="Layer", exact=True)
    layer_box.scroll_into_view_if_needed()
    choose(page, "Layer", re.compile(r"^classifier "))
    choose(page, "New setting", "W4 channel")
    page.get_by_role("button", name="Re-evaluate").click()
    against = page.get_by_text(re.compile(r"— against"))
    against.wait_for(timeout=SWEEP_TIMEOUT_MS)

    added = [
        r
        for r in stored_rows(app_server).values()
        if r["sweep"] == "whatif" and r["label"].startswith("mixed: classifier=")
    ]
    assert len(added) == 1
    new = added[0]
    assert new["size_bytes"] != old["size_bytes"]
    assert [lay["config"] for lay in new["layers"] if lay["name"] != "classifier"] == [
        lay["config"] for lay in old["layers"] if lay["name"] != "classifier"
    ], "only the edited layer changed"
    expect(against).to_contain_text(new["label"])
    size_delta = page.locator('[data-testid="stMetric"]', has_text="Size").nth(1)
    expect(size_delta.locator('[data-testid="stMetricDelta"]')).to_have_text(
        re.compile(r"^[+\-−]?\d[\d,.]* KiB$")
    )
    assert not re.search(r"[+-]0\.0 KiB", size_delta.inner_text())

    page.get_by_role("button", name="Show this configuration").click()
    expect(page.get_by_role("combobox", name="Configuration")).to_have_value(new["label"])


def test_moving_between_pages_is_quick(
    page: Any, app_server: AppServer, default_sweep: dict[str, Any], report: Any
) -> None:
    run = open_app(page, app_server)
    route = ["Pareto", "Sweep", "Layers", "Model", "Pareto", "Export", "Layers", "Sweep", "Model"]
    to_title, settled = [], []
    for name in route:
        idle(page)
        start = time.monotonic()
        to_title.append(go(page, name))
        idle(page)
        settled.append(time.monotonic() - start)
        assert run_of(page) == run, f"the run id was lost on the way to {name}"
    median = statistics.median(to_title)
    report("page_move_title_visible_s", [round(t, 3) for t in to_title])
    report("page_move_title_visible_median_s", round(median, 3))
    report("page_move_script_done_s", [round(t, 3) for t in settled])
    report("page_move_script_done_median_s", round(statistics.median(settled), 3))
    print(f"page moves: median {median:.2f} s to the title (target 1 s)")
    judge_timing(median, PAGE_MOVE_TARGET_S, "page moves (median)")


def test_export_reloads_to_identical_outputs(
    page: Any,
    app_server: AppServer,
    default_ctx: ModelContext,
    default_sweep: dict[str, Any],
    tmp_path: Path,
) -> None:
    label = "W4 channel sym ptq"
    row = next(r for r in stored_rows(app_server).values() if r["label"] == label)
    open_app(page, app_server, "Export")
    choose(page, "Configuration", label)
    # The button that names the row: `choose` may return before the rerun for the new row has
    # begun, and until that rerun has built the row's export the page still shows the first
    # row's button, which downloads the first row's weights (ci10: the what-if row's, newest).
    weights_button = page.get_by_role(
        "button", name=re.compile(rf"^Download the weights of {re.escape(label)} \(")
    )
    weights_button.wait_for(timeout=SWEEP_TIMEOUT_MS)
    with page.expect_download() as download:
        weights_button.click()
    weights = tmp_path / "model.safetensors"
    download.value.save_as(weights)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download the plan (JSON)").click()
    plan = tmp_path / "plan.json"
    download.value.save_as(plan)

    assert json.loads(plan.read_text()) == plan_document(row)
    assert read_export_plan(weights)[1]["plan"] == row["config"], "the weights of another row"
    reloaded = load_export(default_ctx.model, weights)
    direct = build_row_model(default_ctx, row)
    # Each part on its own, so that a difference says where it lies: the kernels the export
    # names, the tensors it holds, then the outputs of both models.
    stored = {name: rec["kernel"] for name, rec in read_export_plan(weights)[1]["layers"].items()}
    assert stored == {n: row["kernels"].get(n, stored[n]) for n in stored}, "export's kernels"
    assert kernel_names(reloaded) == kernel_names(direct)
    want_tensors = direct.state_dict()
    differ = [n for n, t in reloaded.state_dict().items() if not torch.equal(t, want_tensors[n])]
    assert not differ, f"the app exported other tensors than the row's model holds: {differ}"
    inputs = default_ctx.eval_split[0][:256]
    with torch.no_grad():
        got, want, floats = reloaded(inputs), direct(inputs), default_ctx.model(inputs)
        again = direct(inputs)
    assert torch.equal(want, again), "the row's model is not deterministic"
    assert torch.equal(got, want)
    assert not torch.equal(got, floats), "the export is quantized, not the float model"


def kernel_names(model: torch.nn.Module) -> dict[str, str]:
    return {name: module.kernel_name for name, module in quant_modules(model).items()}


def test_choosing_a_configuration_in_the_select_box(
    page: Any, app_server: AppServer, default_sweep: dict[str, Any]
) -> None:
    label = "W8 channel sym ptq"
    key = next(k for k, r in stored_rows(app_server).items() if r["label"] == label)
    run = open_app(page, app_server, "Layers")
    choose(page, "Configuration", label)
    expect(page.get_by_role("combobox", name="Configuration")).to_have_value(label)
    expect(page.get_by_text(re.compile(f"^{re.escape(label)}: "))).to_be_visible()  # chart title
    run_file = app_server.cache / "runs" / run / "run.json"
    assert json.loads(run_file.read_text())["selected_row"] == key
    screenshot(page, "layers.png", 1150, anchor=title(page, "Layers"))


def test_uploads_stay_in_their_run(
    page: Any,
    new_user: Any,
    app_server: AppServer,
    default_sweep: dict[str, Any],
    tmp_path: Path,
) -> None:
    # The first user loads a copy of the shipped weights under a new name and sweeps it.
    upload = tmp_path / "my-digits-cnn.safetensors"
    shutil.copyfile(ROOT / "assets" / "digits-cnn" / "model.safetensors", upload)
    run = open_app(page, app_server)
    page.get_by_text("Load your own model or data").click()
    page.locator(".st-key-upload-weights input[type=file]").set_input_files(upload)
    page.get_by_role("button", name="Load weights").click()
    expect(page.get_by_text(f"Loaded {upload.name}.")).to_be_visible(timeout=60_000)
    expect(page.get_by_text(re.compile(r"^Working on .*uploaded weights"))).to_be_visible()
    run_small_sweep(page, app_server, bits="3", granularity="tensor", owner=run)
    mine = stored_rows(app_server, owner=run)
    page.reload()  # the run id in the URL brings the upload back
    title(page, "Sweep").wait_for()
    go(page, "Model")
    expect(page.get_by_text(re.compile(r"^Working on .*uploaded weights"))).to_be_visible()

    # A second user, at the same time, in a context of their own.
    with new_user() as second:
        assert open_app(second, app_server) != run
        expect(second.get_by_text(f"Working on the built-in {DEFAULT_MODEL}.")).to_be_visible()
        assert upload.stem not in second.content()
        go(second, "Pareto")
        shown = plotted_keys(second)
        assert shown, "the shared rows of the built-in model are visible"
        assert not set(shown) & set(mine), "the second run sees the first one's rows"
        assert set(shown) <= set(stored_rows(app_server))

        # A garbage upload: a clear message in the page, no traceback, and the app goes on.
        garbage = tmp_path / "garbage.safetensors"
        garbage.write_bytes(os.urandom(4096))
        go(second, "Model")
        second.get_by_text("Load your own model or data").click()
        second.locator(".st-key-upload-weights input[type=file]").set_input_files(garbage)
        second.get_by_role("button", name="Load weights").click()
        error = second.locator('[data-testid="stAlertContentError"]')
        expect(error).to_contain_text(f"Could not use {garbage.name}", timeout=60_000)
        expect(second.locator('[data-testid="stException"]')).to_have_count(0)
        expect(second.get_by_text(f"Working on the built-in {DEFAULT_MODEL}.")).to_be_visible()
        uploads = app_server.cache / "runs" / run_of(second) / "uploads"
        assert not (uploads.exists() and any(uploads.iterdir())), "a failed upload left files"
        go(second, "Pareto")
        assert set(plotted_keys(second)) == set(shown)
