"""The Layers page (AppTest) on a store filled by a real sweep of digits-cnn: the per-layer table
of the selected row, a what-if edit that evaluates and stores one new row (and finds it in the
store the second time), a what-if that cannot apply, the sensitivity heat map measured on demand
and cached, and two configurations compared."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from streamlit.testing.v1 import AppTest

from explorer.kernels import native
from explorer.measure.readrate import byte_time
from explorer.quant.config import Plan
from explorer.sweep.store import ResultStore
from explorer.ui import state
from explorer.ui.tables import BYTE_TIME_COLUMNS

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "layers.py")
W8 = "W8 channel sym ptq"


def _app(run: str, selected: str | None = None) -> AppTest:
    if selected is not None:
        state.save_run_settings({state.SELECTED_ROW: selected}, run)
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.query_params["run"] = run
    return at


def _charts(at: AppTest) -> dict[str, dict[str, Any]]:
    return {c.key: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


def _table(at: AppTest, column: str) -> Any:
    """The first table with ``column`` (tables without selection carry no key in AppTest)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def _statuses(at: AppTest) -> list[str]:
    return [s.label for s in at.status]


def _whatif(swept: dict[str, Any], run: str, layer: str, setting: str) -> tuple[AppTest, set[str]]:
    """The page of ``run`` on the W8 row after asking to re-evaluate it with ``layer`` at
    ``setting``, and the store's keys before."""
    with ResultStore(swept["store"]) as store:
        before = store.keys()
    at = _app(run, swept["rows"][W8]["key"]).run()
    at.selectbox(key="layers.whatif.layer").select(layer)
    at.selectbox(key="layers.whatif.setting").select(setting)
    at.button(key="layers.whatif.run").click().run()
    assert not at.exception, at.exception
    return at, before


def test_layers_page_shows_the_selected_row(swept: dict[str, Any]) -> None:
    row = swept["rows"][W8]
    at = _app("11111111aaaa", row["key"]).run()
    assert not at.exception, at.exception
    assert not at.error
    assert at.selectbox(key="layers.row").value == row["key"]
    table = _table(at, "share of latency")
    assert list(table["layer"]) == [lay["name"] for lay in row["layers"]]
    assert list(table["kernel"]) == [lay["kernel"] for lay in row["layers"]]
    assert list(table["setting"]) == [W8] * 4
    assert list(table["bytes"]) == [lay["bytes"] for lay in row["layers"]]
    # each layer's measured time next to what its bytes take at the row's own read rate
    assert row["latency_kind"] == "measured" and row["read_rate"]["bytes_per_s"] > 0
    assert list(table.columns[-5:]) == list(BYTE_TIME_COLUMNS)
    expected = [byte_time(lay, row["read_rate"]["bytes_per_s"]) for lay in row["layers"]]
    assert list(table["ms per call"]) == [lay["latency_ms"] for lay in row["layers"]]
    assert list(table["ms predicted from bytes"]) == [e["predicted_ms"] for e in expected]
    assert list(table["verdict"]) == [e["verdict"] for e in expected]
    assert all(table["verdict"])
    rate_gbps = f"**{row['read_rate']['bytes_per_s'] / 1e9:.1f} GB/s**"
    assert any("Why is a layer slower" in c.value and rate_gbps in c.value for c in at.caption)
    charts = _charts(at)
    assert {"layers.figure", "layers.compare.figure"} <= set(charts)
    bars = {x for t in charts["layers.figure"]["data"] for x in t.get("x") or [] if x}
    assert bars == {lay["name"] for lay in row["layers"]}
    assert at.metric[1].value == f"{row['size_bytes'] / 1024:,.1f} KiB"
    # the instruction-set path and build our kernels ran on (also in the row's key)
    assert row["isa"] == native.build_info().get("isa")
    if row["isa"]:
        assert any(f"**{row['isa']}**" in c.value for c in at.caption)
    # choosing another row selects it for the run
    w4 = swept["rows"]["W4 channel sym ptq"]
    at.selectbox(key="layers.row").select(w4["key"]).run()
    assert not at.exception
    assert state.run_settings("11111111aaaa")[state.SELECTED_ROW] == w4["key"]
    # the simulated-latency note shows exactly when the row's latency is simulated (W4 per
    # channel of digits-cnn was, until int4 kernels took its 16-column first layer)
    simulated = w4["latency_kind"] == "simulated"
    assert any("Simulated latency" in c.value for c in at.caption) == simulated


