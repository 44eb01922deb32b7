"""Non-dominated sets: which sweep results are worth looking at.

A result ``q`` *dominates* ``p`` when ``q`` is at least as good as ``p`` on every axis and strictly
better on at least one; the Pareto front is the set of results no other result dominates. Each
axis has a sense, ``"min"`` (size, latency, perplexity) or ``"max"`` (accuracy, SQNR). Copies of the
same point do not dominate each other, so every copy of a front point is on the front. A point with
a missing (None) or NaN coordinate is not comparable: it is never on the front and dominates
nothing.

Two axes use the sort sweep of Kung, Luccio and Preparata ("On finding the maxima of a set of
vectors", J. ACM 1975), O(n log n); three or more use the O(n^2) pairwise test, vectorized.

Imports: numpy and the standard library only.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

Sense = Literal["min", "max"]

SENSES: tuple[Sense, ...] = ("min", "max")

METRIC_SENSES: dict[str, Sense] = {
    "accuracy": "max",
    "cosine": "max",
    "agreement": "max",
    "sqnr_db": "max",
    "perplexity": "min",
    "kl": "min",
    "kl_p99": "min",
    "same_top": "max",
    "spearman": "max",
    "macro_f1": "max",
    "wer": "min",
}

_CHUNK = 512  # rows of the pairwise test at a time: bounds memory at _CHUNK * n * k booleans


def metric_sense(metric: str) -> Sense:
    """Whether a higher (``"max"``) or lower (``"min"``) value of a quality metric is better."""
    try:
        return METRIC_SENSES[metric]
    except KeyError:
        raise ValueError(
            f"unknown metric {metric!r}: cannot tell whether higher or lower is better; "
            f"known metrics: {sorted(METRIC_SENSES)}"
        ) from None


def pareto_mask(points: Sequence[Sequence[float | None]], senses: Sequence[Sense]) -> list[bool]:
    """True for each point that no other point dominates (see the module docstring).

    ``points[i][j]`` is point ``i`` on axis ``j``; ``senses[j]`` says whether axis ``j`` is
    minimized or maximized. Any number of axes works; two axes take O(n log n), more take O(n^2).
    """
    k = _check_senses(senses)
    for i, p in enumerate(points):
        if len(p) != k:
            raise ValueError(f"point {i} has {len(p)} coordinates but there are {k} senses")
    n = len(points)
    if n == 0:
        return []
    flip = np.array([1.0 if s == "min" else -1.0 for s in senses])
    values = np.array(
        [[math.nan if v is None else float(v) for v in p] for p in points], dtype=np.float64
    ).reshape(n, k)
    values = values * flip  # every axis minimized from here on
    valid = ~np.isnan(values).any(axis=1)
    idx = np.flatnonzero(valid)
    mask = np.zeros(n, dtype=bool)
    if idx.size:
        kept = _sweep_2d(values[idx]) if k == 2 else _pairwise(values[idx])
        mask[idx] = kept
    return mask.tolist()


def _check_senses(senses: Sequence[Sense]) -> int:
    if isinstance(senses, str):
        raise ValueError(f"senses must be a sequence of 'min'/'max', got the string {senses!r}")
    if len(senses) == 0:
        raise ValueError("at least one axis (sense) is needed to compare points")
    for j, s in enumerate(senses):
        if s not in SENSES:
            raise ValueError(f"sense of axis {j} must be 'min' or 'max', got {s!r}")
    return len(senses)


def _sweep_2d(v: np.ndarray) -> np.ndarray:
    """Non-dominated rows of ``v`` (n, 2), both axes minimized, none NaN.

    Sort by x then y. A point survives iff it has the least y among points sharing its x (else a
    same-x point beats it on y) and its y is below every y at a strictly smaller x (else that point
    is as good on y and strictly better on x).
    """
    x, y = v[:, 0], v[:, 1]
    order = np.lexsort((y, x))
    xs, ys = x[order], y[order]
    new_x = np.ones(len(xs), dtype=bool)
    new_x[1:] = xs[1:] != xs[:-1]
    starts = np.flatnonzero(new_x)
    group = np.cumsum(new_x) - 1
    group_min_y = ys[starts]  # sorted by y within a group, so the first is the least
    best_before = np.minimum.accumulate(group_min_y)
    below_earlier = np.empty(len(starts), dtype=bool)
    below_earlier[0] = True
    below_earlier[1:] = group_min_y[1:] < best_before[:-1]
    keep_sorted = (ys == group_min_y[group]) & below_earlier[group]
    keep = np.empty(len(xs), dtype=bool)
    keep[order] = keep_sorted
    return keep


def _pairwise(v: np.ndarray) -> np.ndarray:
    """Non-dominated rows of ``v`` (n, k), every axis minimized, none NaN."""
    n = len(v)
    dominated = np.zeros(n, dtype=bool)
    for start in range(0, n, _CHUNK):
        p = v[start : start + _CHUNK, None, :]  # (c, 1, k): the points tested
        q = v[None, :, :]  # (1, n, k): candidate dominators
        no_worse = (q <= p).all(axis=2)  # (c, n)
        better = (q < p).any(axis=2)  # (c, n)
        dominated[start : start + _CHUNK] = (no_worse & better).any(axis=1)
    return ~dominated


def flag_pareto(rows: Sequence[Mapping[str, Any]], axes: Sequence[tuple[str, Sense]]) -> list[bool]:
    """Pareto flags for result rows, one per row.

    Each axis is a dotted path into the row and a sense, e.g. ``("size_bytes", "min")``,
    ``("latency_ms", "min")``, ``("metrics.accuracy", "max")``. A row missing a value, or holding
    None or NaN there, is not on the front.
    """
    if len(axes) == 0:
        raise ValueError("at least one axis is needed to compare rows")
    for j, axis in enumerate(axes):
        if len(axis) != 2 or not isinstance(axis[0], str) or not axis[0]:
            raise ValueError(f"axis {j} must be a (dotted path, sense) pair, got {axis!r}")
    senses = [sense for _, sense in axes]
    _check_senses(senses)
    points = [[_numeric(row, path, i) for path, _ in axes] for i, row in enumerate(rows)]
    return pareto_mask(points, senses)


def front_order(rows: Sequence[Mapping[str, Any]], x: str, flags: Sequence[bool]) -> list[int]:
    """Indices of the flagged rows in increasing ``x`` (a dotted path), ties in row order: the order
    in which to join front points with a step line. Flagged rows without a value at ``x`` are
    left out."""
    if len(flags) != len(rows):
        raise ValueError(f"{len(flags)} flags for {len(rows)} rows")
    keyed = []
    for i, (row, flag) in enumerate(zip(rows, flags, strict=True)):
        if not flag:
            continue
        value = _numeric(row, x, i)
        if value is not None and not math.isnan(value):
            keyed.append((value, i))
    return [i for _, i in sorted(keyed)]


def row_value(row: Mapping[str, Any], path: str) -> Any:
    """The value at dotted ``path`` in a result row (``metrics.accuracy``), or None where any
    part of the path is missing."""
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _numeric(row: Mapping[str, Any], path: str, index: int) -> float | None:
    value = row_value(row, path)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"row {index}: {path!r} must be a number or missing, got {value!r}")
    return float(value)
