"""The PTQ algorithms in the app (AppTest), from one real sweep of digits-cnn that the Sweep page
starts: W4 per channel by round-to-nearest, GPTQ and AWQ, and QAT for a few steps.

- the Sweep page: the algorithm dimension builds the sweep (QAT × GPTQ/AWQ is skipped with its
  reason), the rows record their algorithm, and the results table shows each PTQ row's
  calibration seconds next to the QAT row's training seconds;
- the Pareto page: each algorithm is a series of its own, labelled, with the algorithm and its
  cost in the hover text of every point;
- the Layers page: the what-if editor puts GPTQ on one layer; the new row records it per layer,
  and a trained (QAT) configuration refuses it with a reason.

digits-cnn's one linear layer (``classifier.2``) is where GPTQ and AWQ apply; its convolutions
fall back to round-to-nearest (said on the row), which keeps this sweep to seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from explorer.inspect import calibration_seconds
from explorer.models import catalog
from explorer.models.registry import get_builtin
from explorer.nn.qat import QAT_SCHEDULE
from explorer.sweep.store import ResultStore
from explorer.ui import state

ROOT = Path(__file__).resolve().parents[2]
RUN = "a1a1a1a1a1a1"
SWEEP_S = 180
QAT_STEPS = 20
QAT_LR = 5e-4
LABELS = {
    "rtn": "W4 channel sym ptq",
    "gptq": "W4 channel sym gptq ptq",
    "awq": "W4 channel sym awq ptq",
    "qat": f"W4 channel sym qat ({QAT_STEPS} steps)",
}


def _page(name: str, run: str = RUN) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=180)
    at.query_params["run"] = run
    return at


def _frame(at: AppTest, column: str) -> Any:
    return next(d.value for d in at.dataframe if column in d.value.columns)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The Sweep page after choosing W4 per channel, PTQ and QAT, RTN, GPTQ and AWQ and cheap
    run settings, pressing Run and polling until the worker finished; and the stored rows."""
    base = tmp_path_factory.mktemp("algorithms")
    cache, store = base / "cache", base / "results.sqlite"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPLORER_CACHE", str(cache))
        mp.setenv("EXPLORER_STORE", str(store))
        mp.setattr(state, "CACHE_DIR", cache)
        mp.setattr(catalog, "DEFAULT_MODEL", "digits-cnn")  # as conftest.py's fixtures do
        mp.setattr(state, "DEFAULT_MODEL", "digits-cnn")
        at = _page("sweep").run()
        at.multiselect(key="spec.bits").set_value([4])
        at.multiselect(key="spec.method").set_value(["ptq", "qat"])
        at.multiselect(key="spec.algorithm").set_value(["rtn", "gptq", "awq"]).run()
        at.number_input(key="spec.qat_steps").set_value(QAT_STEPS)  # enabled once QAT is chosen
        at.number_input(key="spec.qat_lr").set_value(QAT_LR)
        at.number_input(key="run.repeats").set_value(3)
        at.number_input(key="run.n_boot").set_value(200)
        at.run()
        assert not at.exception, at.exception
        planned = [c.value for c in at.caption if "plus the fp32 and bf16" in c.value]
        skipped = [e.label for e in at.expander if "will be skipped" in e.label]
        at.button(key="sweep.run").click().run()
        assert not at.exception, at.exception
        job = state.job(RUN)
        try:
            deadline = time.monotonic() + SWEEP_S
            while not (job is not None and job.finished):
                assert time.monotonic() < deadline, f"the sweep took over {SWEEP_S} s"
                time.sleep(1.5)
                at.run()
                assert not at.exception, at.exception
            at.run()  # the page as drawn after the sweep
            with ResultStore(store) as results:
                rows = {r["label"]: r for r in results.rows()}
            yield {
                "at": at,
                "job": job,
                "planned": planned,
                "skipped": skipped,
                "rows": rows,
                "store": store,
            }
        finally:
            running = state.jobs_by_run().pop(RUN, None)
            if running is not None:
                running.terminate()


