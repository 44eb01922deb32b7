"""Mixed-precision search: the DP against brute force over every allocation of small tables,
budgets of every kind, the front, trimming's error bound, validation and JSON round trips."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.sweep.search import (
    Allocation,
    SearchError,
    SensitivityTable,
    _trim,
    allocate,
    front,
)


def random_table(
    seed: int,
    layers: int = 5,
    n_settings: int = 3,
    *,
    integer_damage: bool = False,
    missing: float = 0.2,
) -> SensitivityTable:
    """Seeded table with inapplicable (None) cells, slightly negative damages, equal sizes and,
    with integer_damage, exactly tied damages."""
    rng = np.random.default_rng(seed)
    damage, size, latency = [], [], []
    for _ in range(layers):
        applicable = rng.random(n_settings) >= missing
        applicable[rng.integers(n_settings)] = True
        d = rng.integers(-1, 8, n_settings) if integer_damage else rng.normal(1.0, 1.5, n_settings)
        s = rng.integers(0, 40, n_settings)
        t = rng.integers(1, 50, n_settings) / 8
        damage.append(tuple(float(v) if a else None for v, a in zip(d, applicable, strict=True)))
        size.append(tuple(int(v) if a else None for v, a in zip(s, applicable, strict=True)))
        latency.append(tuple(float(v) if a else None for v, a in zip(t, applicable, strict=True)))
    return SensitivityTable(
        layers=tuple(f"blocks.{i}.fc" for i in range(layers)),
        settings=tuple(f"s{j}" for j in range(n_settings)),
        damage=tuple(damage),
        size_bytes=tuple(size),
        latency_ms=tuple(latency),
        base_size_bytes=int(rng.integers(0, 100)),
        base_latency_ms=float(rng.integers(0, 8) / 4),
        metric="perplexity",
    )


def realistic_table(layers: int = 40) -> SensitivityTable:
    """Damage falls and size rises with bits, per-layer sensitivity spans orders of magnitude."""
    rng = np.random.default_rng(0)
    bits = np.array([32, 8.5, 4.5, 4.125, 3.125, 2.5])
    params = rng.integers(10_000, 5_000_000, layers)
    sensitivity = rng.lognormal(0, 1.5, layers)
    return SensitivityTable(
        layers=tuple(f"blocks.{i // 4}.{['q', 'k', 'v', 'o'][i % 4]}" for i in range(layers)),
        settings=("fp32", "W8 channel", "W4 g32", "W4 g128", "W3 g128", "W2 g32"),
        damage=tuple(
            tuple(float(s * 1e3 * 2.0 ** (-2 * b)) + float(rng.normal(0, 1e-4)) for b in bits)
            for s in sensitivity
        ),
        size_bytes=tuple(tuple(int(p * b / 8) for b in bits) for p in params),
        base_size_bytes=12345,
    )


def every_allocation(table: SensitivityTable) -> list[tuple[int, float, float, tuple[int, ...]]]:
    """(size, latency, damage, setting columns) of every allocation, summed in layer order."""
    options = [[s for s, d in enumerate(row) if d is not None] for row in table.damage]
    out = []
    for columns in itertools.product(*options):
        size, latency, damage = table.base_size_bytes, table.base_latency_ms, 0.0
        for layer, s in enumerate(columns):
            size += table.size_bytes[layer][s]
            latency += table.latency_ms[layer][s]
            damage += table.damage[layer][s]
        out.append((size, latency, damage, columns))
    return out


def check_consistent(table: SensitivityTable, alloc: Allocation) -> None:
    """The allocation names every layer once, with applicable settings, and reports their sums."""
    assert [layer for layer, _ in alloc.choices] == list(table.layers)
    columns = [table.settings.index(setting) for _, setting in alloc.choices]
    for layer, s in enumerate(columns):
        assert table.damage[layer][s] is not None
    assert alloc.size_bytes == table.base_size_bytes + sum(
        table.size_bytes[layer][s] for layer, s in enumerate(columns)
    )
    assert alloc.damage == pytest.approx(
        sum(table.damage[layer][s] for layer, s in enumerate(columns)), abs=1e-12
    )
    if table.latency_ms is not None:
        expected = table.base_latency_ms + sum(
            table.latency_ms[layer][s] for layer, s in enumerate(columns)
        )
        assert alloc.latency_ms == pytest.approx(expected, abs=1e-12)


def allocate_within(
    table: SensitivityTable,
    everything: list[tuple[int, float, float, tuple[int, ...]]],
    column: int,
    refusal: str,
    **budget: float,
) -> tuple[Allocation, list[tuple[int, float, float, tuple[int, ...]]]] | None:
    """The allocation for the one ``budget`` (on ``column`` of `every_allocation`), consistent,
    with the allocations that meet it; None where none does, once the search refused with
    ``refusal``."""
    (limit,) = budget.values()
    feasible = [a for a in everything if a[column] <= limit]
    if not feasible:
        with pytest.raises(SearchError, match=refusal):
            allocate(table, **budget)
        return None
    alloc = allocate(table, **budget)
    check_consistent(table, alloc)
    return alloc, feasible


def brute_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Distinct non-dominated (cost, damage) pairs, both minimized, by the definition."""
    distinct = set(points)
    return sorted(
        p for p in distinct if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in distinct)
    )


