"""Views of a model and its rows for the app: the layer table against hand counts, the float
metric against the model card, the results table's front and intervals, a sweep's progress
from its events, and the entries a store still lacks (same keys as the runner)."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from explorer.inspect import (
    algorithm_summary,
    float_metric,
    layer_table,
    pending_entries,
    quality_axis,
    result_table,
    sweep_progress,
)
from explorer.models.registry import get_builtin
from explorer.sweep.context import ModelSource, environment, open_context
from explorer.sweep.runner import RunSettings, SweepEvent, entry_key
from explorer.sweep.space import SweepSpec, expand
from explorer.sweep.store import ResultStore


@pytest.fixture(scope="module")
def digits_ctx():
    return open_context(ModelSource(model="digits-cnn"))


def test_layer_table_of_digits_counts_every_parameter() -> None:
    model = get_builtin("digits-cnn").load()
    table = layer_table(model)
    assert [r["name"] for r in table] == ["features.1", "features.3", "features.5", "classifier.2"]
    assert [r["type"] for r in table] == ["Conv2d", "Conv2d", "Conv2d", "Linear"]
    assert table[0]["shape"] == (32, 1, 4, 4)
    assert table[-1]["shape"] == (10, 512)
    assert table[0]["parameters"] == 32 * 16 + 32
    assert sum(r["parameters"] for r in table) == sum(p.numel() for p in model.parameters())
    assert all(r["float_bytes"] == 4 * r["parameters"] for r in table)
    assert all(r["quantizable"] and r["tied_to"] is None for r in table)


def test_layer_table_counts_buffers_and_marks_non_quantizable() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 2))
    rows = {r["name"]: r for r in layer_table(model)}
    assert set(rows) == {"0", "1", "3"}
    bn = rows["1"]
    assert bn["type"] == "BatchNorm2d" and not bn["quantizable"]
    assert bn["parameters"] == 16
    # weight, bias, running mean and variance in fp32; num_batches_tracked is an integer
    assert bn["float_bytes"] == 4 * 8 * 4
    assert rows["0"]["quantizable"] and rows["3"]["quantizable"]


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 4)
        self.head = nn.Linear(4, 16, bias=False)
        self.head.weight = self.embed.weight


def test_layer_table_counts_tied_weights_once() -> None:
    model = Tied()
    rows = {r["name"]: r for r in layer_table(model)}
    assert rows["embed"]["parameters"] == 64 and rows["embed"]["tied_to"] is None
    assert rows["head"]["parameters"] == 0 and rows["head"]["float_bytes"] == 0
    assert rows["head"]["tied_to"] == "embed" and rows["head"]["shape"] == (16, 4)
    assert sum(r["parameters"] for r in rows.values()) == sum(p.numel() for p in model.parameters())


def test_float_metric_matches_the_card(digits_ctx) -> None:
    name, value = float_metric(digits_ctx)
    assert name == "accuracy"
    assert value == pytest.approx(get_builtin("digits-cnn").card()["float"], abs=1e-9)


def _row(label: str, size: int, acc: float | None, **extra) -> dict:
    return {
        "key": label,
        "label": label,
        "kind": "uniform",
        "weight_bits": 8,
        "size_bytes": size,
        "bits_per_weight": 8.0,
        "latency_ms": 1.0,
        "latency_kind": "measured",
        "metric_name": "accuracy",
        "metrics": {"accuracy": acc, "sqnr_db": 30.0},
        "metrics_ci": {"accuracy": [-0.01, 0.005], "sqnr_db": [29.0, 31.0]},
        **extra,
    }


def test_result_table_flags_the_size_front_and_keeps_intervals() -> None:
    rows = [
        _row("fp32", 4000, 0.99),
        _row("w8", 1000, 0.99),
        _row("w4", 600, 0.95),
        _row("bad", 1200, 0.90),  # larger and worse than w8
        _row("none", 500, None),  # no metric: never on the front
    ]
    table = result_table(rows)
    assert [r["pareto"] for r in table] == [False, True, True, False, False]
    assert table[1]["size_kib"] == pytest.approx(1000 / 1024)
    assert table[1]["metric"] == "accuracy" and table[1]["value"] == 0.99
    assert (table[1]["ci_lo"], table[1]["ci_hi"]) == (-0.01, 0.005)
    assert table[4]["value"] is None
    assert result_table([]) == []


def test_result_table_names_the_algorithm_and_its_calibration_or_training_seconds() -> None:
    rows = [
        _row("fp32", 4000, 0.99, kind="baseline", seconds={"quantize": 0.1}),
        _row("rtn", 600, 0.95, method="ptq", algorithm="rtn", seconds={"calibrate": 0.0}),
        _row("gptq", 600, 0.97, algorithm="gptq", seconds={"calibrate": 12.5, "algorithm": 11.0}),
        _row("awq", 600, 0.96, algorithm="awq",
             seconds={"calibrate": 4.0, "algorithm": 3.5, "statistics_reused": 1.25}),
        _row("qat", 600, 0.98, method="qat", algorithm="rtn", qat_steps=100,
             seconds={"qat": 40.0, "calibrate": 0.0}),
        _row("whatif", 620, 0.96, kind="mixed", algorithm=None, algorithms={"rtn": 3, "awq": 1},
             seconds={"calibrate": 2.0}),
    ]  # fmt: skip
    table = {r["label"]: r for r in result_table(rows)}
    assert [table[k]["algorithm"] for k in table] == [
        None, "rtn", "gptq", "awq", "rtn", "awq ×1, rtn ×3"
    ]  # fmt: skip
    # calibration as if run alone: statistics reused from an earlier row count at their cost
    assert [table[k]["calibrate_s"] for k in table] == [None, 0.0, 12.5, 5.25, None, 2.0]
    assert [table[k]["train_s"] for k in table] == [None, None, None, None, 40.0, None]
    assert algorithm_summary({"kind": "mixed"}) is None


def test_quality_axis_falls_back_to_sqnr_without_labels() -> None:
    rows = [_row("a", 1, None), _row("b", 2, None)]
    assert quality_axis(rows, "accuracy") == ("metrics.sqnr_db", "max")
    assert quality_axis(rows, None) == ("metrics.sqnr_db", "max")
    assert quality_axis([_row("c", 1, 0.5)], "accuracy") == ("metrics.accuracy", "max")
    assert result_table(rows, "accuracy")[0]["metric"] == "sqnr_db"


def test_sweep_progress_folds_events() -> None:
    events = [
        SweepEvent("skipped", "W4 static token", reason="static per-token is not supported"),
        SweepEvent("started", total=4),
        SweepEvent("cached", "fp32", "k1", {"label": "fp32"}, done=1, total=4),
        SweepEvent("row", "bf16", "k2", {"label": "bf16"}, done=2, total=4),
        SweepEvent("failed", "W2", "k3", reason="diverged", done=3, total=4),
    ]
    progress = sweep_progress(events)
    assert (progress.done, progress.total, progress.fraction) == (3, 4, 0.75)
    assert [r["label"] for r in progress.rows] == ["fp32", "bf16"]
    assert progress.skipped == [("W4 static token", "static per-token is not supported")]
    assert progress.failed == [("W2", "diverged")]
    assert not progress.finished and not progress.cancelled
    done = sweep_progress([*events, SweepEvent("cancelled", done=3, total=4), SweepEvent("done")])
    assert done.finished and done.cancelled and done.error is None
    failed = sweep_progress([SweepEvent("error", reason="no such model")])
    assert failed.finished and failed.error == "no such model" and failed.fraction == 0.0


def test_sweep_progress_counts_the_batches_of_the_row_in_flight() -> None:
    events = [SweepEvent("started", total=4), SweepEvent("row", "fp32", done=1, total=4)]
    batch = SweepEvent("batch", extra={"done": 3, "total": 6})
    progress = sweep_progress([*events, batch])
    assert (progress.batch_done, progress.batch_total, progress.fraction) == (3, 6, 1.5 / 4)
    after = sweep_progress([*events, batch, SweepEvent("row", "bf16", done=2, total=4)])
    assert (after.batch_done, after.batch_total, after.fraction) == (0, 0, 0.5)


def test_pending_entries_uses_the_runner_keys(digits_ctx, tmp_path: Path) -> None:
    spec = SweepSpec(weight_bits=(8,), granularity=("channel",))
    settings = RunSettings(repeats=3, n_boot=200)
    env = environment()
    entries, _ = expand(spec, digits_ctx.model)
    with ResultStore(tmp_path / "rows.sqlite") as store:
        pending = pending_entries(digits_ctx, spec, settings, store, env)
        assert [e.label for e in pending] == [e.label for e in entries]
        store.put(entry_key(digits_ctx, entries[0], settings, env), {"label": "fp32"})
        pending = pending_entries(digits_ctx, spec, settings, store, env)
        assert [e.label for e in pending] == [e.label for e in entries[1:]]
        other = RunSettings(repeats=4, n_boot=200)  # another key: nothing is found
        assert len(pending_entries(digits_ctx, spec, other, store, env)) == len(entries)


def test_layer_table_of_a_model_without_parameters_is_empty() -> None:
    assert layer_table(nn.Sequential(nn.ReLU(), nn.Flatten())) == []
    assert layer_table(nn.Linear(2, 2)) == []  # the root itself is not a layer (as in quantize)
