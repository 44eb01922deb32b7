"""Mixed precision end to end: sensitivity on the calibration split, the knapsack front, and
verification on the held-out split with real kernels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from explorer.measure.evaluation import spearman
from explorer.sweep.context import ModelContext, ModelSource, open_context
from explorer.sweep.mixed import plan_for, search_and_verify, uniform_entries
from explorer.sweep.runner import RunSettings, run_sweep
from explorer.sweep.sensitivity import Cell, Sensitivity, measure_sensitivity
from explorer.sweep.store import ResultStore

FAST = RunSettings(repeats=3, n_boot=500, per_layer=False)
SETTINGS = ("W4 g32", "W3 g128", "W2 g32")


@pytest.fixture(scope="module")
def digits() -> ModelContext:
    return open_context(ModelSource(model="digits-cnn"))


def test_search_rows_carry_their_allocation(digits: ModelContext, tmp_path: Path) -> None:
    sens = measure_sensitivity(digits, ("W8 channel", "W2 g32"), samples=128, latency=False)
    with ResultStore(tmp_path / "r.sqlite") as store:
        out = search_and_verify(digits, sens, store, points=3, settings=FAST)
    assert len(out.allocations) == len(out.mixed_rows()) == 3
    for row in out.mixed_rows():
        choice = row["allocation"]["choice"]
        assert set(choice) == set(sens.layers)
        assert row["config"] == plan_for(_allocation(out, row)).to_dict()
        assert row["kind"] == "mixed" and row["weight_bits"] is None  # flat fields: mixed
        predicted = row["allocation"]["size_bytes"]
        assert row["size_bytes"] == predicted  # the search's byte count is the stored size
    assert {r["label"] for r in out.uniform_rows()} == {"W8 channel sym ptq", "W2 group32 sym ptq"}


def _proxy_ranks_as_measured(sens: Sensitivity) -> None:
    """The cheap proxy (input-energy-weighted weight error) against the measured perplexity
    drop, Spearman over tiny-lm's 29 layers (16 calibration sequences). On the Llama tiny-lm:
    pooled over the 87 (layer, setting) cells 0.524, W2 g32 0.250, W3 g128 0.137, W4 g32 -0.247
    (the byte-level GPT it replaced, 8 sequences: 0.669 pooled, W2 g32 0.488). With 8 sequences
    the measured drops themselves were too noisy to rank against (pooled 0.300). The proxy sees
    the size of a layer's output error, not where it goes: layer 0's k/q/v projections have small
    proxies and the largest drops at 2 bits. (Weighting each output channel by E[(dL/dy)^2] from
    one backward pass, a Fisher proxy, ranked 0.740 pooled and 0.800 at W2 g32 on the same
    cells; not used yet.) Bounds with a margin below the pooled and W2 g32 values."""
    cells = [sens.cell(layer, s) for layer in sens.layers for s in SETTINGS]
    assert sens.mode == "measured" and all(c.proxy is not None for c in cells)

    def rho(chosen: list[Cell]) -> float:
        proxy = torch.tensor([c.proxy for c in chosen], dtype=torch.float64)
        drop = torch.tensor([c.metric_drop for c in chosen], dtype=torch.float64)
        return spearman(proxy, drop)

    assert rho(cells) >= 0.4
    assert rho([c for c in cells if c.setting == "W2 g32"]) >= 0.15


def _allocation(out, row):  # type: ignore[no-untyped-def]
    return next(a for a in out.allocations if a.to_dict()["choice"] == row["allocation"]["choice"])


@pytest.mark.slow
def test_a_searched_mixed_plan_beats_every_uniform_plan_of_its_size_on_tiny_lm(
    tmp_path: Path,
) -> None:
    """Issue acceptance: on tiny-lm, size against held-out perplexity, at some budget a mixed
    plan beats every uniform plan of no larger size by more than the confidence interval: its
    95 % interval of the perplexity delta lies wholly below each such uniform plan's. The budget
    is halfway between uniform W3 g128 and uniform W4 g32; the uniform plans of no larger size
    are evaluated, and the larger one is shown to be larger from the table's exact sizes."""
    ctx = open_context(ModelSource(model="tiny-lm"))
    # 16 calibration sequences: with 8, the measured drops of the 4-bit cells were noise, and
    # the search put 9 layers at W2 g32 whose interval overlapped uniform W3 g128's
    sens = measure_sensitivity(ctx, SETTINGS, samples=16, latency=False)
    _proxy_ranks_as_measured(sens)
    table = sens.to_search_table()
    uniform_size = {
        s: table.base_size_bytes + sum(row[j] for row in table.size_bytes)
        for j, s in enumerate(table.settings)
    }
    budget = (uniform_size["W3 g128"] + uniform_size["W4 g32"]) // 2
    with ResultStore(tmp_path / "r.sqlite") as store:
        out = search_and_verify(
            ctx,
            sens,
            store,
            budgets=[budget],
            settings=FAST,
            with_baselines=False,
            with_uniform=False,
        )
        events = run_sweep(ctx, uniform_entries(RIVALS), store, settings=FAST)
        rivals = [e.row for e in events if e.row is not None]
    (mixed,) = out.mixed_rows()
    assert mixed["size_bytes"] <= budget < uniform_size["W4 g32"]
    assert all(u["size_bytes"] == uniform_size[s] for u, s in zip(rivals, RIVALS, strict=True))
    hi = mixed["metrics_ci"]["perplexity"][1]
    for u in rivals:
        assert u["size_bytes"] <= mixed["size_bytes"]
        assert hi < u["metrics_ci"]["perplexity"][0], (mixed["label"], u["label"])


RIVALS = ("W3 g128", "W2 g32")
