"""The Pareto page (AppTest) on a store filled by a real sweep of digits-cnn: the three charts
carry every row as a point, filters hide points, and choosing a row selects it for the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from streamlit.testing.v1 import AppTest

from explorer.sweep.store import ResultStore

ROOT = Path(__file__).resolve().parents[2]
PAGE = str(ROOT / "pages" / "pareto.py")
RUN = "0123456789ab"


def _app(run: str = RUN) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.query_params["run"] = run
    return at


def _charts(at: AppTest) -> dict[str, dict[str, Any]]:
    return {c.key: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


def _points(figure: dict[str, Any], meta: str = "series") -> set[str]:
    return {k for t in figure["data"] if t.get("meta") == meta for k in t.get("customdata") or []}


def _selected(cache: Path, run: str = RUN) -> str | None:
    path = cache / "runs" / run / "run.json"
    return json.loads(path.read_text()).get("selected_row") if path.exists() else None


def test_pareto_page_draws_every_row(swept: dict[str, Any]) -> None:
    at = _app().run()
    assert not at.exception, at.exception
    assert not at.error
    charts = _charts(at)
    assert set(charts) == {
        "pareto.size",
        "pareto.latency",
        "pareto.3d",
        "pareto.formats",
        "pareto.deployed",  # empty here: every row is native
    }
    with ResultStore(swept["store"]) as store:
        stored = store.rows()  # the swept rows, and what-if rows of other page tests
    keys = {row["key"] for row in stored}
    assert {row["key"] for row in swept["rows"].values()} <= keys
    for key in ("pareto.size", "pareto.latency", "pareto.3d"):
        assert _points(charts[key]) == keys
        assert _points(charts[key], "front")  # the front is drawn
    # by storage format: every uniform configuration (not the baselines, not mixed plans)
    uniform = {row["key"] for row in stored if row["kind"] == "uniform"}
    assert _points(charts["pareto.formats"]) == uniform
    size = charts["pareto.size"]
    assert "accuracy" in size["layout"]["yaxis"]["title"]["text"]
    # the page opens on the explained view: the float line in words, points off the front faint
    texts = [a.get("text", "") for a in size["layout"]["annotations"]]
    assert any(t.startswith("float model (fp32): ") for t in texts)
    front = _points(size, "front")
    for trace in (t for t in size["data"] if t.get("meta") == "series"):
        for key, opacity in zip(trace["customdata"], trace["marker"]["opacity"], strict=True):
            assert (opacity == 1) == (key in front)
    latency = charts["pareto.latency"]
    simulated = {row["key"] for row in stored if row["latency_kind"] == "simulated"}
    open_points = {
        k
        for t in latency["data"]
        if t.get("meta") == "series"
        for k, symbol in zip(t["customdata"], t["marker"]["symbol"], strict=True)
        if symbol.endswith("-open")
    }
    assert open_points == simulated
    assert "single workload" in latency["layout"]["xaxis"]["title"]["text"]
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == len(keys)
    assert any("front" in c.value for c in at.caption)


def test_choosing_a_row_selects_it(swept: dict[str, Any]) -> None:
    run = "00000000aaaa"
    row = swept["rows"]["W8 channel sym ptq"]
    at = _app(run).run()
    box = at.selectbox(key="pareto.row")
    assert box.value is None
    box.select(row["key"]).run()
    assert not at.exception, at.exception
    assert _selected(swept["cache"], run) == row["key"]
    charts = _charts(at)
    assert _points(charts["pareto.size"], "selected") == {row["key"]}
    assert at.selectbox(key="pareto.row").value == row["key"]
    assert [m.label for m in at.metric][:2] == ["accuracy", "Size"]
    assert at.metric[1].value == f"{row['size_bytes'] / 1024:,.1f} KiB"
    # a reload of the same run keeps the selection
    again = _app(run).run()
    assert again.selectbox(key="pareto.row").value == row["key"]


def test_open_layers_keeps_the_run_and_its_selection(swept: dict[str, Any]) -> None:
    """In the app's frame: the button lands on the Layers page of the same run (the run id
    stays in the URL) showing the chosen row."""
    run = "00000000cccc"
    row = swept["rows"]["W4 channel sym ptq"]
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    at.query_params["run"] = run
    at.switch_page("pages/pareto.py").run()
    at.selectbox(key="pareto.row").select(row["key"]).run()
    at.button(key="pareto.open").click().run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Layers"]
    assert at.query_params["run"] in (run, [run])
    assert at.selectbox(key="layers.row").value == row["key"]


def test_filters_hide_points(swept: dict[str, Any]) -> None:
    at = _app("00000000bbbb").run()
    at.multiselect(key="pareto.bits").set_value([8]).run()
    assert not at.exception, at.exception
    shown = _points(_charts(at)["pareto.size"])
    rows = swept["rows"]
    assert rows["W4 channel sym ptq"]["key"] not in shown
    assert {rows[label]["key"] for label in ("fp32", "bf16", "W8 channel sym ptq")} <= shown
    # a series that appears later (a new sweep finished) is shown; the hidden bits stay hidden
    mixed = {**rows["W8 channel sym ptq"], "kind": "mixed", "label": "mixed: test"}
    with ResultStore(swept["store"]) as store:
        store.put("f" * 64, mixed, parts={"model_fingerprint": swept["fingerprint"]})
        try:
            at.run()
        finally:
            store.delete("f" * 64)
    shown = _points(_charts(at)["pareto.size"])
    assert "f" * 64 in shown and rows["W4 channel sym ptq"]["key"] not in shown
    assert "mixed (per layer)" in at.multiselect(key="pareto.series").value
    at.multiselect(key="pareto.series").set_value([]).run()
    assert not at.exception
    assert any("No configuration matches" in w.value for w in at.warning)


def test_pareto_page_without_results(swept: dict[str, Any], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EXPLORER_STORE", str(tmp_path / "empty.sqlite"))
    at = _app().run()
    assert not at.exception, at.exception
    assert any("No results for **digits-cnn** yet" in i.value for i in at.info)
    assert not at.get("plotly_chart")
