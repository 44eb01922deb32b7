"""What-if edits on digits-cnn: a new plan changes exactly one layer's resolution whatever rules
the old plan had, the edited row is evaluated once and then found in the store, and the cached
sensitivity table is measured once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import explorer.whatif as whatif
from explorer.errors import ExplorerError
from explorer.nn.convert import resolve_plan
from explorer.quant.config import Plan, QuantConfig
from explorer.sweep.context import ModelContext, ModelSource, open_context
from explorer.sweep.runner import RunSettings, run_sweep
from explorer.sweep.sensitivity import setting_config
from explorer.sweep.space import entry_for_plan
from explorer.sweep.store import ResultStore
from explorer.whatif import (
    evaluate_whatif,
    headline_deltas,
    layer_changes,
    load_or_measure_sensitivity,
    settings_for_row,
    whatif_plan,
)

FAST = RunSettings(repeats=3, n_boot=200)
LAYERS = ("features.1", "features.3", "features.5", "classifier.2")
SETTINGS = ("W8 channel", "W4 g32", "W4 g128", "W3 tensor asym", "fp32", "bf16")
W8 = QuantConfig(weight_bits=8)
W4G32 = QuantConfig(weight_bits=4, granularity="group", group_size=32)

PLANS = {
    "uniform": Plan.uniform(W8),
    "uniform g32 with fallbacks": Plan.uniform(W4G32),
    "fp32": Plan.uniform(None),
    "glob": Plan(default=None, rules=(("features.*", W4G32), ("classifier.*", W8))),
    "mixed": Plan(default=W8, rules=(("features.3", W4G32), ("features.[15]", None))),
}


@pytest.fixture(scope="module")
def ctx() -> ModelContext:
    return open_context(ModelSource(model="digits-cnn"))


@pytest.fixture(scope="module")
def stored(ctx: ModelContext, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A store holding one swept row (uniform W8 per-channel) of digits-cnn."""
    path = tmp_path_factory.mktemp("whatif") / "rows.sqlite"
    with ResultStore(path) as store:
        events = list(run_sweep(ctx, [entry_for_plan(Plan.uniform(W8))], store, settings=FAST))
    (row,) = [e.row for e in events if e.kind == "row"]
    return path, row


def _configs(ctx: ModelContext, plan: Plan) -> dict[str, QuantConfig | None]:
    return {n: a.config for n, a in resolve_plan(ctx.folded, plan).items()}


@pytest.mark.parametrize("name", list(PLANS))
def test_whatif_plan_changes_exactly_one_layer(ctx: ModelContext, name: str) -> None:
    plan = PLANS[name]
    before = _configs(ctx, plan)
    for layer in LAYERS:
        for setting in SETTINGS:
            wanted = setting_config(setting)
            new = whatif_plan(plan, layer, setting, layers=LAYERS)
            if wanted is not None and wanted.group_size and 16 % wanted.group_size:
                if layer == "features.1":  # in_features 16: an explicit g32/g128 cannot apply
                    with pytest.raises(ExplorerError, match="does not divide in_features 16"):
                        resolve_plan(ctx.folded, new)
                    continue
            after = _configs(ctx, new)
            changed = [n for n in LAYERS if before[n] != after[n]]
            assert after[layer] == wanted, (name, layer, setting)
            assert changed == ([] if before[layer] == wanted else [layer]), (name, layer, setting)
            assert new.rules[0] == (layer, wanted)
            assert [p for p, _ in new.rules].count(layer) == 1
            assert new.default == plan.default and new.fallback == plan.fallback


def test_whatif_plan_replaces_an_explicit_rule_and_keeps_the_others() -> None:
    plan = PLANS["mixed"]
    new = whatif_plan(plan, "features.3", "bf16")
    assert new.rules == (("features.3", QuantConfig.float("bf16")), ("features.[15]", None))
    again = whatif_plan(new, "classifier.2", "W4 g128")
    assert [p for p, _ in again.rules] == ["classifier.2", "features.3", "features.[15]"]


def test_whatif_plan_keeps_a_trained_layer_trained() -> None:
    plan = Plan.uniform(W8.with_(method="qat"))
    new = whatif_plan(plan, "features.3", "W4 g32")
    assert new.rules[0][1] == W4G32.with_(method="qat")
    assert whatif_plan(plan, "features.3", "fp32").rules[0] == ("features.3", None)
    with pytest.raises(ExplorerError, match="QAT starts from round-to-nearest: gptq is a post"):
        whatif_plan(plan, "classifier.2", "W4 g32 gptq")


def test_whatif_plan_sets_a_ptq_algorithm_on_one_layer() -> None:
    plan = Plan.uniform(W8)
    new = whatif_plan(plan, "classifier.2", "W4 g32 awq")
    assert new.rules == (("classifier.2", W4G32.with_(algorithm="awq")),)
    assert new.default == W8


@pytest.mark.parametrize(
    ("layer", "setting", "message"),
    [
        ("features.9", "W8 channel", "no quantizable layer named 'features.9'"),
        ("features.*", "W8 channel", "not a pattern"),
        ("", "W8 channel", "name the layer"),
        ("features.3", "W9 channel", "setting 'W9 channel'"),
        ("features.3", "banana", "setting 'banana'"),
        ("features.3", "W4 g33x", "setting 'W4 g33x'"),
    ],
)
def test_whatif_plan_refuses_bad_names(layer: str, setting: str, message: str) -> None:
    with pytest.raises(ExplorerError, match=message):
        whatif_plan(PLANS["uniform"], layer, setting, layers=LAYERS)