@settings(deadline=None, max_examples=80)
@given(
    seed=st.integers(0, 2**32 - 1),
    integer_damage=st.booleans(),
    fraction=st.floats(-0.1, 1.1),
)
def test_size_budget_matches_brute_force(seed: int, integer_damage: bool, fraction: float) -> None:
    table = random_table(seed, integer_damage=integer_damage)
    everything = every_allocation(table)
    sizes = [a[0] for a in everything]
    budget = int(round(min(sizes) + fraction * (max(sizes) - min(sizes))))
    found = allocate_within(
        table,
        everything,
        0,
        f"smallest achievable is {min(sizes):,} bytes",
        max_size_bytes=budget,
    )
    if found is None:
        return
    alloc, feasible = found
    best_damage = min(a[2] for a in feasible)
    assert alloc.size_bytes <= budget
    assert alloc.damage == pytest.approx(best_damage, abs=1e-9)
    # Ties in damage go to the cheaper allocation.
    tied = [a[0] for a in feasible if abs(a[2] - best_damage) <= 1e-9]
    assert alloc.size_bytes == min(tied)


@settings(deadline=None, max_examples=60)
@given(seed=st.integers(0, 2**32 - 1), fraction=st.floats(-0.1, 1.1))
def test_latency_budget_matches_brute_force(seed: int, fraction: float) -> None:
    table = random_table(seed)
    everything = every_allocation(table)
    latencies = [a[1] for a in everything]
    budget = min(latencies) + fraction * (max(latencies) - min(latencies))
    # latencies are sums of eighths: exact
    found = allocate_within(table, everything, 1, "smallest achievable is", max_latency_ms=budget)
    if found is None:
        return
    alloc, feasible = found
    assert alloc.latency_ms <= budget
    assert alloc.damage == pytest.approx(min(a[2] for a in feasible), abs=1e-9)


@settings(deadline=None, max_examples=60)
@given(
    seed=st.integers(0, 2**32 - 1),
    integer_damage=st.booleans(),
    fraction=st.floats(-0.1, 1.1),
)
def test_damage_budget_matches_brute_force(
    seed: int, integer_damage: bool, fraction: float
) -> None:
    table = random_table(seed, integer_damage=integer_damage)
    everything = every_allocation(table)
    damages = [a[2] for a in everything]
    budget = min(damages) + fraction * (max(damages) - min(damages))
    if integer_damage:
        budget = float(round(budget))  # lands exactly on achievable damages
    found = allocate_within(table, everything, 2, "least achievable is", max_damage=budget)
    if found is None:
        return
    alloc, feasible = found
    assert alloc.damage <= budget
    assert alloc.size_bytes == min(a[0] for a in feasible)


