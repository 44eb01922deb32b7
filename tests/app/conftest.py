"""Fixtures of the page tests (AppTest): a cache and a results store of their own, and a store
holding a real sweep of digits-cnn.

The page tests open on digits-cnn, the smallest built-in model (a real sweep of it takes
seconds), rather than on the app's default model: both fixtures make it the default for the run.
`real_default` undoes that, for the tests of what a new user's first open shows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from explorer.models import catalog
from explorer.sweep.context import ModelSource, open_context
from explorer.sweep.runner import RunSettings, run_sweep
from explorer.sweep.space import SweepSpec, expand
from explorer.sweep.store import ResultStore
from explorer.ui import state

FAST = RunSettings(repeats=3, n_boot=200)
PAGE_MODEL = "digits-cnn"
APP_DEFAULT = catalog.DEFAULT_MODEL
SPEC = SweepSpec(weight_bits=(8, 4), granularity=("channel",))


def _use_dirs(mp: pytest.MonkeyPatch, cache: Path, store: Path) -> None:
    """Point the app's cache and results store at ``cache`` and ``store``, and open new runs on
    `PAGE_MODEL`."""
    mp.setenv("EXPLORER_CACHE", str(cache))
    mp.setenv("EXPLORER_STORE", str(store))
    mp.setattr(state, "CACHE_DIR", cache)
    _default_model(mp, PAGE_MODEL)


def _default_model(mp: pytest.MonkeyPatch, name: str) -> None:
    # The Model page reads the catalog's name when it runs, the session state its own import.
    mp.setattr(catalog, "DEFAULT_MODEL", name)
    mp.setattr(state, "DEFAULT_MODEL", name)


@pytest.fixture
def app_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    """An empty cache and store for one test; sweeps it started are stopped afterwards."""
    cache, store = tmp_path / "cache", tmp_path / "results.sqlite"
    _use_dirs(monkeypatch, cache, store)
    yield {"cache": cache, "store": store}
    jobs = state.jobs_by_run()
    for rid in list(jobs):
        jobs.pop(rid).terminate()


@pytest.fixture
def real_default(app_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """`app_env` with the app's own default model, as a new user gets it."""
    _default_model(monkeypatch, APP_DEFAULT)
    return app_env


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A cache and a store holding a real sweep of digits-cnn (fp32, bf16, W8 and W4
    per-channel); the store path is shared by the page tests, so the sweep runs once."""
    base = tmp_path_factory.getbasetemp() / "app-pages"
    cache, store_path = base / "cache", base / "results.sqlite"
    ctx = open_context(ModelSource(model="digits-cnn"))
    entries, _ = expand(SPEC, ctx.model)
    with ResultStore(store_path) as store:
        events = list(run_sweep(ctx, entries, store, settings=FAST, owner=""))
    rows = {e.row["label"]: e.row for e in events if e.kind in ("row", "cached")}
    assert len(rows) == len(entries)
    with pytest.MonkeyPatch.context() as mp:
        _use_dirs(mp, cache, store_path)
        yield {"rows": rows, "cache": cache, "store": store_path, "fingerprint": ctx.fingerprint}
