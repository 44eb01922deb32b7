"""The results store: one SQLite file holding every finished sweep row, keyed by what made it.

Why SQLite in WAL mode. A sweep writes one row at a time while the web app, the CLI and other sweeps
read the same file. In write-ahead-log mode readers never block the writer nor the writer the
readers, and writers take turns (a busy writer makes the next one wait up to ``timeout_s``). Every
finished row is committed in its own transaction, so a sweep killed at any moment loses at most the
row it was evaluating; SQLite's journal makes each commit all-or-nothing, and ``synchronous=NORMAL``
keeps commits cheap while a crash of the process (not of the machine) still loses nothing committed.
See https://www.sqlite.org/wal.html.

What the key covers. A row's numbers depend on the model (its fingerprint), the evaluation data
(its fingerprint), the plan (canonical JSON), the QAT budget, the seeds, the calibration sample
count, the kernel policy, the environment (CPU/GPU, torch version, threads) and the version of this
schema. The caller gathers those into a mapping of key *parts*; :func:`row_key` hashes their
canonical JSON (sorted keys, no whitespace) together with :data:`SCHEMA_VERSION`. A sweep skips a
configuration whose whole key is already stored, so a killed sweep resumes where it stopped and a
changed setting re-evaluates.

What is stored. Rows are JSON. A non-finite float (NaN, +-inf: a diverged QAT run, a perplexity that
overflowed) has no JSON form, so :meth:`ResultStore.put` stores it as ``null`` and reading it back
gives ``None``. Key parts must be finite: a key has to mean one thing.

A store never overwrites a file it did not create. Files are marked with ``PRAGMA application_id``
(:data:`APPLICATION_ID`) and ``PRAGMA user_version`` (:data:`SCHEMA_VERSION`). An existing file is
inspected through a read-only connection before anything is written to it, and refused with a
:class:`StoreError` unless it is one of ours (or an empty file, which is initialised). Reading a
WAL-mode database may leave the usual ``-wal`` and ``-shm`` files beside it; the file itself is
never changed.

Damaged rows. A row whose stored JSON does not parse, or is not an object (a disk error, a hand
edit), cannot be read back; a sweep that needs it stops with a message naming its key. The
maintenance methods find such rows (:meth:`ResultStore.damaged`) and move them, in one
transaction, into a ``quarantine`` table (:meth:`ResultStore.quarantine`), leaving every other
row as it was, byte for byte; ``explorer store check|repair|delete-row`` runs them.

Writability is checked before work (:meth:`ResultStore.check_writable`): SQLite opens a file it
may not write read-only without a word, and the first ``put`` (after a row was evaluated) would
be the first to fail.

This module imports only the standard library and :mod:`explorer.errors`.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import re
import shlex
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from explorer.errors import ExplorerError

SCHEMA_VERSION = 1
APPLICATION_ID = 0x51455850  # "QEXP"

_T = TypeVar("_T")
_TABLE = "rows"
_SCHEMA = (
    "CREATE TABLE rows (key TEXT PRIMARY KEY, owner TEXT NOT NULL, sweep TEXT NOT NULL,"
    " parts TEXT NOT NULL, row TEXT NOT NULL, created_at TEXT NOT NULL, seq INTEGER NOT NULL)",
    "CREATE INDEX rows_owner ON rows (owner)",
    "CREATE UNIQUE INDEX rows_seq ON rows (seq)",
)
_MOVE_AWAY = "choose another --store path or move the file away"
_QUARANTINE = "quarantine"
_QUARANTINE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS quarantine (key TEXT NOT NULL, owner TEXT NOT NULL,"
    " sweep TEXT NOT NULL, parts TEXT NOT NULL, row TEXT NOT NULL, created_at TEXT NOT NULL,"
    " seq INTEGER NOT NULL, reason TEXT NOT NULL, quarantined_at TEXT NOT NULL)"
)
# Rows are read as bytes so that text which is not UTF-8 is reported as a damaged row rather than
# failing the whole query.
_ROW_BYTES = "CAST(row AS BLOB)"
# `where` field names are spliced into a JSON path, so only plain identifiers are accepted.
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Spreadsheets run a cell that starts with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class StoreError(ExplorerError):
    """The results store cannot be opened, read or written; the message says what to do."""


def row_key(parts: Mapping[str, Any]) -> str:
    """sha256 hex digest of the canonical JSON of ``parts`` plus ``"schema": SCHEMA_VERSION``.

    Canonical means ``sort_keys=True, separators=(",", ":"), ensure_ascii=False``, so the key does
    not depend on the order the parts were assembled in. Floats are allowed; NaN and infinity are
    not (``StoreError``), nor is a part named ``schema``, which the store reserves.
    """
    if not isinstance(parts, Mapping):
        raise StoreError(f"key parts must be a mapping of names to values, got {type(parts)}")
    if "schema" in parts:
        raise StoreError(
            "key part 'schema' is reserved for the results store's schema version; "
            "rename that part (e.g. 'plan_schema')"
        )
    text = _canonical_json({**parts, "schema": SCHEMA_VERSION}, "key parts")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def flatten_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """One flat ``{column: cell}`` dict per row, for CSV.

    Nested dicts become dotted columns (``metrics.accuracy``). A confidence interval, i.e. a pair
    of numbers under a key ending in ``_ci`` (``metrics_ci.accuracy``, ``latency_ms_ci``), becomes
    two columns ``.lo`` and ``.hi``. Any other list (per-layer lists) and dicts nested deeper than
    two levels are JSON-encoded into one cell. Non-finite floats become empty cells.
    """
    flat: dict[str, Any] = {}
    for key, value in row.items():
        name = str(key)
        interval = name.endswith("_ci")
        if isinstance(value, Mapping):
            for sub, inner in value.items():
                _put_cell(flat, f"{name}.{sub}", inner, interval)
        else:
            _put_cell(flat, name, value, interval)
    return flat


class ResultStore:
    """Sweep rows in one SQLite file; safe to share between threads and processes.

    One connection per store, guarded by a lock, so the web app may call it from several threads.
    Every write is one ``BEGIN IMMEDIATE ... COMMIT`` transaction, retried while another writer
    holds the database, for at most ``timeout_s`` seconds.
    """

    path: Path

    def __init__(self, path: str | os.PathLike[str], *, timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self._timeout_s = float(timeout_s)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        if not self._timeout_s > 0:
            raise StoreError(f"store timeout must be a positive number of seconds, got {timeout_s}")
        if self.path.is_dir():
            raise StoreError(
                f"{self.path} is a directory; give --store a file path such as results.sqlite"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"cannot create the directory {self.path.parent} for the results store: {e}"
            ) from e
        if self.path.exists() and self.path.stat().st_size > 0:
            self._inspect_existing()
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=self._timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the results store {self.path}: {e}") from e
        try:
            with self._lock:
                self._retry("initialise the store", self._initialise)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- writing -----------------------------------------------------------------------------

    def put(
        self,
        key: str,
        row: Mapping[str, Any],
        *,
        parts: Mapping[str, Any] | None = None,
        owner: str = "",
        sweep: str = "",
    ) -> None:
        """Store one finished row in one transaction, replacing any row with the same key.

        ``parts`` are the key parts (kept as JSON for inspection and for ``rows(where=...)``),
        ``owner`` a run id ("" = shared), ``sweep`` a free-form sweep id. Non-finite floats in
        ``row`` are stored as ``None``. A replaced row moves to the end of the insertion order,
        since it is the newest evaluation.
        """
        _check_key(key)
        if not isinstance(row, Mapping):
            raise StoreError(f"a result row must be a mapping, got {type(row)}")
        for label, value in (("owner", owner), ("sweep", sweep)):
            if not isinstance(value, str):
                raise StoreError(f"{label} must be a string, got {value!r}")
        row_text = _encode_row(row)
        parts_text = _canonical_json(dict(parts or {}), "key parts")
        created_at = datetime.now(UTC).isoformat(timespec="milliseconds")

        def transaction() -> None:
            conn = self._open_conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                (seq,) = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM rows").fetchone()
                conn.execute(
                    "INSERT INTO rows (key, owner, sweep, parts, row, created_at, seq)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET owner = excluded.owner,"
                    " sweep = excluded.sweep, parts = excluded.parts, row = excluded.row,"
                    " created_at = excluded.created_at, seq = excluded.seq",
                    (key, owner, sweep, parts_text, row_text, created_at, seq),
                )
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise

        with self._lock:
            self._retry("store a row", transaction)

    def check_writable(self) -> None:
        """Raise :class:`StoreError` unless a row could be stored now: a write to the header in a
        transaction that is rolled back, so the file is left as it was."""

        def probe() -> None:
            conn = self._open_conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            finally:
                _rollback(conn)

        with self._lock:
            self._retry("write", probe)

    def damaged(self) -> list[tuple[str, str]]:
        """``(key, reason)`` of every row that cannot be read back, in insertion order: its row
        or its key parts are not a JSON object."""
        found = self._query(
            f"SELECT key, {_ROW_BYTES}, CAST(parts AS BLOB) FROM rows ORDER BY seq", ()
        )
        return [(key, why) for key, row, parts in found if (why := _damage(row, parts))]

    def quarantine(self) -> list[tuple[str, str]]:
        """Move every damaged row into the ``quarantine`` table (with its reason and the time) in
        one transaction, so a sweep re-evaluates those configurations; other rows are untouched.
        Returns the ``(key, reason)`` pairs moved."""
        moved_at = datetime.now(UTC).isoformat(timespec="milliseconds")

        def transaction() -> list[tuple[str, str]]:
            conn = self._open_conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                found = conn.execute(
                    f"SELECT key, {_ROW_BYTES}, CAST(parts AS BLOB) FROM rows ORDER BY seq"
                ).fetchall()
                moved = [(key, why) for key, row, parts in found if (why := _damage(row, parts))]
                if moved:
                    conn.execute(_QUARANTINE_SCHEMA)
                for key, why in moved:
                    conn.execute(
                        f"INSERT INTO {_QUARANTINE} SELECT key, owner, sweep, parts, row,"
                        " created_at, seq, ?, ? FROM rows WHERE key = ?",
                        (why, moved_at, key),
                    )
                    conn.execute("DELETE FROM rows WHERE key = ?", (key,))
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            return moved

        with self._lock:
            return self._retry("quarantine damaged rows", transaction)

    def quarantined(self) -> int:
        """How many rows earlier repairs moved into the ``quarantine`` table."""
        tables = self._query(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_QUARANTINE,)
        )
        if not tables:
            return 0
        return self._query(f"SELECT COUNT(*) FROM {_QUARANTINE}", ())[0][0]

    def delete(self, key: str) -> bool:
        """Remove the row with ``key``; ``True`` if there was one."""
        _check_key(key)

        def statement() -> int:
            return self._open_conn().execute("DELETE FROM rows WHERE key = ?", (key,)).rowcount

        with self._lock:
            return self._retry("delete a row", statement) > 0

    # --- reading -----------------------------------------------------------------------------

    def get(self, key: str) -> dict[str, Any] | None:
        """The row stored under ``key`` exactly as put (non-finite floats as ``None``), or None."""
        _check_key(key)
        found = self._query(f"SELECT key, {_ROW_BYTES} FROM rows WHERE key = ?", (key,))
        return _decode_row(self.path, *found[0]) if found else None

    def has(self, key: str) -> bool:
        _check_key(key)
        return bool(self._query("SELECT 1 FROM rows WHERE key = ?", (key,)))

    def keys(self, *, owner: str | None = None) -> set[str]:
        """Keys of all rows, or of one owner's rows (``owner=""``: shared rows only)."""
        if owner is None:
            return {k for (k,) in self._query("SELECT key FROM rows", ())}
        return {k for (k,) in self._query("SELECT key FROM rows WHERE owner = ?", (owner,))}

    def rows(
        self,
        *,
        owner: str | None = None,
        sweep: str | None = None,
        where: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Stored rows in insertion order, each with ``key``, ``owner``, ``sweep``, ``created_at``.

        ``owner=None`` reads every owner's rows, ``owner=""`` only the shared ones. ``where``
        keeps rows whose key parts have these top-level values, e.g.
        ``{"model_fingerprint": "abc"}`` (string or number values). The four metadata fields
        take precedence over fields of the same name inside a stored row.
        """
        clauses: list[str] = []
        params: list[Any] = []
        if owner is not None:
            clauses.append("owner = ?")
            params.append(owner)
        if sweep is not None:
            clauses.append("sweep = ?")
            params.append(sweep)
        for field, value in (where or {}).items():
            if not isinstance(field, str) or not _FIELD.fullmatch(field):
                raise StoreError(
                    f"cannot filter on key part {field!r}: use a top-level part name made of "
                    "letters, digits and underscores"
                )
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise StoreError(
                    f"filter value for key part {field!r} must be a string or a number, "
                    f"got {value!r}"
                )
            clauses.append("json_extract(parts, ?) = ?")
            params += [f"$.{field}", value]
        sql = f"SELECT key, {_ROW_BYTES}, owner, sweep, created_at FROM rows"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        out = []
        for key, text, row_owner, row_sweep, created_at in self._query(
            sql + " ORDER BY seq", params
        ):
            row = _decode_row(self.path, key, text)
            row.update(key=key, owner=row_owner, sweep=row_sweep, created_at=created_at)
            out.append(row)
        return out

    # --- export ------------------------------------------------------------------------------

    def export_json(
        self, path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]] | None = None
    ) -> Path:
        """Write ``{"schema": 1, "rows": [...]}`` (default: every stored row) atomically."""
        data = self.rows() if rows is None else [dict(r) for r in rows]
        try:
            text = json.dumps(
                {"schema": SCHEMA_VERSION, "rows": finite_or_none(data)},
                ensure_ascii=False,
                allow_nan=False,
                indent=2,
            )
        except (TypeError, ValueError) as e:
            raise StoreError(f"cannot export rows as JSON: {e}") from e
        return self._write_export(path, text + "\n")

    def export_csv(
        self, path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]] | None = None
    ) -> Path:
        """Write the rows (default: every stored row) as CSV atomically; see :meth:`to_csv_text`."""
        return self._write_export(path, self.to_csv_text(rows))

    def to_csv_text(self, rows: Iterable[Mapping[str, Any]] | None = None) -> str:
        """The rows (default: every stored row) as CSV text, one line per row.

        Columns are :func:`flatten_row`'s, the union over all rows in first-seen order; a row
        without a column has an empty cell there. A text cell that a spreadsheet would run as a
        formula (starting with ``= + - @``) is prefixed with ``'``.
        """
        try:
            flat = [flatten_row(r) for r in (self.rows() if rows is None else rows)]
        except (TypeError, ValueError) as e:
            raise StoreError(f"cannot export rows as CSV: {e}") from e
        columns = list(dict.fromkeys(column for row in flat for column in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
        writer.writeheader()
        for row in flat:
            writer.writerow({column: _defuse_formula(cell) for column, cell in row.items()})
        return buffer.getvalue()

    # --- internals ---------------------------------------------------------------------------

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"the results store {self.path} is closed")
        return self._conn

    def _query(self, sql: str, params: Iterable[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._retry(
                "read rows", lambda: self._open_conn().execute(sql, tuple(params)).fetchall()
            )

    def _retry(self, action: str, operation: Callable[[], _T]) -> _T:
        """Run ``operation``, retrying while the database is locked; sqlite errors -> StoreError.

        SQLite's busy handler already waits for a lock, but some conflicts (WAL recovery by
        another process, switching the journal mode) return "database is locked" at once.
        """
        deadline = time.monotonic() + self._timeout_s
        delay = 0.005
        while True:
            try:
                return operation()
            except sqlite3.Error as e:
                left = deadline - time.monotonic()
                if not _is_busy(e):
                    raise self._error(action, e) from e
                if left <= 0:
                    raise StoreError(
                        f"the results store {self.path} stayed locked by another writer for "
                        f"{self._timeout_s:g} s; wait for the other sweep to finish or use "
                        "another --store path"
                    ) from e
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.2)

    def _error(self, action: str, e: sqlite3.Error) -> StoreError:
        if _error_name(e).startswith("SQLITE_READONLY"):
            return StoreError(
                f"the results store {self.path} is read-only ({e}); make the file and its folder "
                "writable, or choose another --store path"
            )
        if _error_name(e).startswith("SQLITE_CORRUPT"):
            return StoreError(
                f"the results store {self.path} is corrupt ({e}); restore it from a backup or "
                f"{_MOVE_AWAY}"
            )
        return StoreError(f"cannot {action} in the results store {self.path}: {e}")

    def _inspect_existing(self) -> None:
        """Refuse an existing file that is not one of our stores, through a read-only connection."""
        try:
            conn = sqlite3.connect(
                self.path.resolve().as_uri() + "?mode=ro",
                uri=True,
                timeout=self._timeout_s,
                isolation_level=None,
            )
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the results store {self.path}: {e}") from e
        try:
            empty = self._check_identity(*_read_identity(conn))
            if not empty:
                problems = [text for (text,) in conn.execute("PRAGMA quick_check(5)")]
                if problems != ["ok"]:
                    detail = " ".join(" ".join(problems).split())
                    raise StoreError(
                        f"{self.path} is a corrupt results store (integrity check: "
                        f"{detail[:300]}); restore it from a backup or {_MOVE_AWAY}"
                    )
        except sqlite3.Error as e:
            name = _error_name(e)
            if name.startswith("SQLITE_NOTADB"):
                reason = f"it is not an SQLite database ({e})"
            elif name.startswith("SQLITE_CORRUPT"):
                reason = f"it is corrupt ({e})"
            elif _is_busy(e):
                raise StoreError(
                    f"{self.path} stayed locked by another program for {self._timeout_s:g} s; "
                    "try again when it is done"
                ) from e
            else:
                reason = str(e)
            raise StoreError(f"{self.path} is not a results store: {reason}; {_MOVE_AWAY}") from e
        finally:
            conn.close()

    def _check_identity(self, app_id: int, version: int, tables: list[str]) -> bool:
        """Raise unless the database is ours; ``True`` when it is empty and needs our tables."""
        if app_id == APPLICATION_ID:
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} was written by a newer version of Quantization Explorer "
                    f"(store schema {version}, this version reads {SCHEMA_VERSION}); upgrade, or "
                    f"{_MOVE_AWAY}"
                )
            if version != SCHEMA_VERSION or _TABLE not in tables:
                raise StoreError(
                    f"{self.path} is an incomplete results store (schema {version}, tables "
                    f"{tables}); {_MOVE_AWAY}"
                )
            return False
        if app_id == 0 and version == 0 and not tables:
            return True
        shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "") or "none"
        raise StoreError(
            f"{self.path} is a foreign SQLite database (application_id "
            f"{app_id & 0xFFFFFFFF:#x}, tables: {shown}), not a results store; {_MOVE_AWAY}"
        )

    def _initialise(self) -> None:
        """Give an empty database our identity and tables, then switch it to WAL.

        The identity is checked again inside the write transaction: another process may have
        initialised the file since :meth:`_inspect_existing` looked at it.
        """
        conn = self._open_conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            if self._check_identity(*_read_identity(conn)):
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                for statement in _SCHEMA:
                    conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise StoreError(
                f"the results store {self.path} cannot use write-ahead logging (journal mode "
                f"stays {mode!r}); put it on a local file system"
            )
        conn.execute("PRAGMA synchronous = NORMAL")

    def _write_export(self, path: str | os.PathLike[str], text: str) -> Path:
        """Write ``text`` to ``path`` atomically: a temporary file beside it, then os.replace."""
        target = Path(path)
        store = self.path.resolve()
        if target.resolve() in {
            store,
            *(store.with_name(store.name + s) for s in ("-wal", "-shm")),
        }:
            raise StoreError(f"cannot export over the results store itself ({target})")
        if target.is_dir():
            raise StoreError(f"cannot export to {target}: it is a directory; give a file name")
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, "wb") as f:
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StoreError(f"cannot write {target}: {e}") from e
        return target


def _read_identity(conn: sqlite3.Connection) -> tuple[int, int, list[str]]:
    (app_id,) = conn.execute("PRAGMA application_id").fetchone()
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    tables = [
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"
            " AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
        )
    ]
    return app_id, version, tables


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _error_name(e: sqlite3.Error) -> str:
    return getattr(e, "sqlite_errorname", None) or ""


def _is_busy(e: sqlite3.Error) -> bool:
    name = _error_name(e)
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in str(e)


def _check_key(key: object) -> None:
    if not isinstance(key, str) or not key:
        raise StoreError(f"a row key must be a non-empty string (see row_key), got {key!r}")


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN and infinity replaced by None, through mappings, lists and tuples
    (tuples become lists): JSON has no form for non-finite numbers, and an exact layer's +inf
    SQNR is recorded as "no noise measured" (None). The one JSON-safe form of results (the
    store, the CLI's --json, the what-if cache, sensitivity tables); torch-free, so the CLI
    and the store stay light."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def _nonfinite_path(value: Any, path: str = "") -> str | None:
    """Dotted path of the first NaN or infinity inside ``value``, for error messages."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "(the value itself)"
    items: Iterable[tuple[Any, Any]] = ()
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    for k, v in items:
        found = _nonfinite_path(v, f"{path}.{k}" if path else str(k))
        if found is not None:
            return found
    return None


