"""The results store keeps every committed row through concurrent writers and killed sweeps, and
refuses (without touching) any file it did not create."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from explorer.errors import ExplorerError
from explorer.sweep import store as store_module
from explorer.sweep.store import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    ResultStore,
    StoreError,
    flatten_row,
    row_key,
)

PARTS: dict[str, Any] = {
    "model_fingerprint": "m-3f2a",
    "data_fingerprint": "d-91bc",
    "plan": {"blocks.0.fc1": {"weight_bits": 4, "granularity": "group", "group_size": 32}},
    "qat_steps": 100,
    "seeds": [0, 1],
    "calibration_samples": 64,
    "kernel_policy": "fastest",
    "env": {"device": "cpu", "torch": "2.13.0", "threads": 4},
}


def _row(i: int) -> dict[str, Any]:
    return {
        "config": json.dumps({"weight_bits": 4 + i % 2}),
        "size_bytes": 1000 + i,
        "metrics": {"accuracy": 0.5 + i / 1000, "sqnr_db": 20.0 + i},
        "metrics_ci": {"accuracy": [-0.01 * i, 0.002]},
        "per_layer": [{"name": "fc1", "bits": 4}, {"name": "fc2", "bits": 8}],
        "pareto": i % 3 == 0,
        "note": "é" * (i % 5),
    }


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "results" / "store.sqlite"  # the parent does not exist yet


# --- row_key ------------------------------------------------------------------------------------


def test_row_key_does_not_depend_on_the_order_of_parts() -> None:
    shuffled = {k: PARTS[k] for k in reversed(list(PARTS))}
    shuffled["env"] = {k: PARTS["env"][k] for k in reversed(list(PARTS["env"]))}
    assert list(shuffled) != list(PARTS)
    assert row_key(shuffled) == row_key(PARTS)
    assert len(row_key(PARTS)) == 64 and int(row_key(PARTS), 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"qat_steps": 200},
        {"calibration_samples": 128},
        {"seeds": [0, 2]},
        {"kernel_policy": "reference"},
        {"model_fingerprint": "m-3f2b"},
        {"data_fingerprint": "d-91bd"},
        {"env": {**PARTS["env"], "threads": 8}},
        {"plan": {"blocks.0.fc1": {"weight_bits": 4, "granularity": "group", "group_size": 64}}},
    ],
)
def test_row_key_changes_when_any_part_changes(change: dict[str, Any]) -> None:
    changed = {**PARTS, **change}
    assert changed != PARTS
    assert row_key(changed) != row_key(PARTS)


def test_row_key_hashes_canonical_json_with_the_schema_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    canonical = json.dumps(
        {**PARTS, "schema": 1}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert row_key(PARTS) == hashlib.sha256(canonical.encode()).hexdigest()
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 2)
    assert row_key(PARTS) != hashlib.sha256(canonical.encode()).hexdigest()
    with pytest.raises(StoreError, match="'schema' is reserved"):
        row_key({**PARTS, "schema": 1})


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_row_key_rejects_non_finite_floats_and_names_the_part(bad: float) -> None:
    with pytest.raises(StoreError, match=r"`plan\.scales\.1` is NaN or infinite"):
        row_key({**PARTS, "plan": {"scales": [0.5, bad]}})
    assert issubclass(StoreError, ExplorerError)


# --- put / get / rows / keys / delete -----------------------------------------------------------


def test_put_get_has_keys_rows_delete_round_trip(store_path: Path) -> None:
    key = row_key(PARTS)
    with ResultStore(store_path) as store:
        assert store.path == store_path and store_path.exists()
        assert store.get(key) is None and not store.has(key) and store.keys() == set()
        store.put(key, _row(1), parts=PARTS, owner="run-1", sweep="s1")
        store.put("other", _row(2))
        assert store.get(key) == _row(1)
        assert store.has(key) and store.keys() == {key, "other"}
        first, second = store.rows()
        assert {k: first[k] for k in ("key", "owner", "sweep")} == {
            "key": key,
            "owner": "run-1",
            "sweep": "s1",
        }
        assert first["created_at"].endswith("+00:00")
        assert {k: v for k, v in first.items() if k in _row(1)} == _row(1)
        assert second["key"] == "other" and second["owner"] == "" and second["sweep"] == ""
        assert store.delete(key) is True
        assert store.delete(key) is False
        assert store.get(key) is None and store.keys() == {"other"}


def test_rows_filter_by_owner_sweep_and_key_parts(store_path: Path) -> None:
    with ResultStore(store_path) as store:
        for i, (owner, fingerprint) in enumerate(
            [("alice", "abc"), ("bob", "abc"), ("", "abc"), ("alice", "xyz"), ("", "xyz")]
        ):
            parts = {**PARTS, "model_fingerprint": fingerprint, "qat_steps": 100 * i}
            store.put(f"k{i}", _row(i), parts=parts, owner=owner, sweep=f"sweep-{i % 2}")

        def keys(**filters: Any) -> list[str]:
            return [r["key"] for r in store.rows(**filters)]

        assert keys() == ["k0", "k1", "k2", "k3", "k4"]
        assert keys(owner="alice") == ["k0", "k3"]
        assert keys(owner="") == ["k2", "k4"]
        assert store.keys(owner="bob") == {"k1"} and store.keys(owner="") == {"k2", "k4"}
        assert keys(sweep="sweep-1") == ["k1", "k3"]
        assert keys(where={"model_fingerprint": "abc"}) == ["k0", "k1", "k2"]
        assert keys(where={"model_fingerprint": "xyz"}, owner="") == ["k4"]
        assert keys(where={"model_fingerprint": "abc", "kernel_policy": "fastest"}) == [
            "k0",
            "k1",
            "k2",
        ]
        assert keys(where={"qat_steps": 300}) == ["k3"]
        assert keys(where={"model_fingerprint": "nope"}) == []
        for field in ["env.threads", "x') OR 1=1 --", ""]:
            with pytest.raises(StoreError, match="cannot filter on key part"):
                store.rows(where={field: "abc"})


def test_put_with_an_existing_key_replaces_the_row_and_moves_it_last(store_path: Path) -> None:
    with ResultStore(store_path) as store:
        store.put("a", _row(1), owner="run-1")
        store.put("b", _row(2))
        store.put("a", _row(3), owner="run-2")
        rows = store.rows()
    assert [r["key"] for r in rows] == ["b", "a"]
    assert rows[1]["size_bytes"] == _row(3)["size_bytes"] and rows[1]["owner"] == "run-2"


def test_non_finite_floats_come_back_as_none(store_path: Path) -> None:
    row = {"loss": math.nan, "metrics": {"perplexity": math.inf, "kl": 0.5}, "ci": [-math.inf, 1.0]}
    with ResultStore(store_path) as store:
        store.put("k", row)
        assert store.get("k") == {
            "loss": None,
            "metrics": {"perplexity": None, "kl": 0.5},
            "ci": [None, 1.0],
        }
        with pytest.raises(StoreError, match="NaN or infinite"):
            store.put("k2", _row(0), parts={"scale": math.nan})
        with pytest.raises(StoreError, match="plain JSON values"):
            store.put("k3", {"model": object()})
        assert store.keys() == {"k"}


def test_a_closed_store_says_so(store_path: Path) -> None:
    store = ResultStore(store_path)
    store.close()
    store.close()
    with pytest.raises(StoreError, match="is closed"):
        store.get("k")
    with pytest.raises(StoreError, match="is closed"):
        store.put("k", _row(0))


# --- persistence and foreign files --------------------------------------------------------------


def test_rows_persist_across_reopen_in_wal_mode(store_path: Path) -> None:
    with ResultStore(store_path) as store:
        for i in range(3):
            store.put(f"k{i}", _row(i), parts={"i": i})
        before = store.rows()
        raw = sqlite3.connect(store_path)
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert raw.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
        assert raw.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        raw.close()
    with ResultStore(store_path) as store:
        assert store.rows() == before
        assert store.get("k2") == _row(2)


@pytest.mark.parametrize("make", ["zero_bytes", "empty_sqlite"])
def test_an_empty_file_is_initialised(tmp_path: Path, make: str) -> None:
    path = tmp_path / "store.sqlite"
    if make == "zero_bytes":
        path.touch()
    else:
        raw = sqlite3.connect(path)
        raw.execute("CREATE TABLE scratch (x)")
        raw.execute("DROP TABLE scratch")
        raw.close()
        assert path.stat().st_size > 0
    with ResultStore(path) as store:
        store.put("k", _row(0))
    with ResultStore(path) as store:
        assert store.get("k") == _row(0)


def _random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(8192))


def _text_file(path: Path) -> None:
    path.write_text("model,accuracy\ndigits-cnn,0.98\n")


def _foreign_database(path: Path) -> None:
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE users (name TEXT, email TEXT)")
    raw.execute("INSERT INTO users VALUES ('ada', 'ada@example.org')")
    raw.commit()
    raw.close()


def _other_application(path: Path) -> None:
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA application_id = 305419896")  # 0x12345678
    raw.execute("CREATE TABLE rows (key TEXT PRIMARY KEY)")
    raw.commit()
    raw.close()


def _full_store(path: Path) -> None:
    with ResultStore(path) as store:
        for i in range(200):
            store.put(f"k{i}", _row(i), parts={"i": i})
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw.close()
    assert not path.with_name(path.name + "-wal").exists()


def _truncated_store(path: Path) -> None:
    _full_store(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _store_with_garbage_page(path: Path) -> None:
    _full_store(path)
    data = bytearray(path.read_bytes())
    page = 4096
    last = len(data) - page
    data[last + 8 : last + 2048] = random.Random(1).randbytes(2040)
    path.write_bytes(bytes(data))


def _newer_store(path: Path) -> None:
    ResultStore(path).close()
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 99")
    raw.close()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_random_bytes, r"is not a results store: it is not an SQLite database"),
        (_text_file, r"is not a results store: it is not an SQLite database"),
        (_foreign_database, r"is a foreign SQLite database \(application_id 0x0, tables: users\)"),
        (_other_application, r"is a foreign SQLite database \(application_id 0x12345678"),
        (_truncated_store, r"is not a results store: it is corrupt"),
        (_store_with_garbage_page, r"is a corrupt results store \(integrity check"),
        (_newer_store, r"written by a newer version .*store schema 99"),
    ],
    ids=lambda v: getattr(v, "__name__", "")[1:] or None,
)
def test_refuses_a_file_it_did_not_create_and_leaves_it_unchanged(
    tmp_path: Path, make: Callable[[Path], None], message: str
) -> None:
    path = tmp_path / "store.sqlite"
    make(path)
    before = _sha(path)
    with pytest.raises(StoreError, match=message) as info:
        ResultStore(path, timeout_s=2)
    text = str(info.value)
    assert str(path) in text and "\n" not in text
    assert "--store" in text
    assert _sha(path) == before


# --- concurrency and crashes --------------------------------------------------------------------


def _put_rows(path: str, owner: str, n: int, barrier: Any) -> None:
    barrier.wait(timeout=60)
    with ResultStore(path) as store:  # both processes may be the one that creates the file
        for i in range(n):
            store.put(f"{owner}-{i}", _row(i), parts={"owner": owner, "i": i}, owner=owner)


def test_two_processes_write_to_one_store_at_once(store_path: Path) -> None:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    workers = [
        ctx.Process(target=_put_rows, args=(str(store_path), owner, 50, barrier))
        for owner in ("a", "b")
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    with ResultStore(store_path) as store:
        assert len(store.keys()) == 100
        for owner in ("a", "b"):
            rows = store.rows(owner=owner)
            assert [r["key"] for r in rows] == [f"{owner}-{i}" for i in range(50)]
            assert all(store.get(r["key"]) == _row(i) for i, r in enumerate(rows))


def test_two_threads_share_one_store(store_path: Path) -> None:
    errors: list[BaseException] = []
    with ResultStore(store_path) as store:

        def work(owner: str) -> None:
            try:
                for i in range(50):
                    store.put(f"{owner}-{i}", _row(i), owner=owner)
                    if i % 10 == 0:
                        store.rows(owner=owner)
            except BaseException as e:  # reported by the assertion below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(owner,)) for owner in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert store.keys() == {f"{o}-{i}" for o in ("a", "b") for i in range(50)}


def _put_slowly(path: str, n: int, delay_s: float) -> None:
    with ResultStore(path) as store:
        for i in range(n):
            store.put(f"row-{i:02d}", _row(i), parts={"i": i})
            time.sleep(delay_s)


def test_a_killed_sweep_keeps_every_committed_row(store_path: Path) -> None:
    ResultStore(store_path).close()
    worker = mp.get_context("spawn").Process(target=_put_slowly, args=(str(store_path), 20, 0.1))
    worker.start()
    try:
        deadline = time.monotonic() + 60
        with ResultStore(store_path) as watcher:
            while len(watcher.keys()) < 5:
                assert worker.is_alive() and time.monotonic() < deadline
                time.sleep(0.005)
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        worker.join(30)
        if worker.is_alive():
            worker.kill()
    assert worker.exitcode == -signal.SIGKILL
    assert store_path.with_name(store_path.name + "-wal").exists()  # never closed: recovery
    with ResultStore(store_path) as store:
        keys = sorted(store.keys())
        assert 5 <= len(keys) < 20
        assert keys == [f"row-{i:02d}" for i in range(len(keys))]
        assert all(store.get(key) == _row(i) for i, key in enumerate(keys))
        store.put("after", _row(0))
    raw = sqlite3.connect(store_path)
    assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    texts = [t for (t,) in raw.execute("SELECT row FROM rows")]
    raw.close()
    assert [json.loads(t) for t in texts] and all(isinstance(json.loads(t), dict) for t in texts)


def test_put_waits_for_another_writer_and_gives_up_after_the_timeout(store_path: Path) -> None:
    ResultStore(store_path).close()
    blocker = sqlite3.connect(store_path, isolation_level=None, check_same_thread=False)
    try:
        with ResultStore(store_path, timeout_s=5) as store:
            blocker.execute("BEGIN IMMEDIATE")
            release = threading.Timer(0.3, blocker.execute, args=("COMMIT",))
            start = time.monotonic()
            release.start()
            store.put("k", _row(0))
            assert time.monotonic() - start >= 0.25
            release.join()
            assert store.get("k") == _row(0)
        with ResultStore(store_path, timeout_s=0.3) as store:
            blocker.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreError, match="stayed locked by another writer for 0.3 s"):
                store.put("k2", _row(0))
            blocker.execute("ROLLBACK")
            assert store.keys() == {"k"}
    finally:
        blocker.close()


def test_retries_a_write_that_sqlite_refuses_at_once(store_path: Path) -> None:
    # Some conflicts (WAL recovery by another process) skip SQLite's busy handler.
    attempts: list[float] = []

    def flaky() -> str:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "done"

    with ResultStore(store_path, timeout_s=5) as store:
        assert store._retry("store a row", flaky) == "done"
        assert len(attempts) == 3
        memory = sqlite3.connect(":memory:")
        with pytest.raises(StoreError, match="cannot store a row .*no such table"):
            store._retry("store a row", lambda: memory.execute("SELECT * FROM missing"))
        memory.close()


def test_a_directory_or_a_bad_timeout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a directory"):
        ResultStore(tmp_path)
    with pytest.raises(StoreError, match="positive number of seconds"):
        ResultStore(tmp_path / "s.sqlite", timeout_s=0)


# --- export -------------------------------------------------------------------------------------


def test_export_json_round_trips(store_path: Path, tmp_path: Path) -> None:
    with ResultStore(store_path) as store:
        for i in range(3):
            store.put(f"k{i}", _row(i), owner="run")
        store.put("nan", {"metrics": {"perplexity": math.nan}})
        out = store.export_json(tmp_path / "exports" / "rows.json")
        with out.open(encoding="utf-8") as f:
            data = json.load(f)
        assert data == {"schema": SCHEMA_VERSION, "rows": store.rows()}
        assert data["rows"][3]["metrics"] == {"perplexity": None}
        subset = store.export_json(out, rows=[{"x": math.inf}])
        assert json.loads(subset.read_text()) == {"schema": 1, "rows": [{"x": None}]}
        assert sorted(p.name for p in out.parent.iterdir()) == ["rows.json"]  # no temp files
        with pytest.raises(StoreError, match="over the results store itself"):
            store.export_json(store_path)


def test_export_csv_flattens_rows(store_path: Path, tmp_path: Path) -> None:
    with ResultStore(store_path) as store:
        store.put("k0", _row(0))
        store.put("k1", {**_row(1), "latency_ms": 1.25, "model": "=HYPERLINK(1)"})
        store.put("k2", {"metrics": {"perplexity": math.inf}, "delta": -0.5})
        out = store.export_csv(tmp_path / "rows.csv")
        text = out.read_bytes().decode("utf-8")
        assert text == store.to_csv_text()
    header = next(csv.reader(io.StringIO(text)))
    assert header[:8] == [
        "config",
        "size_bytes",
        "metrics.accuracy",
        "metrics.sqnr_db",
        "metrics_ci.accuracy.lo",
        "metrics_ci.accuracy.hi",
        "per_layer",
        "pareto",
    ]
    assert {"key", "owner", "created_at", "latency_ms", "metrics.perplexity"} <= set(header)
    assert len(header) == len(set(header))
    records = list(csv.DictReader(io.StringIO(text)))
    assert len(records) == 3
    first, second, third = records
    assert float(second["metrics_ci.accuracy.lo"]) == -0.01
    assert float(second["metrics_ci.accuracy.hi"]) == 0.002
    assert json.loads(first["per_layer"]) == _row(0)["per_layer"]
    assert first["latency_ms"] == "" and second["latency_ms"] == "1.25"
    assert second["model"] == "'=HYPERLINK(1)"  # a spreadsheet must not run it
    assert third["metrics.perplexity"] == "" and third["delta"] == "-0.5"
    assert third["key"] == "k2"


def test_flatten_row_splits_only_intervals_and_encodes_deeper_values() -> None:
    flat = flatten_row(
        {
            "metrics_ci": {"accuracy": [0.1, None], "kl": [1, 2, 3]},
            "latency_ms_ci": [1.0, 2.0],
            "config": {"fc1": {"bits": 4}, "bits": [8, 4]},
            "shape": [3, 4],
        }
    )
    assert flat == {
        "metrics_ci.accuracy.lo": 0.1,
        "metrics_ci.accuracy.hi": None,
        "metrics_ci.kl": "[1, 2, 3]",
        "latency_ms_ci.lo": 1.0,
        "latency_ms_ci.hi": 2.0,
        "config.fc1": '{"bits": 4}',
        "config.bits": "[8, 4]",
        "shape": "[3, 4]",
    }
