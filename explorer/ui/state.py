"""Session state of the app: the run id in the page URL, the model a run works on, the shared
model contexts, the results store, and the sweep processes that outlive a page rerun.

Every browser session works under a *run id* kept in the URL (``?run=...``): its uploads live in
``<cache>/runs/<run id>/`` and the rows computed from them are stored with that run id as owner,
so a reload returns to them and another session never sees them. Rows of the built-in models on
their own data are computed identically for everyone and shared (owner ``""``).

This is the only package besides the pages that imports streamlit. Importing this module does not
import torch (the model contexts and sweep processes are imported where first used), so the Model
page can draw its picker before torch loads.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from explorer import paths
from explorer.models.catalog import BUILTIN_NAMES, DEFAULT_MODEL, ModelSource
from explorer.sweep.store import ResultStore

if TYPE_CHECKING:
    from explorer.sweep.context import ModelContext
    from explorer.sweep.space import PlanEntry
    from explorer.sweep.worker import SweepProcess

CACHE_DIR = paths.cache_dir()  # tests point it elsewhere; see explorer.paths for the default
STORE_ENV = paths.STORE_ENV
RUN_ID = re.compile(r"[0-9a-f]{12}")
SELECTED_ROW = "selected_row"


# --- the run id -----------------------------------------------------------------------------


def run_id() -> str:
    """This session's run id, from the URL, else from the session (page switches drop the
    query string), else a new one; it is always written back into the URL."""
    current = st.query_params.get("run")
    if not (isinstance(current, str) and RUN_ID.fullmatch(current)):
        remembered = st.session_state.get("run_id")
        current = remembered if isinstance(remembered, str) else secrets.token_hex(6)
        st.query_params["run"] = current
    st.session_state["run_id"] = current
    return current


def run_dir(rid: str | None = None) -> Path:
    rid = rid or run_id()
    if not RUN_ID.fullmatch(rid):
        raise ValueError(f"bad run id {rid!r}")
    path = CACHE_DIR / "runs" / rid
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run_file(rid: str | None = None) -> Path:
    return run_dir(rid) / "run.json"


def run_settings(rid: str | None = None) -> dict[str, Any]:
    """What a run remembers across reloads (its model source, selected rows)."""
    path = _run_file(rid)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def save_run_settings(changes: dict[str, Any], rid: str | None = None) -> None:
    path = _run_file(rid)
    data = {**run_settings(rid), **changes}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)


# --- the model ------------------------------------------------------------------------------


def current_source() -> ModelSource:
    """The run's model (the default built-in until the user picks another)."""
    stored = run_settings().get("source")
    if isinstance(stored, dict):
        try:
            source = ModelSource.from_dict(stored)
            if source.model in BUILTIN_NAMES or source.model is None or Path(source.model).exists():
                return source
        except TypeError:
            pass
    return ModelSource(model=DEFAULT_MODEL)


def set_source(source: ModelSource) -> None:
    save_run_settings({"source": source.to_dict(), SELECTED_ROW: None})


def owner_for(source: ModelSource) -> str:
    """``""`` (shared) for a built-in model on its own data; the run id for anything uploaded."""
    shared = source.model in BUILTIN_NAMES and source.weights is None and source.data is None
    return "" if shared else run_id()


@st.cache_resource(show_spinner="Loading the model ...", max_entries=8)
def _context(source_json: str) -> ModelContext:
    from explorer.sweep.context import open_context

    return open_context(ModelSource.from_dict(json.loads(source_json)))


def context(source: ModelSource | None = None) -> ModelContext:
    """The shared, cached context of a model source (never mutated by the app)."""
    source = source or current_source()
    return _context(json.dumps(source.to_dict(), sort_keys=True))


@st.cache_resource(max_entries=8)
def _default_sweep(source_json: str) -> list[PlanEntry]:
    from explorer.sweep.default import default_entries

    return default_entries(_context(source_json).model)[0]


def default_sweep(source: ModelSource | None = None) -> list[PlanEntry]:
    """The default sweep's entries (`explorer.sweep.default`) resolved against a model source's
    model, expanded once per model rather than on every rerun of the Model page."""
    source = source or current_source()
    return _default_sweep(json.dumps(source.to_dict(), sort_keys=True))


# --- the store and the sweeps ----------------------------------------------------------------


def store_path() -> Path:
    return paths.store_path(CACHE_DIR)


@st.cache_resource
def _store(path: str) -> ResultStore:
    return ResultStore(path)


def store() -> ResultStore:
    return _store(str(store_path()))


@st.cache_resource
def jobs_by_run() -> dict[str, SweepProcess]:
    """Sweep processes by run id, kept by the server process, so reruns never lose them."""
    return {}


def job(rid: str | None = None) -> SweepProcess | None:
    return jobs_by_run().get(rid or run_id())


def start_job(process: SweepProcess, rid: str | None = None) -> SweepProcess:
    rid = rid or run_id()
    running = jobs_by_run().get(rid)
    if running is not None and running.alive and not running.finished:
        raise RuntimeError("a sweep is already running in this session; cancel it first")
    jobs_by_run()[rid] = process.start()
    return process


def rows_for(source: ModelSource | None = None) -> list[dict[str, Any]]:
    """Stored rows of the run's model that this session may see, oldest first."""
    source = source or current_source()
    ctx = context(source)
    owner = owner_for(source)
    return store().rows(owner=owner, where={"model_fingerprint": ctx.fingerprint})


def selected_row_key() -> str | None:
    value = run_settings().get(SELECTED_ROW)
    return value if isinstance(value, str) else None


def select_row(key: str | None) -> None:
    save_run_settings({SELECTED_ROW: key})