def test_sweep_page_sweeps_the_algorithm_dimension(swept: dict[str, Any]) -> None:
    at, rows = swept["at"], swept["rows"]
    assert swept["job"].spec.algorithm == ("rtn", "gptq", "awq")
    assert swept["planned"] and swept["planned"][0].startswith("4 configurations")
    assert swept["skipped"] == ["2 combination(s) will be skipped"]  # QAT × GPTQ, QAT × AWQ
    assert any("Sweep finished: 6 of 6 rows" in s.value for s in at.success)
    assert set(rows) == {"fp32", "bf16", *LABELS.values()}
    for algorithm in ("rtn", "gptq", "awq"):
        row = rows[LABELS[algorithm]]
        assert (row["method"], row["algorithm"]) == ("ptq", algorithm)
        assert row["algorithms"] == ({"rtn": 4} if algorithm == "rtn" else {"rtn": 3, algorithm: 1})
        head = next(lay for lay in row["layers"] if lay["name"] == "classifier.2")
        assert head["algorithm"] == algorithm
    assert (rows[LABELS["qat"]]["method"], rows[LABELS["qat"]]["algorithm"]) == ("qat", "rtn")
    # the rate typed in, the model's default batch, and the schedule: what training used
    qat = rows[LABELS["qat"]]
    assert (qat["qat_lr"], qat["qat_batch"]) == (QAT_LR, get_builtin("digits-cnn").qat_batch)
    assert qat["qat_schedule"] == QAT_SCHEDULE
    assert rows[LABELS["rtn"]]["qat_lr"] is None and rows[LABELS["rtn"]]["qat_schedule"] is None
    # GPTQ and AWQ change the one linear layer's weights: other numbers than round-to-nearest
    assert rows[LABELS["gptq"]]["metrics"] != rows[LABELS["rtn"]]["metrics"]

    frame = _frame(at, "configuration").set_index("configuration")
    assert list(frame.columns[frame.columns.get_loc("algorithm") :][:3]) == [
        "algorithm",
        "calibration s",
        "QAT training s",
    ]
    for label, row in rows.items():
        seconds, shown = row["seconds"], frame.loc[label]
        algorithm = None if pd.isna(shown["algorithm"]) else shown["algorithm"]
        assert algorithm == row["algorithm"]  # None for the baselines
        if label == LABELS["qat"]:
            assert shown["QAT training s"] == pytest.approx(seconds["qat"]) and seconds["qat"] > 0
            assert pd.isna(shown["calibration s"])
        elif row["kind"] == "baseline":
            assert pd.isna(shown["calibration s"]) and pd.isna(shown["QAT training s"])
        else:
            assert shown["calibration s"] == pytest.approx(calibration_seconds(row))
            assert pd.isna(shown["QAT training s"])
    for algorithm in ("gptq", "awq"):
        assert frame.loc[LABELS[algorithm], "calibration s"] > 0
        assert rows[LABELS[algorithm]]["seconds"]["algorithm"] > 0
    # AWQ ran after GPTQ and reused its input statistics: counted at what they cost there
    assert rows[LABELS["awq"]]["seconds"]["statistics_reused"] > 0
    assert rows[LABELS["gptq"]]["seconds"]["statistics_reused"] == 0