@settings(deadline=None, max_examples=60)
@given(
    seed=st.integers(0, 2**32 - 1),
    integer_damage=st.booleans(),
    cost=st.sampled_from(["size", "latency"]),
)
def test_front_is_the_brute_force_pareto_set(seed: int, integer_damage: bool, cost: str) -> None:
    table = random_table(seed, integer_damage=integer_damage)
    axis = 0 if cost == "size" else 1
    expected = brute_front([(a[axis], a[2]) for a in every_allocation(table)])
    points = front(table, cost=cost, max_points=10_000)
    for alloc in points:
        check_consistent(table, alloc)
    got = [(a.size_bytes if cost == "size" else a.latency_ms, a.damage) for a in points]
    assert len(got) == len(expected)
    for (c, d), (ec, ed) in zip(got, expected, strict=True):
        assert c == pytest.approx(ec, abs=1e-9)
        assert d == pytest.approx(ed, abs=1e-9)
    costs, damages = zip(*got, strict=True)
    assert all(a < b for a, b in itertools.pairwise(costs))
    assert all(a > b for a, b in itertools.pairwise(damages))


@settings(deadline=None, max_examples=100)
@given(
    sizes=st.lists(st.integers(0, 10_000), min_size=1, max_size=60, unique=True),
    max_points=st.integers(2, 20),
)
def test_thinning_uses_every_point_it_may(sizes: list[int], max_points: int) -> None:
    # One layer whose settings are all on the front (bigger is less damaging), including fronts
    # crowded at one end, where evenly spaced targets share their nearest point.
    sizes = sorted(sizes)
    table = SensitivityTable(
        layers=("fc",),
        settings=tuple(f"s{size}" for size in sizes),
        damage=(tuple(float(len(sizes) - i) for i in range(len(sizes))),),
        size_bytes=(tuple(sizes),),
    )
    got = [a.size_bytes for a in front(table, max_points=max_points)]
    assert len(got) == min(len(sizes), max_points)
    assert got[0] == sizes[0] and got[-1] == sizes[-1]
    assert all(a < b for a, b in itertools.pairwise(got))


@settings(deadline=None, max_examples=100)
@given(
    steps=st.lists(st.floats(1e-6, 10.0), min_size=4, max_size=300),
    max_states=st.integers(3, 50),
)
def test_trim_keeps_a_cheaper_stand_in_within_one_interval(
    steps: list[float], max_states: int
) -> None:
    """The guarantee the error bound rests on: every dropped entry has a kept entry before it (so
    no dearer) whose damage exceeds its own by less than (range / (max_states - 1))."""
    damage = 100.0 - np.cumsum(steps)  # strictly descending, as along a Pareto set
    if len(damage) <= max_states:
        return
    kept = _trim(damage, max_states).tolist()
    assert kept[0] == 0 and kept[-1] == len(damage) - 1
    assert len(kept) <= max_states + 1
    width = (damage[0] - damage[-1]) / (max_states - 1)
    for j in range(len(damage)):
        stand_in = max(i for i in kept if i <= j)
        assert damage[stand_in] - damage[j] <= width * (1 + 1e-9)


def test_front_is_thinned_evenly_and_keeps_both_ends() -> None:
    table = realistic_table(layers=10)
    full = front(table, max_points=10_000)
    assert len(full) > 100
    thin = front(table, max_points=9)
    assert len(thin) == 9
    assert thin[0] == full[0] and thin[-1] == full[-1]
    assert all(a in full for a in thin)
    # Evenly along cost: every evenly spaced cost target has a point within one full-front gap.
    sizes = [a.size_bytes for a in full]
    widest_gap = max(b - a for a, b in itertools.pairwise(sizes))
    for target in np.linspace(sizes[0], sizes[-1], 9):
        assert min(abs(a.size_bytes - target) for a in thin) <= widest_gap
    with pytest.raises(SearchError, match="max_points must be an integer of at least 2"):
        front(table, max_points=1)


