"""Faults in the results store (issue 18): a store that cannot be written, and damaged rows with
the ``explorer store check|repair|delete-row`` command that deals with them.

A read-only store is a write-protected file, in a subprocess that cannot ignore file modes (root
drops that capability with ``setpriv``), and, in process, a store whose connection SQLite opens
read-only (``mode=ro``), as it does for a file it may not write.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from explorer.sweep import runner
from explorer.sweep.store import ResultStore, StoreError

from .cli_driver import FAST, REPO, assert_one_line_error, count_evaluations, run_cli

SWEEP = ("sweep", "--model", "digits-cnn", "--bits", "8", "--granularity", "channel", *FAST)
COLUMNS = "key, owner, sweep, parts, CAST(row AS BLOB), created_at, seq"


@pytest.fixture
def evaluations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return count_evaluations(monkeypatch)


def digest(path: Path) -> str:
    """sha256 of the store file and of the write-ahead log beside it, if that holds anything:
    'unchanged' means these bytes. (A reader may leave an empty log file behind.)"""
    h = hashlib.sha256(path.read_bytes())
    wal = path.with_name(path.name + "-wal")
    h.update(wal.read_bytes() if wal.exists() else b"")
    return h.hexdigest()


def connect(path: Path) -> contextlib.closing[sqlite3.Connection]:
    """A plain connection, closed on exit (so its log is checkpointed before bytes are read)."""
    return contextlib.closing(sqlite3.connect(path, isolation_level=None))


def raw_rows(path: Path, table: str = "rows") -> dict[str, tuple[Any, ...]]:
    """Every column of every row as stored, row text as bytes, by key."""
    with connect(path) as conn:
        return {r[0]: r for r in conn.execute(f"SELECT {COLUMNS} FROM {table} ORDER BY seq")}


def make_store(path: Path, n: int = 6) -> list[str]:
    keys = [f"{i:064x}" for i in range(1, n + 1)]
    with ResultStore(path) as store:
        for i, key in enumerate(keys):
            store.put(key, {"label": f"row {i}", "metrics": {"accuracy": i / 10}}, parts={"i": i})
    return keys


def damage(path: Path, updates: dict[str, bytes | str]) -> None:
    with connect(path) as conn:
        for key, text in updates.items():
            value = text if isinstance(text, str) else sqlite3.Binary(text)
            conn.execute("UPDATE rows SET row = CAST(? AS TEXT) WHERE key = ?", (value, key))


def read_only_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every store connection opens read-only, as SQLite opens a file it may not write."""
    connect = sqlite3.connect

    def read_only(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        if isinstance(database, Path):
            kwargs["uri"] = True
            database = database.resolve().as_uri() + "?mode=ro"
        return connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", read_only)


# --- a store that cannot be written -------------------------------------------------------------


def test_a_read_only_store_is_refused_before_any_row_is_evaluated(
    evaluations: list[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.sqlite"
    make_store(path, n=2)
    before = digest(path)
    read_only_sqlite(monkeypatch)
    code, out, err = run_cli(*SWEEP, "--store", str(path), "--json")
    assert_one_line_error(
        code,
        out,
        err,
        f"explorer sweep: error: the results store {path} is read-only (attempt to write a "
        "readonly database); make the file and its folder writable, or choose another --store path",
    )
    assert evaluations == []  # before the fix: fp32 was evaluated, then the store write failed
    assert digest(path) == before


def test_run_sweep_checks_the_store_before_its_first_evaluation(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "r.sqlite"
    make_store(path, n=1)
    read_only_sqlite(monkeypatch)
    with ResultStore(path) as store:
        events = runner.run_sweep(None, [], store)  # type: ignore[arg-type]
        with pytest.raises(StoreError, match="is read-only"):
            next(events)


def _without_root_powers() -> list[str]:
    """A command prefix under which file modes hold: none for a normal user; for root, dropping
    the capabilities that let it write any file (``setpriv``, util-linux), else skip."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root ignores file modes and setpriv is not installed to drop that power")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


@pytest.mark.slow
def test_a_write_protected_store_file_is_refused_before_any_row_is_evaluated(
    tmp_path: Path,
) -> None:
    prefix = _without_root_powers()
    path = tmp_path / "r.sqlite"
    make_store(path, n=2)
    before = digest(path)
    path.chmod(0o444)
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "explorer.cli", *SWEEP, "--store", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    # one line and no progress bar: the sweep stopped before the model loaded (before the fix,
    # fp32 was evaluated, then storing it failed)
    assert_one_line_error(
        done.returncode,
        done.stdout,
        done.stderr,
        f"explorer sweep: error: the results store {path} is read-only",
    )
    assert digest(path) == before


def test_the_write_probe_leaves_a_writable_store_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    make_store(path, n=3)
    before = digest(path)
    with ResultStore(path) as store:
        store.check_writable()
        store.check_writable()
    assert digest(path) == before


# --- damaged rows -----------------------------------------------------------------------------


DAMAGE = {
    1: "{not json",
    3: b"\xff\xfe{}",  # not UTF-8: must not fail the whole query
    4: "[1, 2]",
}


def test_store_check_lists_the_damaged_rows_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    keys = make_store(path)
    damage(path, {keys[i]: text for i, text in DAMAGE.items()})
    before = digest(path)
    code, out, err = run_cli("store", "check", "--store", str(path), "--json")
    assert code == 0, err
    doc = json.loads(out.splitlines()[-1])
    assert doc["rows"] == 6 and doc["quarantined"] == 0
    assert [d["key"] for d in doc["damaged"]] == [keys[1], keys[3], keys[4]]
    reasons = [d["reason"] for d in doc["damaged"]]
    assert reasons[0].startswith("the row is not valid JSON: Expecting property name")
    assert reasons[1].startswith("the row is not valid JSON")
    assert reasons[2] == "the row is a JSON list, not an object"
    code, out, _ = run_cli("store", "check", "--store", str(path))
    assert code == 0
    assert out.splitlines()[-1] == (
        f"6 rows, 3 damaged in {path}; `explorer store repair` moves them aside"
    )
    assert digest(path) == before


def test_store_repair_quarantines_damaged_rows_and_leaves_the_others_byte_identical(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.sqlite"
    keys = make_store(path)
    damage(path, {keys[i]: text for i, text in DAMAGE.items()})
    before = raw_rows(path)
    code, out, err = run_cli("store", "repair", "--store", str(path), "--json")
    assert code == 0, err
    doc = json.loads(out.splitlines()[-1])
    bad = [keys[i] for i in DAMAGE]
    assert [d["key"] for d in doc["quarantined"]] == bad and doc["rows"] == 3
    after = raw_rows(path)
    assert after == {k: v for k, v in before.items() if k not in bad}  # every byte of every column
    with connect(path) as conn:
        quarantined = {
            r[0]: r[:7]
            for r in conn.execute(f"SELECT {COLUMNS}, reason FROM quarantine ORDER BY seq")
        }
    assert quarantined == {k: before[k] for k in bad}  # kept as they were, for inspection
    with ResultStore(path) as store:
        assert [r["label"] for r in store.rows()] == ["row 0", "row 2", "row 5"]
        assert store.damaged() == []
    code, out, err = run_cli("store", "check", "--store", str(path), "--json")
    assert json.loads(out.splitlines()[-1])["quarantined"] == 3
    # a second repair finds nothing and changes nothing
    unchanged = digest(path)
    code, out, err = run_cli("store", "repair", "--store", str(path), "--json")
    assert code == 0 and json.loads(out.splitlines()[-1])["quarantined"] == []
    assert digest(path) == unchanged


def test_store_delete_row_removes_one_row_and_refuses_an_unknown_key(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    keys = make_store(path, n=3)
    before = raw_rows(path)
    code, out, err = run_cli("store", "delete-row", keys[1], "--store", str(path), "--json")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1]) == {"store": str(path), "deleted": keys[1]}
    assert raw_rows(path) == {k: v for k, v in before.items() if k != keys[1]}
    unchanged = digest(path)
    code, out, err = run_cli("store", "delete-row", keys[1], "--store", str(path))
    assert_one_line_error(
        code,
        out,
        err,
        f"explorer store: error: there is no row '{keys[1]}' in {path}; `explorer store check` "
        "lists the damaged rows' keys",
    )
    assert digest(path) == unchanged


def test_store_commands_never_create_a_store(tmp_path: Path) -> None:
    path = tmp_path / "none.sqlite"
    for action in (("check",), ("repair",), ("delete-row", "0" * 64)):
        code, out, err = run_cli("store", *action, "--store", str(path))
        assert_one_line_error(code, out, err, f"there is no results store at {path}")
    assert not path.exists()
    code, out, err = run_cli("store")
    assert_one_line_error(code, out, err, "the following arguments are required: ACTION")


def test_a_damaged_row_stops_a_sweep_until_store_repair_which_re_evaluates_only_it(
    evaluations: list[str],
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.sqlite"
    code, out, err = run_cli(*SWEEP, "--store", str(path), "--json")
    assert code == 0, err
    assert evaluations == ["fp32", "bf16", "W8 channel sym ptq"]
    rows = {r["label"]: r["key"] for r in json.loads(out.splitlines()[-1])["rows"]}
    damage(path, {rows["bf16"]: '{"label": "bf16", "metrics": {'})
    kept = {k: v for k, v in raw_rows(path).items() if k != rows["bf16"]}
    before = digest(path)
    code, out, err = run_cli(*SWEEP, "--store", str(path))
    line = assert_one_line_error(
        code, out, err, f"the row {rows['bf16']} in the results store", progress=True
    )
    assert f"run `explorer store repair --store {path}` to move it aside" in line
    assert f"`explorer store delete-row {rows['bf16']} --store {path}`" in line
    assert digest(path) == before
    code, out, err = run_cli("store", "repair", "--store", str(path))
    assert code == 0, err
    evaluations.clear()
    code, out, err = run_cli(*SWEEP, "--store", str(path), "--json")
    assert code == 0, err
    assert evaluations == ["bf16"]
    doc = json.loads(out.splitlines()[-1])
    assert (doc["cached"], doc["evaluated"]) == (2, 1)
    assert {k: v for k, v in raw_rows(path).items() if k in kept} == kept
