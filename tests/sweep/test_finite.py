"""`finite_or_none`: the one JSON-safe form of results (store, CLI, what-if cache, sensitivity)."""

from __future__ import annotations

import json
import math

from explorer.sweep.store import finite_or_none


def test_non_finite_floats_become_none_at_any_depth_and_tuples_become_lists() -> None:
    value = {
        "sqnr": math.inf,
        "kl": -math.inf,
        "drop": math.nan,
        "acc": 0.25,
        "n": 3,
        "label": "w4",
        "ci": (0.1, math.inf),
        "layers": [{"sqnr": math.nan}, {"sqnr": 12.5}],
    }
    out = finite_or_none(value)
    assert out == {
        "sqnr": None,
        "kl": None,
        "drop": None,
        "acc": 0.25,
        "n": 3,
        "label": "w4",
        "ci": [0.1, None],
        "layers": [{"sqnr": None}, {"sqnr": 12.5}],
    }
    json.dumps(out, allow_nan=False)  # raises on any NaN or infinity left


def test_scalars_pass_through() -> None:
    assert finite_or_none(math.inf) is None
    assert finite_or_none(None) is None
    assert finite_or_none(-3.5) == -3.5
