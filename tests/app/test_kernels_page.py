"""The Kernels page (AppTest): it shows the machine, runs a tiny real benchmark when asked and
charts every kernel's speed against fp32."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "kernels.py")
RUN = "0123456789ab"

pytestmark = pytest.mark.usefixtures("app_env")


def _app() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.query_params["run"] = RUN
    return at


def _submit(at: AppTest) -> AppTest:
    return next(b for b in at.get("form_submit_button") if "Run" in b.label).click().run()


def test_kernels_page_waits_for_a_click() -> None:
    at = _app().run()
    assert not at.exception, at.exception
    assert not at.error
    labels = {m.label for m in at.metric}
    assert {"CPU", "Threads", "PyTorch CPU capability", "Native int kernels"} <= labels
    assert any("machine-wide lock" in c.value for c in at.caption)
    assert not at.get("plotly_chart")
    assert at.number_input(key="kernels.k").value == 512


def test_kernels_page_runs_a_tiny_benchmark() -> None:
    at = _app().run()
    at.multiselect(key="kernels.m").set_value([1])
    at.number_input(key="kernels.k").set_value(256)
    at.number_input(key="kernels.n").set_value(256)
    at.slider(key="kernels.repeats").set_value(3)
    at = _submit(at)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.status and at.status[0].label.startswith("Benchmark done")
    figure = json.loads(next(c for c in at.get("plotly_chart")).proto.spec)
    names = {t["name"] for t in figure["data"] if t.get("meta") == "series"}
    assert {"fp32", "bf16"} <= names
    assert len(names) >= 3  # at least one integer kernel besides the float baselines
    table = at.dataframe[0].value
    assert set(table["M"]) == {1} and set(table["K"]) == {256} and set(table["N"]) == {256}
    fp32 = table[table["kernel"] == "fp32"]
    assert list(fp32["× fp32"]) == [1.0]
    assert (table["ms (median)"] > 0).all()
    # the result stays when another widget reruns the page
    at.slider(key="kernels.repeats").set_value(5).run()
    assert at.get("plotly_chart")


def test_kernels_page_refuses_shapes_that_do_not_tile() -> None:
    at = _app().run()
    at.number_input(key="kernels.k").set_value(300)
    at = _submit(at)
    assert not at.exception, at.exception
    assert any("multiples of 128" in e.value for e in at.error)
    assert not at.get("plotly_chart")
