"""The evaluation budget: fewer tokens scored, a different row key, and honestly wider intervals."""

from __future__ import annotations

import pytest

from explorer.errors import ExplorerError
from explorer.sweep.context import ModelSource, open_context
from explorer.sweep.runner import RunSettings, entry_key, evaluate_entry
from explorer.sweep.space import SweepSpec, expand


@pytest.mark.slow
def test_smaller_budget_scores_fewer_tokens_with_a_wider_interval() -> None:
    ctx = open_context(ModelSource(model="tiny-lm"))
    entries, _ = expand(SweepSpec(weight_bits=(4,)), ctx.model)
    entry = next(e for e in entries if e.kind == "uniform")
    full_tokens = ctx.tokens_evaluated
    assert full_tokens is not None
    budget = full_tokens // 8
    rows, keys = {}, {}
    for name, value in (("full", None), ("small", budget)):
        settings = RunSettings(n_boot=200, repeats=1, warmup=1, per_layer=False, eval_budget=value)
        rows[name] = evaluate_entry(ctx, entry, settings)
        keys[name] = entry_key(ctx, entry, settings, rows[name]["env"])
    assert rows["full"]["tokens_evaluated"] == full_tokens
    assert rows["small"]["tokens_evaluated"] == budget
    assert keys["full"] != keys["small"]
    metric = rows["full"]["metric_name"]
    widths = {k: r["metrics_ci"][metric][1] - r["metrics_ci"][metric][0] for k, r in rows.items()}
    assert widths["small"] > widths["full"] > 0
    # a budget at least the split is the split itself: same context, same key
    assert ctx.budgeted(full_tokens) is ctx
    assert ctx.budgeted(None) is ctx


def test_budget_must_be_a_positive_integer() -> None:
    with pytest.raises(ExplorerError, match="eval_budget must be a positive integer, got 0"):
        RunSettings(eval_budget=0)
