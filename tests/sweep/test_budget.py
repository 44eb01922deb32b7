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


def test_run_settings_field_sets_the_budget() -> None:
    from streamlit.testing.v1 import AppTest

    def app() -> None:
        import streamlit as st

        from explorer.ui.widgets import run_settings_ui

        st.session_state["budget"] = run_settings_ui().eval_budget

    at = AppTest.from_function(app).run(timeout=60)
    assert not at.exception
    assert at.session_state["budget"] is None  # 0 in the field: the task's own
    field = next(n for n in at.number_input if n.key == "run.eval_budget")
    field.set_value(2048).run(timeout=60)
    assert at.session_state["budget"] == 2048