def test_settings_for_row_recovers_the_sweep_settings(
    ctx: ModelContext, stored: tuple[Path, dict]
) -> None:
    _, row = stored
    assert settings_for_row(ctx, row) == FAST
    assert settings_for_row(ctx, {**row, "key": "0" * 64}).repeats == 3


def test_evaluate_whatif_evaluates_once_then_reuses(
    ctx: ModelContext, stored: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, row = stored
    with ResultStore(path) as store:
        keys = store.keys()
        new = evaluate_whatif(ctx, row, "features.3", "W4 g32", store, "", FAST)
        assert new["reused"] is False
        assert store.keys() == keys | {new["key"]}
        assert new["key"] != row["key"]
        plan = Plan.from_dict(new["config"])
        assert plan.rules[0] == ("features.3", W4G32)
        assert plan.default == W8
        layers = {lay["name"]: lay for lay in new["layers"]}
        old_layers = {lay["name"]: lay for lay in row["layers"]}
        assert layers["features.3"]["config"] == W4G32.name
        assert layers["features.3"]["weight_bits"] == 4
        assert new["kernels"]["features.3"] == layers["features.3"]["kernel"]
        assert layers["features.3"]["kernel"] is not None
        for name in ("features.1", "features.5", "classifier.2"):
            assert layers[name]["config"] == old_layers[name]["config"] == W8.name
        assert new["size_bytes"] < row["size_bytes"]
        assert store.get(new["key"])["label"] == new["label"]

        def no_evaluation(*_a: Any, **_k: Any) -> dict:
            raise AssertionError("a stored what-if was evaluated again")

        monkeypatch.setattr(whatif, "evaluate_entry", no_evaluation)
        again = evaluate_whatif(ctx, row, "features.3", "W4 g32", store, "", FAST)
        assert again["reused"] is True and again["key"] == new["key"]
        assert again["metrics"] == new["metrics"]
        assert store.keys() == keys | {new["key"]}


def test_evaluate_whatif_refuses_what_cannot_run(
    ctx: ModelContext, stored: tuple[Path, dict]
) -> None:
    path, row = stored
    with ResultStore(path) as store:
        keys = store.keys()
        with pytest.raises(ExplorerError, match="already runs at W8 channel"):
            evaluate_whatif(ctx, row, "features.3", "W8 channel", store, "", FAST)
        with pytest.raises(ExplorerError, match="group size 32 does not divide in_features 16"):
            evaluate_whatif(ctx, row, "features.1", "W4 g32", store, "", FAST)
        with pytest.raises(ExplorerError, match="no quantizable layer named 'conv9'"):
            evaluate_whatif(ctx, row, "conv9", "W4 g32", store, "", FAST)
        with pytest.raises(ExplorerError, match="setting 'W1 channel'"):
            evaluate_whatif(ctx, row, "features.3", "W1 channel", store, "", FAST)
        with pytest.raises(ExplorerError, match="carries no plan"):
            evaluate_whatif(ctx, {"label": "x"}, "features.3", "W4 g32", store, "", FAST)
        assert store.keys() == keys


def test_headline_deltas_and_layer_changes(stored: tuple[Path, dict]) -> None:
    _, row = stored
    new = {
        **row,
        "size_bytes": row["size_bytes"] - 100,
        "metrics": {**row["metrics"], "accuracy": row["metrics"]["accuracy"] - 0.25},
        "layers": [{**row["layers"][0], "config": "fp32"}, *row["layers"][1:]],
    }
    deltas = headline_deltas(row, new)
    assert deltas["size_bytes"]["delta"] == -100
    assert deltas["accuracy"]["delta"] == pytest.approx(-0.25)
    assert deltas["latency_ms"]["delta"] == 0
    assert headline_deltas(row, {"metrics": {}})["accuracy"]["delta"] is None
    changes = layer_changes(row, new)
    assert [c["changed"] for c in changes] == [True, False, False, False]
    assert changes[0]["config before"] == W8.name and changes[0]["config after"] == "fp32"


def test_sensitivity_is_measured_once_per_setting_list(
    ctx: ModelContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = ["W8 channel", "W4 g32", "fp32"]
    table = load_or_measure_sensitivity(ctx, settings, tmp_path, samples=64)
    assert table["layers"] == list(LAYERS) and table["settings"] == settings
    cells = {(c["layer"], c["setting"]): c for c in table["cells"]}
    assert len(cells) == len(LAYERS) * len(settings)
    assert cells[("features.1", "W4 g32")]["applicable"] is not None  # 32 does not divide 16
    assert cells[("features.3", "fp32")]["metric_drop"] == 0.0
    assert cells[("features.3", "W4 g32")]["latency_ms"] is None  # measured without latency
    assert len(list(tmp_path.glob("sensitivity-*.json"))) == 1

    def no_measurement(*_a: Any, **_k: Any) -> None:
        raise AssertionError("a cached sensitivity table was measured again")

    monkeypatch.setattr(whatif, "measure_sensitivity", no_measurement)
    assert load_or_measure_sensitivity(ctx, settings, tmp_path, samples=64) == table
    with pytest.raises(AssertionError):  # another setting list is another table
        load_or_measure_sensitivity(ctx, settings[:2], tmp_path, samples=64)
    with pytest.raises(ExplorerError, match="setting 'W0'"):
        load_or_measure_sensitivity(ctx, ["W0"], tmp_path)
    with pytest.raises(ExplorerError, match="at least one setting"):
        load_or_measure_sensitivity(ctx, [], tmp_path)