@settings(deadline=None, max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), fraction=st.floats(0.0, 1.0))
def test_trimmed_sets_stay_feasible_and_within_the_stated_error(seed: int, fraction: float) -> None:
    # Six layers of four settings, at most 4 states kept per layer: trimming happens every step.
    table = random_table(seed, layers=6, n_settings=4, missing=0.0)
    max_states = 4
    everything = every_allocation(table)
    sizes = [a[0] for a in everything]
    budget = int(min(sizes) + fraction * (max(sizes) - min(sizes)))
    best = min(a[2] for a in everything if a[0] <= budget)
    spread = sum(max(row) - min(row) for row in table.damage)
    bound = len(table.layers) * spread / (max_states - 1)
    alloc = allocate(table, max_size_bytes=budget, max_states=max_states)
    check_consistent(table, alloc)
    assert alloc.size_bytes <= budget
    assert best - 1e-9 <= alloc.damage <= best + bound + 1e-9
    exact, trimmed = front(table), front(table, max_states=max_states)
    assert (trimmed[0].size_bytes, trimmed[0].damage) == (exact[0].size_bytes, exact[0].damage)
    assert trimmed[-1].damage == pytest.approx(exact[-1].damage, abs=1e-12)


def test_inapplicable_settings_are_never_chosen() -> None:
    # W2 does not apply to `embed`, fp32 not to `head`: read as 0, either would look free.
    table = SensitivityTable(
        layers=("embed", "head"),
        settings=("fp32", "W8", "W2"),
        damage=((0.0, 0.1, None), (None, 0.2, 5.0)),
        size_bytes=((400, 100, None), (None, 100, 25)),
    )
    for alloc in front(table):
        assert alloc.choice["embed"] != "W2"
        assert alloc.choice["head"] != "fp32"
    assert allocate(table, max_size_bytes=125).choice == {"embed": "W8", "head": "W2"}
    assert allocate(table, max_damage=0.0 + 0.2).choice == {"embed": "fp32", "head": "W8"}
    with pytest.raises(SearchError, match="fits max_size_bytes=100 bytes; the smallest .* 125"):
        allocate(table, max_size_bytes=100)
    with pytest.raises(SearchError, match=r"damage <= 0.1; the least achievable is 0.2"):
        allocate(table, max_damage=0.1)


def test_exactly_one_budget() -> None:
    table = random_table(0)
    with pytest.raises(SearchError, match="exactly one budget"):
        allocate(table)
    with pytest.raises(SearchError, match=r"exactly one budget.*max_damage.*max_size_bytes"):
        allocate(table, max_size_bytes=10**6, max_damage=1.0)
    with pytest.raises(SearchError, match="max_size_bytes must be a number"):
        allocate(table, max_size_bytes=float("nan"))
    no_latency = SensitivityTable(("a",), ("W8",), ((0.0,),), ((4,),))
    with pytest.raises(SearchError, match="needs a table with latency_ms"):
        allocate(no_latency, max_latency_ms=1.0)
    assert allocate(no_latency, max_size_bytes=4).latency_ms is None


def test_forty_layers_of_six_settings() -> None:
    """A realistic size, solved exactly; the ends of the front are known."""
    table = realistic_table()
    points = front(table, max_points=64)
    assert len(points) == 64
    cheapest = table.base_size_bytes + sum(min(row) for row in table.size_bytes)
    assert points[0].size_bytes == cheapest
    assert points[-1].damage == pytest.approx(sum(min(row) for row in table.damage), abs=1e-9)
    for a, b in itertools.pairwise(points):
        assert a.size_bytes < b.size_bytes and a.damage > b.damage
    middle = points[32]
    again = allocate(table, max_size_bytes=middle.size_bytes)
    assert again.damage <= middle.damage
    check_consistent(table, again)