def test_pareto_page_draws_each_algorithm_as_a_labelled_series(swept: dict[str, Any]) -> None:
    rows = swept["rows"]
    at = _page("pareto").run()
    assert not at.exception, at.exception
    assert at.multiselect(key="pareto.series").value == [
        "fp32/bf16 baseline",
        "PTQ · RTN",
        "PTQ · GPTQ",
        "PTQ · AWQ",
        "QAT",
    ]
    charts = {c.key: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    for key in ("pareto.size", "pareto.latency", "pareto.3d"):
        series = {t["name"]: t for t in charts[key]["data"] if t.get("meta") == "series"}
        assert list(series) == at.multiselect(key="pareto.series").value
        for algorithm, name in (("rtn", "PTQ · RTN"), ("gptq", "PTQ · GPTQ"), ("awq", "PTQ · AWQ")):
            row = rows[LABELS[algorithm]]
            assert series[name]["customdata"] == [row["key"]]
            hover = series[name]["hovertext"][0]
            assert f"— {name}" in hover
            cost = f"calibration {calibration_seconds(row):.1f} s"
            assert f"PTQ, {name.split(' · ')[1]} · {cost}" in hover
        qat = rows[LABELS["qat"]]
        assert series["QAT"]["customdata"] == [qat["key"]]
        training = f"training {qat['seconds']['qat']:.1f} s"
        assert f"QAT from RTN: {QAT_STEPS} steps · {training}" in series["QAT"]["hovertext"][0]
        assert set(series["fp32/bf16 baseline"]["customdata"]) == {
            rows["fp32"]["key"],
            rows["bf16"]["key"],
        }
    # by storage format: the four ways to W4 per channel side by side in one column
    formats = {t["name"]: t for t in charts["pareto.formats"]["data"] if t.get("meta") == "series"}
    assert list(formats) == ["PTQ · RTN", "PTQ · GPTQ", "PTQ · AWQ", "QAT"]
    assert all(t["x"] == ["W4 channel"] for t in formats.values())
    assert charts["pareto.formats"]["layout"]["scattermode"] == "group"
    size = charts["pareto.size"]
    assert [t["text"] for t in size["data"] if t.get("name") == "fp32/bf16 baseline"] == [
        ["fp32", "bf16"]
    ]
    table = _frame(at, "calibrate_s").set_index("label")
    assert table.loc[LABELS["gptq"], "algorithm"] == "gptq"
    assert table.loc[LABELS["qat"], "train_s"] == pytest.approx(
        rows[LABELS["qat"]]["seconds"]["qat"]
    )
    # hiding a series hides its points
    at.multiselect(key="pareto.series").set_value(["PTQ · RTN", "PTQ · GPTQ"]).run()
    shown = {
        t["name"]
        for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
        if t.get("meta") == "series"
    }
    assert shown == {"PTQ · RTN", "PTQ · GPTQ"}


def test_layers_page_whatif_puts_gptq_on_one_layer(swept: dict[str, Any]) -> None:
    run = "a1a1a1a1b2b2"
    rtn = swept["rows"][LABELS["rtn"]]
    state.save_run_settings({state.SELECTED_ROW: rtn["key"]}, run)
    at = _page("layers", run).run()
    assert not at.exception, at.exception
    assert list(_frame(at, "share of latency")["algorithm"]) == ["rtn"] * 4
    at.selectbox(key="layers.whatif.layer").select("classifier.2")
    at.selectbox(key="layers.whatif.setting").select("W4 g32 gptq")
    at.button(key="layers.whatif.run").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    with ResultStore(swept["store"]) as store:
        (new,) = [r for r in store.rows() if r["label"].startswith("mixed: classifier.2=")]
    assert new["label"] == "mixed: classifier.2=W4 group32 sym gptq ptq; rest=W4 channel sym ptq"
    assert new["algorithms"] == {"gptq": 1, "rtn": 3}
    layers = {lay["name"]: lay for lay in new["layers"]}
    assert layers["classifier.2"]["algorithm"] == "gptq"
    assert {layers[n]["algorithm"] for n in ("features.1", "features.3", "features.5")} == {"rtn"}
    calibrate = calibration_seconds(new)
    caption = f"Layers by PTQ algorithm: gptq ×1, rtn ×3; calibration took {calibrate:.1f} s."
    assert caption in [c.value for c in at.caption]
    changes = _frame(at, "changed")
    assert list(changes.loc[changes["changed"], "config after"]) == ["W4 group32 sym gptq ptq"]

    at.button(key="layers.whatif.select").click().run()  # show the new row: its layer table
    assert not at.exception, at.exception
    table = _frame(at, "share of latency").set_index("layer")
    assert table.loc["classifier.2", "algorithm"] == "gptq"

    # the new row on the Pareto page: a mixed plan whose hover counts its algorithms
    pareto = _page("pareto", run).run()
    size = json.loads(pareto.get("plotly_chart")[0].proto.spec)
    (mixed,) = [t for t in size["data"] if t.get("name") == "mixed (per layer)"]
    assert mixed["customdata"] == [new["key"]]
    assert f"mixed plan: GPTQ ×1, RTN ×3 · calibration {calibrate:.1f} s" in mixed["hovertext"][0]

    # a trained configuration keeps QAT's round-to-nearest start: GPTQ is refused, with why
    state.save_run_settings({state.SELECTED_ROW: swept["rows"][LABELS["qat"]]["key"]}, run)
    at = _page("layers", run).run()
    at.selectbox(key="layers.whatif.layer").select("classifier.2")
    at.selectbox(key="layers.whatif.setting").select("W4 g32 gptq")
    at.button(key="layers.whatif.run").click().run()
    assert not at.exception, at.exception
    assert any("QAT starts from round-to-nearest" in e.value for e in at.error)
