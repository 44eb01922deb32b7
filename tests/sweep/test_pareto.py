"""Pareto flags: hand examples, edge values, and agreement with a brute-force O(n^2) reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.sweep.pareto import flag_pareto, front_order, metric_sense, pareto_mask


def dominates(q, p, senses) -> bool:
    """The definition, written out: q is no worse on every axis and better on one."""
    if any(v is None or math.isnan(v) for v in (*q, *p)):
        return False
    signs = [1 if s == "min" else -1 for s in senses]
    no_worse = all(a * s <= b * s for a, b, s in zip(q, p, signs, strict=True))
    better = any(a * s < b * s for a, b, s in zip(q, p, signs, strict=True))
    return no_worse and better


def reference_mask(points, senses) -> list[bool]:
    return [
        all(v is not None and not math.isnan(v) for v in p)
        and not any(dominates(q, p, senses) for q in points)
        for p in points
    ]


def test_two_axes_by_hand() -> None:
    # (size, latency), both minimized: (3, 3) loses to (2, 2); (4, 1) and (1, 4) trade off.
    points = [(1, 4), (2, 2), (3, 3), (4, 1), (4, 2)]
    assert pareto_mask(points, ["min", "min"]) == [True, True, False, True, False]


def test_mixed_senses_by_hand() -> None:
    # (size, accuracy): smaller and more accurate is better.
    points = [(10, 0.90), (20, 0.95), (20, 0.93), (30, 0.95), (5, 0.50)]
    assert pareto_mask(points, ["min", "max"]) == [True, True, False, False, True]


def test_three_axes_by_hand() -> None:
    # (size, latency, perplexity): the third axis rescues (3, 3, 1) from (2, 2, 5).
    points = [(2, 2, 5), (3, 3, 1), (3, 3, 6), (1, 5, 5), (1, 5, 6)]
    assert pareto_mask(points, ["min", "min", "min"]) == [True, True, False, True, False]


def test_one_axis_keeps_every_copy_of_the_best() -> None:
    assert pareto_mask([(3,), (1,), (2,), (1,)], ["min"]) == [False, True, False, True]
    assert pareto_mask([(3,), (1,), (3,)], ["max"]) == [True, False, True]


@pytest.mark.parametrize("k", [2, 3])
def test_duplicates_are_all_kept_or_all_dropped(k: int) -> None:
    best, worse = (1,) * k, (2,) * k
    points = [best, worse, best, worse]
    assert pareto_mask(points, ["min"] * k) == [True, False, True, False]


@pytest.mark.parametrize("missing", [None, math.nan])
@pytest.mark.parametrize("k", [2, 3])
def test_missing_coordinates_are_off_the_front_and_dominate_nothing(missing, k: int) -> None:
    # The incomplete point would dominate everything on its known axes.
    points = [(0,) * (k - 1) + (missing,), (1,) * k, (missing,) * k, (2,) * k]
    assert pareto_mask(points, ["min"] * k) == [False, True, False, False]
    only_missing = [(missing,) * k, (missing,) * k]
    assert pareto_mask(only_missing, ["min"] * k) == [False, False]


def test_infinities_compare_as_numbers() -> None:
    points = [(math.inf, 0), (0, math.inf), (1, 1), (-math.inf, 5)]
    assert pareto_mask(points, ["min", "min"]) == [True, False, True, True]


def test_empty_input() -> None:
    assert pareto_mask([], ["min", "max"]) == []
    assert flag_pareto([], [("size_bytes", "min")]) == []


@pytest.mark.parametrize(
    ("points", "senses", "message"),
    [
        ([(1, 2)], [], "at least one axis"),
        ([(1, 2)], ["min", "best"], "axis 1 must be 'min' or 'max'"),
        ([(1, 2), (1, 2, 3)], ["min", "min"], "point 1 has 3 coordinates but there are 2"),
        ([(1, 2)], "min", "string"),
    ],
)
def test_bad_arguments_say_what_is_wrong(points, senses, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pareto_mask(points, senses)


coordinate = st.integers(0, 4) | st.none() | st.just(math.nan)


@st.composite
def point_sets(draw):
    k = draw(st.integers(1, 4))
    senses = draw(st.lists(st.sampled_from(["min", "max"]), min_size=k, max_size=k))
    with_missing = draw(st.booleans())
    value = coordinate if with_missing else st.integers(0, 4)
    points = draw(st.lists(st.tuples(*[value] * k), max_size=40))
    return points, senses


@settings(deadline=None, max_examples=300)
@given(point_sets())
def test_matches_brute_force(case) -> None:
    points, senses = case
    assert pareto_mask(points, senses) == reference_mask(points, senses)


@settings(deadline=None, max_examples=100)
@given(point_sets())
def test_every_dominated_point_has_a_dominator_on_the_front(case) -> None:
    points, senses = case
    mask = pareto_mask(points, senses)
    on_front = [p for p, m in zip(points, mask, strict=True) if m]
    for p, m in zip(points, mask, strict=True):
        if not m and all(v is not None and not math.isnan(v) for v in p):
            assert any(dominates(q, p, senses) for q in on_front), p


@pytest.mark.parametrize("k", [2, 3])
def test_many_points_match_brute_force(k: int) -> None:
    # Past the pairwise test's chunk size, with float coordinates and planted duplicates.
    rng = np.random.default_rng(7)
    values = rng.integers(0, 30, size=(700, k)).astype(float) / 3
    values[::50] = values[1::50]
    points = [tuple(row) for row in values.tolist()]
    senses = ["min", "max", "min"][:k]
    assert pareto_mask(points, senses) == reference_mask(points, senses)


def test_flag_pareto_reads_dotted_paths() -> None:
    rows = [
        {"size_bytes": 100, "latency_ms": 1.0, "metrics": {"accuracy": 0.90}},
        {"size_bytes": 50, "latency_ms": 2.0, "metrics": {"accuracy": 0.80}},
        {"size_bytes": 100, "latency_ms": 1.5, "metrics": {"accuracy": 0.85}},
        {"size_bytes": 10, "latency_ms": 0.5, "metrics": {}},  # not evaluated
        {"size_bytes": 10, "latency_ms": 0.5, "metrics": {"accuracy": None}},
        {"size_bytes": 10, "latency_ms": 0.5},
        {"size_bytes": 200, "latency_ms": 0.9, "metrics": {"accuracy": 0.95}},
    ]
    axes = [("size_bytes", "min"), ("latency_ms", "min"), ("metrics.accuracy", "max")]
    assert flag_pareto(rows, axes) == [True, True, False, False, False, False, True]
    two = [("size_bytes", "min"), ("metrics.accuracy", "max")]
    assert flag_pareto(rows, two) == [True, True, False, False, False, False, True]


def test_flag_pareto_with_a_minimized_metric() -> None:
    rows = [
        {"size_bytes": 10, "metrics": {"perplexity": 9.0}},
        {"size_bytes": 20, "metrics": {"perplexity": 8.0}},
        {"size_bytes": 30, "metrics": {"perplexity": 8.5}},
    ]
    axes = [("size_bytes", "min"), ("metrics.perplexity", metric_sense("perplexity"))]
    assert flag_pareto(rows, axes) == [True, True, False]


def test_flag_pareto_rejects_non_numbers_and_bad_axes() -> None:
    with pytest.raises(ValueError, match="row 1: 'metrics.accuracy' must be a number"):
        flag_pareto(
            [{"metrics": {"accuracy": 0.5}}, {"metrics": {"accuracy": "high"}}],
            [("metrics.accuracy", "max")],
        )
    with pytest.raises(ValueError, match="at least one axis"):
        flag_pareto([{"a": 1}], [])
    with pytest.raises(ValueError, match="'min' or 'max'"):
        flag_pareto([{"a": 1}], [("a", "up")])


def test_metric_sense() -> None:
    for metric in ("accuracy", "cosine", "agreement", "sqnr_db"):
        assert metric_sense(metric) == "max"
    for metric in ("perplexity", "kl"):
        assert metric_sense(metric) == "min"
    with pytest.raises(ValueError, match="'bleu'"):
        metric_sense("bleu")


def test_front_order_sorts_flagged_rows_by_x() -> None:
    rows = [{"size": 30}, {"size": 10}, {"size": 20}, {"size": 10}, {}]
    flags = [True, True, False, True, True]
    assert front_order(rows, "size", flags) == [1, 3, 0]
    with pytest.raises(ValueError, match="2 flags for 5 rows"):
        front_order(rows, "size", [True, False])