def test_table_and_allocation_round_trip_through_json() -> None:
    table = random_table(11)
    assert any(None in row for row in table.damage)
    data = json.loads(json.dumps(table.to_dict()))
    assert data["version"] == 1
    assert SensitivityTable.from_dict(data) == table
    assert hash(SensitivityTable.from_dict(data)) == hash(table)
    alloc = allocate(table, max_size_bytes=10**6)
    data = json.loads(json.dumps(alloc.to_dict()))
    assert data["version"] == 1
    assert data["choice"] == alloc.choice
    again = Allocation.from_dict(data)
    assert again == alloc and again.choice == alloc.choice
    assert hash(again) == hash(alloc)
    with pytest.raises(SearchError, match="version 2 is not supported"):
        SensitivityTable.from_dict({**table.to_dict(), "version": 2})
    with pytest.raises(SearchError, match=r"unknown sensitivity table field\(s\) \['bits'\]"):
        SensitivityTable.from_dict({**table.to_dict(), "bits": 4})
    with pytest.raises(SearchError, match=r"lacks field\(s\) \['damage'\]"):
        SensitivityTable.from_dict({k: v for k, v in table.to_dict().items() if k != "damage"})


def test_lists_are_accepted_and_stored_as_tuples() -> None:
    table = SensitivityTable(["a", "b"], ["W8", "W4"], [[0.1, 0.5], [0.0, 0.2]], [[8, 4], [8, 4]])
    assert table.damage == ((0.1, 0.5), (0.0, 0.2))
    assert isinstance(hash(table), int)


GOOD = {
    "layers": ("blocks.0.fc", "blocks.1.fc"),
    "settings": ("W8", "W4"),
    "damage": ((0.1, 0.5), (0.0, 0.2)),
    "size_bytes": ((8, 4), (8, 4)),
    "latency_ms": ((1.0, 0.5), (1.0, 0.5)),
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"damage": ((0.1, 0.5), (0.0,))}, "damage row of layer `blocks.1.fc` has 1 entries"),
        ({"size_bytes": ((8, 4),)}, "size_bytes has 1 rows but there are 2 layers"),
        ({"damage": ((0.1, 0.5), (0.0, float("nan")))}, "`blocks.1.fc`, setting 'W4': damage"),
        ({"size_bytes": ((8, 4), (-8, 4))}, "`blocks.1.fc`, setting 'W8': size_bytes must be"),
        ({"size_bytes": ((8, 4), (8, 4.5))}, "`blocks.1.fc`, setting 'W4': size_bytes must be"),
        ({"latency_ms": ((1.0, 0.5), (1.0, -1.0))}, "`blocks.1.fc`, setting 'W4': latency_ms"),
        ({"damage": ((0.1, None), (0.0, 0.2))}, "`blocks.0.fc`, setting 'W4': damage is None"),
        (
            {
                "damage": ((0.1, 0.5), (None, None)),
                "size_bytes": ((8, 4), (None, None)),
                "latency_ms": ((1.0, 0.5), (None, None)),
            },
            "layer `blocks.1.fc` has no applicable setting",
        ),
        ({"layers": ("blocks.0.fc", "blocks.0.fc")}, r"layers are listed more than once"),
        ({"layers": ()}, "at least one entry in layers"),
        ({"base_size_bytes": -1}, "base_size_bytes must be a non-negative integer"),
        ({"base_latency_ms": float("inf")}, "base_latency_ms must be a finite"),
    ],
)
def test_validation_names_the_layer_and_setting(change: dict, message: str) -> None:
    with pytest.raises(SearchError, match=message):
        SensitivityTable(**{**GOOD, **change})
    SensitivityTable(**GOOD)
