"""The default sweep (`explorer.sweep.default`), run as the app runs it: the entries of
`default_entries` on the default model with `DEFAULT_RUN`, through `run_sweep`.

It must teach the trade-off (issue 17): at least a 10-point spread of accuracy across its
configurations, disjoint 95 % intervals between 8 and 2 bits, the cliff in order (8 ≥ 4 > 3 > 2
bits per channel), per-tensor below per-channel, and the QAT row above its PTQ parent, each
"above" with intervals that do not overlap. Its time is measured by ``benchmarks/sweep_time.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from explorer import cli
from explorer.models.catalog import DEFAULT_MODEL
from explorer.sweep import runner
from explorer.sweep.context import ModelSource, open_context
from explorer.sweep.default import (
    DEFAULT_QAT,
    DEFAULT_QAT_STEPS,
    DEFAULT_RUN,
    DEFAULT_SPEC,
    default_entries,
)
from explorer.sweep.runner import run_sweep
from explorer.sweep.store import ResultStore

SPREAD_MIN = 0.10  # accuracy, as a fraction


def _interval(row: dict[str, Any], float_accuracy: float) -> tuple[float, float]:
    """The row's 95 % accuracy interval (the stored one is of the delta against float)."""
    lo, hi = row["metrics_ci"]["accuracy"]
    return float_accuracy + lo, float_accuracy + hi


def _below(low: dict[str, Any], high: dict[str, Any], float_accuracy: float) -> bool:
    """``low``'s interval lies wholly below ``high``'s."""
    return _interval(low, float_accuracy)[1] < _interval(high, float_accuracy)[0]


def test_entries_are_the_grid_plus_one_qat_row() -> None:
    entries, skipped = default_entries()
    assert not skipped
    labels = [e.label for e in entries]
    assert labels[:2] == ["fp32", "bf16"]
    assert len(labels) == len(set(labels)) == 2 + 4 * 2 + 1
    assert DEFAULT_SPEC.weight_bits == (8, 4, 3, 2)
    assert set(DEFAULT_SPEC.granularity) == {"tensor", "channel"}
    (qat,) = [e for e in entries if e.method == "qat"]
    assert qat is entries[-1] and qat.qat_steps == DEFAULT_QAT_STEPS == DEFAULT_QAT.qat_steps
    parent = qat.ptq_parent()
    assert parent is not None and parent.label in labels  # the arrow has its PTQ end


def test_command_line_without_options_runs_the_same_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``explorer sweep`` alone (or ``--default``) runs `default_entries`, the QAT row included;
    a config option gives the plain cross product. Rows are not evaluated here."""
    seen: list[list[str]] = []

    def entries_only(ctx: Any, entries: list[Any], store: Any, **_: Any) -> Any:
        seen.append([e.label for e in entries])
        return iter(())

    monkeypatch.setattr(runner, "run_sweep", entries_only)
    store = ["--store", str(tmp_path / "r.sqlite"), "--json"]
    for args in ([], ["--default"], ["--bits", "8"]):
        assert cli.main(["sweep", *args, *store]) == 0
    capsys.readouterr()
    expected, _ = default_entries(open_context(ModelSource(model=DEFAULT_MODEL)).model)
    assert seen[0] == seen[1] == [e.label for e in expected]
    assert seen[2] == ["fp32", "bf16", "W8 channel sym ptq"]


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    ctx = open_context(ModelSource(model=DEFAULT_MODEL))
    entries, _ = default_entries(ctx.model)
    path: Path = tmp_path_factory.mktemp("default") / "results.sqlite"
    with ResultStore(path) as store:
        events = list(run_sweep(ctx, entries, store, settings=DEFAULT_RUN))
    assert not [e for e in events if e.kind in ("failed", "error")]
    out = {e.row["label"]: e.row for e in events if e.kind == "row" and e.row is not None}
    assert list(out) == [e.label for e in entries]
    return out


@pytest.mark.slow
def test_default_sweep_spreads_and_separates_8_from_2_bits(
    rows: dict[str, dict[str, Any]],
) -> None:
    float_accuracy = rows["fp32"]["metrics"]["accuracy"]
    accuracies = [row["metrics"]["accuracy"] for row in rows.values()]
    assert max(accuracies) - min(accuracies) >= SPREAD_MIN
    assert rows["fp32"]["n_samples"] >= 2000  # enough images that a few points separate
    w8, w2 = rows["W8 channel sym ptq"], rows["W2 channel sym ptq"]
    assert _below(w2, w8, float_accuracy)
    # 8 bits per channel is within a point of float (trend 1)
    assert w8["metrics"]["accuracy"] >= float_accuracy - 0.01


@pytest.mark.slow
def test_default_sweep_shows_cliff_per_tensor_and_qat(rows: dict[str, dict[str, Any]]) -> None:
    float_accuracy = rows["fp32"]["metrics"]["accuracy"]
    channel = [rows[f"W{b} channel sym ptq"] for b in (8, 4, 3, 2)]
    # the cliff: every step down in width costs accuracy beyond the intervals, except 8 → 4
    # which may cost little
    for wider, narrower in zip(channel[1:], channel[2:], strict=False):
        assert _below(narrower, wider, float_accuracy)
    assert _below(channel[1], channel[0], float_accuracy)
    assert channel[3]["metrics"]["accuracy"] < 0.3  # 2-bit PTQ near chance (10 classes)
    # per-tensor scales collapse where per-channel ones hold (folded batch norm)
    for bits in (8, 4, 3):
        assert _below(
            rows[f"W{bits} tensor sym ptq"], rows[f"W{bits} channel sym ptq"], float_accuracy
        )
    # one QAT row: recovers most of its PTQ parent's loss
    qat = rows[f"W3 channel sym qat ({DEFAULT_QAT_STEPS} steps)"]
    parent = rows["W3 channel sym ptq"]
    assert qat["parent"] == parent["key"]
    assert _below(parent, qat, float_accuracy)
    lost = float_accuracy - parent["metrics"]["accuracy"]
    assert float_accuracy - qat["metrics"]["accuracy"] < lost / 2
