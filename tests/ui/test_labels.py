"""The words and numbers the pages show (explorer/ui/labels.py): every number in the shared
format, the changes coloured by the right sense, and the pickers' choices valid."""

from __future__ import annotations

import pytest

from explorer.measure.display import MISSING
from explorer.models.catalog import ModelSource
from explorer.plots import LAYER_VALUES, SENSITIVITY_VALUES
from explorer.sweep.sensitivity import setting_config
from explorer.ui.labels import (
    LAYER_CHART_LABELS,
    SENSITIVITY_LABELS,
    SETTING_CHOICES,
    Headline,
    change_headline,
    compare_rows,
    describe_source,
    interval_text,
    model_facts,
    row_headline,
)

W8 = {
    "metric_name": "accuracy",
    "metrics": {"accuracy": 0.981, "sqnr_db": 30.0},
    "size_bytes": 12_800,
    "latency_ms": 0.412,
    "latency_kind": "measured",
    "bits_per_weight": 8.25,
}
W2 = {
    "metric_name": "accuracy",
    "metrics": {"accuracy": 0.115, "sqnr_db": 1.5},
    "size_bytes": 3_328,
    "latency_ms": 0.5,
    "latency_kind": "simulated",
    "bits_per_weight": 2.5,
}


def test_choices_are_settings_and_values_the_figures_draw() -> None:
    for name in SETTING_CHOICES:
        setting_config(name)  # raises on a setting the sensitivity cannot parse
    assert set(LAYER_CHART_LABELS) <= set(LAYER_VALUES)
    assert set(SENSITIVITY_LABELS) <= set(SENSITIVITY_VALUES)


def test_row_headline() -> None:
    assert row_headline(W8, "accuracy", 0.987, "max") == [
        Headline("accuracy", "98.10%", "-0.60 points vs float", False),
        Headline("Size", "12.5 KiB"),
        Headline("Latency", "0.412 ms"),
        Headline("Bits per weight", "8.25"),
    ]
    ppl = row_headline({**W2, "metrics": {"perplexity": 5.5}}, "perplexity", None, "min")
    assert ppl[0] == Headline("perplexity", "5.5", None, True)  # no reference: no change
    assert ppl[2].label == "Latency (simulated)"
    assert row_headline({}, "accuracy", 0.9, "max")[1:] == [
        Headline("Size", MISSING),
        Headline("Latency", MISSING),
        Headline("Bits per weight", MISSING),
    ]


def test_change_headline_and_comparison() -> None:
    change = {h.label: h for h in change_headline(W8, W2, "max")}
    assert change["accuracy"] == Headline("accuracy", "11.50%", "-86.60 points", False)
    assert change["Output SQNR vs float"].delta == "-28.50 dB"
    assert change["Size"] == Headline("Size", "3.2 KiB", "-9.2 KiB", True)
    assert change["Latency (simulated)"].lower_is_better
    table = compare_rows(W8, {**W2, "latency_ms": None})
    assert table[0] == {"": "accuracy", "A": "98.10%", "B": "11.50%", "B − A": "-86.60 points"}
    assert table[-1] == {"": "Latency", "A": "0.412 ms", "B": MISSING, "B − A": MISSING}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (ModelSource(model="digits-cnn"), "built-in **digits-cnn**"),
        (
            ModelSource(model="digits-cnn", weights="w.safetensors", data="d.npz"),
            "built-in architecture **digits-cnn**, uploaded weights, uploaded data",
        ),
        (ModelSource(model="/runs/abc/hf"), "uploaded Hugging Face model"),
    ],
)
def test_describe_source(source: ModelSource, expected: str) -> None:
    assert describe_source(source, ("digits-cnn", "mobile-cnn")) == expected


def test_model_facts_and_intervals() -> None:
    assert (
        model_facts("classification", 46_826, "accuracy", 0.987)
        == "classification · 46,826 parameters · float accuracy 98.70% (from its card)"
    )
    assert model_facts("lm", 7_281_408, "perplexity", None) == "lm · 7,281,408 parameters"
    assert interval_text(-0.004, 0.002, "accuracy") == "[-0.40 points, +0.20 points]"
    assert interval_text(0.01, 0.05, "perplexity") == "[+0.01, +0.05]"
    assert interval_text(30.0, 31.5, "sqnr_db") == "[30.00 dB, 31.50 dB]"  # of the SQNR itself
    assert interval_text(None, 0.1, "accuracy") == ""
