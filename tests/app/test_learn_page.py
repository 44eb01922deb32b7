"""The Learn page (AppTest) on digits-cnn: from the widgets to the numbers the page shows, checked
against `explorer.lesson` called directly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from explorer.lesson import compare_granularities, kernel_options, layer_weights, lesson
from explorer.measure.display import format_metric
from explorer.quant.config import QuantConfig
from explorer.sweep.context import ModelSource, open_context

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "learn.py")
RUN = "0123456789ab"

pytestmark = pytest.mark.usefixtures("app_env")


@pytest.fixture(scope="module")
def ctx():
    return open_context(ModelSource(model="digits-cnn"))


def _app() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.query_params["run"] = RUN
    return at


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _table(at: AppTest, column: str) -> Any:
    """The page's table that has ``column`` (AppTest does not keep a dataframe's key)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def _figure(at: AppTest, key: str) -> dict[str, Any]:
    return next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if c.key == key)


def test_learn_page_shows_the_default_lesson(ctx) -> None:
    at = _app().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    layer_box = at.selectbox(key="learn.layer")
    assert len(layer_box.options) == 4
    assert layer_box.value == "features.5"  # the largest layer (128 x 256 weights) first
    weight = layer_weights(ctx, "features.5")
    expected = lesson(weight, 4, "channel", name="features.5")
    metrics = _metrics(at)
    assert metrics["Levels"] == "16"
    assert metrics["Scale (step)"] == f"{expected['scale']:.3g}"
    assert metrics["SQNR, whole layer"] == format_metric("sqnr_db", expected["sqnr_db"])
    assert metrics["Weights clipped"] == "0.000 %"
    figure = _figure(at, "learn.histogram")
    assert figure["layout"]["title"]["text"] == expected["title"]
    grid_lines = [s for s in figure["layout"]["shapes"] if s.get("name") == "grid"]
    assert len(grid_lines) == 16
    table = _table(at, "granularity")
    assert list(table["granularity"]) == ["tensor", "channel", "group32", "group128"]
    rows = compare_granularities(weight, 4)
    assert list(table["bytes"]) == [r["bytes"] for r in rows]
    assert list(table["SQNR (dB)"]) == [r["sqnr_db"] for r in rows]
    # fake quantization against the layer's default real kernel
    options = kernel_options(ctx, "features.5", QuantConfig(weight_bits=4))
    assert metrics["Kernel"] == options[0]
    assert float(metrics["relative difference"]) < 1e-3
    assert not at.info

    # 5 bits has no real kernel (2 and 3 bits do now): the page says the layer runs the reference
    at.select_slider(key="learn.bits").set_value(5).run()
    assert not at.exception, at.exception
    assert _metrics(at)["Kernel"] == "reference"
    assert any("no real kernel" in i.value for i in at.info)


def test_learn_page_follows_its_widgets(ctx) -> None:
    at = _app().run()
    at.selectbox(key="learn.layer").set_value("classifier.2")
    at.select_slider(key="learn.bits").set_value(8)
    at.selectbox(key="learn.acts").set_value("W8A8, dynamic per-token activations")
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    metrics = _metrics(at)
    assert metrics["Levels"] == "256"
    assert metrics["Kernel"].startswith("int8-w8a8")
    assert float(metrics["relative difference"]) < 1e-3
    table = _table(at, "granularity")
    assert list(table["granularity"]) == ["tensor", "channel", "group32", "group128"]
    fake = _table(at, "SQNR vs float (dB)")
    fake_db, real_db = fake["SQNR vs float (dB)"]
    assert abs(fake_db - real_db) < 0.5 and real_db > 35

    # per-group: the histogram shows one group on its own grid
    at.radio(key="learn.granularity").set_value("group").run()
    at.number_input(key="learn.channel").set_value(2)
    at.number_input(key="learn.group").set_value(3).run()
    assert not at.exception, at.exception
    figure = _figure(at, "learn.histogram")
    assert figure["layout"]["title"]["text"].startswith("classifier.2 · channel 2, group 3")

    # percentile calibration on a per-tensor grid clips a few weights of features.3
    at.selectbox(key="learn.layer").set_value("features.3")
    at.radio(key="learn.granularity").set_value("tensor")
    at.selectbox(key="learn.calibration").set_value("percentile").run()
    assert not at.exception, at.exception
    expected = lesson(layer_weights(ctx, "features.3"), 8, "tensor", calibration="percentile")
    assert expected["clipped_share"] > 0
    assert _metrics(at)["Weights clipped"] == f"{100 * expected['clipped_share']:.3f} %"


def test_learn_page_explains_impossible_settings() -> None:
    at = _app().run()
    at.selectbox(key="learn.layer").set_value("features.1")
    at.radio(key="learn.granularity").set_value("group").run()  # features.1 has 16 inputs
    assert not at.exception, at.exception
    assert any("No group size" in e.value and "16 inputs" in e.value for e in at.error)