def _canonical_json(value: Any, what: str) -> str:
    bad = _nonfinite_path(value)
    if bad is not None:
        raise StoreError(
            f"{what} must be finite numbers, but `{bad}` is NaN or infinite; "
            "a key has to identify one setting"
        )
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as e:
        raise StoreError(f"{what} must be plain JSON values (str, number, list, dict): {e}") from e


def _encode_row(row: Mapping[str, Any]) -> str:
    try:
        return json.dumps(finite_or_none(row), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise StoreError(
            f"a result row must hold plain JSON values (str, number, list, dict): {e}"
        ) from e


def _damage(row: bytes | str, parts: bytes | str | None = None) -> str:
    """Why a stored row (or its key parts) cannot be read back as a JSON object; "" if it can."""
    for what, data in (("row", row), ("key parts", parts)):
        if data is None:
            continue
        verb = "is" if what == "row" else "are"
        try:
            value = json.loads(data)
        except ValueError as e:  # UnicodeDecodeError included
            return f"the {what} {verb} not valid JSON: {e}"
        if not isinstance(value, dict):
            return f"the {what} {verb} a JSON {type(value).__name__}, not an object"
    return ""


def _decode_row(path: Path, key: str, data: bytes | str) -> dict[str, Any]:
    why = _damage(data)
    if why:
        store = shlex.quote(str(path))
        raise StoreError(
            f"the row {key} in the results store {path} is damaged ({why}); run `explorer store "
            f"repair --store {store}` to move it aside (or `explorer store delete-row {key} "
            f"--store {store}`), then run the sweep again to re-evaluate it"
        )
    return json.loads(data)


def _is_interval(value: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(
            v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in value
        )
    )


def _put_cell(flat: dict[str, Any], name: str, value: Any, interval: bool) -> None:
    if interval and _is_interval(value):
        flat[f"{name}.lo"], flat[f"{name}.hi"] = finite_or_none(list(value))
    elif isinstance(value, Mapping | list | tuple):
        flat[name] = json.dumps(finite_or_none(value), ensure_ascii=False, allow_nan=False)
    else:
        flat[name] = finite_or_none(value)


def _defuse_formula(cell: Any) -> Any:
    if isinstance(cell, str) and cell.startswith(_FORMULA_START):
        return "'" + cell
    return cell
