"""The Export page (AppTest) on a store filled by a real sweep of digits-cnn: it offers every
download for the selected row, and the weights it offers reload to the model the row measured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from streamlit.testing.v1 import AppTest

from explorer.bundle import build_row_model
from explorer.quant.config import Plan, QuantConfig
from explorer.sweep.context import ModelSource, open_context
from explorer.sweep.export import WEIGHTS_FILE, load_export
from explorer.sweep.runner import RunSettings, run_sweep
from explorer.sweep.space import baselines, entry_for_plan
from explorer.sweep.store import ResultStore
from explorer.ui import state

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "export.py")
RUN = "0123456789ab"
FAST = RunSettings(repeats=3, n_boot=200)
W8A8 = Plan.uniform(QuantConfig(weight_bits=8, act_bits=8))
DOWNLOADS = {
    "export.plan",
    "export.weights",
    "export.zip",
    "export.snippet",
    "export.pareto",
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A store holding a real sweep of digits-cnn (fp32 and W8A8), shared by the tests (in
    place of the one in conftest)."""
    base = tmp_path_factory.mktemp("export-page")
    store_path = base / "results.sqlite"
    ctx = open_context(ModelSource(model="digits-cnn"))
    entries = [baselines()[0], entry_for_plan(W8A8)]
    with ResultStore(store_path) as store:
        events = list(run_sweep(ctx, entries, store, settings=FAST, owner=""))
    rows = {e.row["label"]: e.row for e in events if e.kind in ("row", "cached")}
    assert len(rows) == 2
    return {"ctx": ctx, "rows": rows, "store": store_path}


@pytest.fixture
def cache(swept: dict[str, Any], app_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EXPLORER_STORE", str(swept["store"]))
    return app_env["cache"]


def _app() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.query_params["run"] = RUN
    return at


def _downloads(at: AppTest) -> dict[str, str]:
    return {b.key: b.label for b in at.get("download_button")}


def _selected(cache: Path) -> str | None:
    path = cache / "runs" / RUN / "run.json"
    return json.loads(path.read_text()).get("selected_row") if path.exists() else None


def test_export_page_offers_every_download(swept: dict[str, Any], cache: Path) -> None:
    at = _app().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    row = swept["rows"][W8A8.default.name]
    assert at.selectbox(key="export.row").value == row["key"]  # the last quantized row
    downloads = _downloads(at)
    assert set(downloads) == DOWNLOADS
    assert "safetensors" in downloads["export.weights"]
    assert "HTML" in downloads["export.pareto"]
    assert any("camera button" in c.value for c in at.caption)
    snippet = at.code[0].value
    assert "MODEL_REF = {'model': 'digits-cnn'}" in snippet and "load_export" in snippet
    compile(snippet, "reapply.py", "exec")

    # the weights the page offers reload, on their own, to the model the row measured
    files = at.session_state["export.bundles"][row["key"]]
    download = cache.parent / "download" / WEIGHTS_FILE
    download.parent.mkdir()
    download.write_bytes(files[WEIGHTS_FILE])
    ctx = swept["ctx"]
    loaded = load_export(ctx.model, download)
    built = build_row_model(ctx, row)
    x = ctx.eval_split[0][:64]
    with torch.no_grad():
        assert torch.equal(loaded(x), built(x))
    plan_doc = json.loads(files["plan.json"])
    assert plan_doc["plan"] == row["config"]
    assert {name: layer["kernel"] for name, layer in plan_doc["layers"].items()} == row["kernels"]


def test_export_page_follows_the_selected_row(swept: dict[str, Any], cache: Path) -> None:
    fp32 = swept["rows"]["fp32"]
    w8a8 = swept["rows"][W8A8.default.name]
    state.save_run_settings({"selected_row": fp32["key"]}, RUN)
    at = _app().run()
    assert not at.exception, at.exception
    assert at.selectbox(key="export.row").value == fp32["key"]
    assert set(_downloads(at)) == DOWNLOADS  # the float model exports too
    assert _downloads(at)["export.weights"].startswith("Download the weights of `fp32` (")
    at.selectbox(key="export.row").set_value(w8a8["key"]).run()
    assert not at.exception, at.exception
    assert _selected(cache) == w8a8["key"]
    # the weights button names its row (a browser test waits for it: the previous row's button
    # stays on the page, serving the previous row's weights, until the new export is built)
    weights = _downloads(at)["export.weights"]
    assert weights.startswith(f"Download the weights of `{w8a8['label']}` (")
    assert set(at.session_state["export.bundles"]) == {fp32["key"], w8a8["key"]}


def test_export_page_without_results_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXPLORER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EXPLORER_STORE", str(tmp_path / "empty.sqlite"))
    monkeypatch.setattr(state, "CACHE_DIR", tmp_path / "cache")
    at = _app().run()
    assert not at.exception, at.exception
    assert any("No results for this model yet" in i.value for i in at.info)
    assert not at.get("download_button")