def test_whatif_evaluates_one_new_row_then_reuses_it(swept: dict[str, Any]) -> None:
    at, before = _whatif(swept, "11111111bbbb", "features.3", "W4 g32")
    assert not at.error, [e.value for e in at.error]
    with ResultStore(swept["store"]) as store:
        after = store.keys()
        (new_key,) = after - before
        new = store.get(new_key)
    plan = Plan.from_dict(new["config"])
    assert plan.rules[0][0] == "features.3" and plan.rules[0][1].group_size == 32
    layers = {lay["name"]: lay for lay in new["layers"]}
    assert layers["features.3"]["config"] == plan.rules[0][1].name == "W4 group32 sym ptq"
    assert layers["features.5"]["config"] == W8
    changes = _table(at, "changed")
    assert list(changes.loc[changes["changed"], "layer"]) == ["features.3"]
    size = next(m for m in at.metric if m.label == "Size" and m.delta)
    assert size.value == f"{new['size_bytes'] / 1024:,.1f} KiB"
    assert size.delta.startswith("-")
    assert "Evaluated and stored" in _statuses(at)

    at.button(key="layers.whatif.run").click().run()  # the same edit again: from the store
    assert not at.exception
    assert "Found in the store" in _statuses(at)
    with ResultStore(swept["store"]) as store:
        assert store.keys() == after

    at.button(key="layers.whatif.select").click().run()
    assert not at.exception
    assert state.run_settings("11111111bbbb")[state.SELECTED_ROW] == new_key
    assert at.selectbox(key="layers.row").value == new_key


def test_whatif_that_cannot_apply_shows_why(swept: dict[str, Any]) -> None:
    at, before = _whatif(swept, "11111111cccc", "features.1", "W4 g32")
    assert any("group size 32 does not divide in_features 16" in e.value for e in at.error)
    at.selectbox(key="layers.whatif.setting").select("W8 channel")
    at.button(key="layers.whatif.run").click().run()
    assert any("already runs at W8 channel" in e.value for e in at.error)
    with ResultStore(swept["store"]) as store:
        assert store.keys() == before


def test_sensitivity_heat_map_on_demand(swept: dict[str, Any]) -> None:
    run = "11111111dddd"
    at = _app(run, swept["rows"][W8]["key"]).run()
    assert "layers.heatmap" not in _charts(at)
    at.multiselect(key="layers.sens.settings").set_value(["W8 channel", "W4 g32", "fp32"])
    at.select_slider(key="layers.sens.samples").set_value(64)
    at.run()
    at.button(key="layers.sens.run").click().run()
    assert not at.exception, at.exception
    heat = _charts(at)["layers.heatmap"]["data"][0]
    assert heat["x"] == ["W8 channel", "W4 g32", "fp32"]
    assert heat["y"] == ["features.1", "features.3", "features.5", "classifier.2"]
    assert heat["z"][0][1] is None  # W4 g32 does not fit features.1's 16 inputs
    assert len(list((swept["cache"] / "runs" / run / "sensitivity").glob("*.json"))) == 1
    again = _app(run).run()  # a new session: cached, drawn without pressing the button
    assert "layers.heatmap" not in _charts(again)  # (not for the default settings)
    again.multiselect(key="layers.sens.settings").set_value(["W8 channel", "W4 g32", "fp32"])
    again.select_slider(key="layers.sens.samples").set_value(64).run()
    assert _charts(again)["layers.heatmap"]["data"][0]["z"] == heat["z"]


def test_two_configurations_compared(swept: dict[str, Any]) -> None:
    rows = swept["rows"]
    at = _app("11111111eeee", rows[W8]["key"]).run()
    at.selectbox(key="layers.compare.b").select(rows["W4 channel sym ptq"]["key"]).run()
    assert not at.exception, at.exception
    table = _table(at, "B − A")
    assert list(table["A"])[2] == f"{rows[W8]['size_bytes'] / 1024:,.1f} KiB"
    figure = _charts(at)["layers.compare.figure"]
    assert [t["name"] for t in figure["data"] if t.get("meta") == "series"] == [
        W8,
        "W4 channel sym ptq",
    ]
