"""The machine-wide timing lock on a shared machine: two users, a visible wait, a timeout."""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from explorer.measure import latency
from explorer.measure.latency import TimingLockError, timing_lock

NOBODY = 65534
as_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="switching users needs root"
)


@pytest.fixture
def shared_lock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A lock path in a sticky world-writable folder, like the system temp folder."""
    folder = Path(tempfile.mkdtemp(prefix="qe-lock-"))
    folder.chmod(0o1777)
    path = folder / "quant-explorer-timing.lock"
    monkeypatch.setenv(latency.LOCK_ENV, str(path))
    yield path
    path.unlink(missing_ok=True)
    folder.rmdir()


def _as_nobody(hold_s: float, timeout_s: float, started, results) -> None:  # noqa: ANN001
    """Child body (forked, so it needs no Python of its own): become `NOBODY`, take the lock."""
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    try:
        with timing_lock(timeout_s=timeout_s):
            started.set()
            time.sleep(hold_s)
        results.put(("ok", os.getuid()))
    except Exception as exc:  # reported to the parent, which asserts on it
        results.put((type(exc).__name__, str(exc)))


def _run_nobody(hold_s: float = 0.0, timeout_s: float = 30.0):  # noqa: ANN202
    ctx = mp.get_context("fork")
    started, results = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_as_nobody, args=(hold_s, timeout_s, started, results))
    proc.start()
    return proc, started, results


@as_root
def test_a_lock_made_by_one_user_serves_another(shared_lock: Path) -> None:
    old = os.umask(0o077)  # a strict umask must not make the lock private
    try:
        with timing_lock():
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(shared_lock.stat().st_mode) == 0o666
    proc, _, results = _run_nobody()
    assert results.get(timeout=60) == ("ok", NOBODY)
    proc.join(30)


@as_root
def test_a_read_only_lock_from_older_versions_still_works(shared_lock: Path) -> None:
    """Before: the lock was opened for appending, so another user got a bare Permission denied."""
    shared_lock.touch(mode=0o644)
    shared_lock.chmod(0o644)
    proc, _, results = _run_nobody()
    assert results.get(timeout=60) == ("ok", NOBODY)
    proc.join(30)


@as_root
def test_two_users_exclude_each_other(shared_lock: Path, capfd: pytest.CaptureFixture[str]) -> None:
    proc, started, results = _run_nobody(hold_s=1.0)
    assert started.wait(60)
    t0 = time.monotonic()
    with timing_lock(timeout_s=60):
        waited = time.monotonic() - t0
    assert results.get(timeout=60) == ("ok", NOBODY)
    proc.join(30)
    assert waited > 0.5
    err = capfd.readouterr().err
    assert err.count("waiting for the timing lock") == 1
    assert f"held by process {proc.pid}" in err

    with timing_lock():  # and the other way round: root holds, nobody gives up with a message
        proc, _, results = _run_nobody(timeout_s=0.3)
        kind, message = results.get(timeout=60)
        proc.join(30)
    assert kind == "TimingLockError"
    assert f"held by process {os.getpid()}" in message


def _hold(path: str, started, seconds: float) -> None:  # noqa: ANN001
    os.environ[latency.LOCK_ENV] = path
    with timing_lock():
        started.set()
        time.sleep(seconds)


def test_waiting_is_visible_and_times_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "timing.lock"
    monkeypatch.setenv(latency.LOCK_ENV, str(path))
    ctx = mp.get_context("spawn")
    started = ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(path), started, 30.0))
    holder.start()
    try:
        assert started.wait(60)
        monkeypatch.setenv(latency.LOCK_TIMEOUT_ENV, "0.5")
        t0 = time.monotonic()
        with pytest.raises(TimingLockError) as info, timing_lock():
            pass
        assert 0.4 < time.monotonic() - t0 < 5
    finally:
        holder.kill()
        holder.join(30)
    message = str(info.value)
    assert re.match(
        rf"gave up after 0\.\d s waiting for the timing lock {re.escape(str(path))}, held by",
        message,
    )
    assert f"process {holder.pid}" in message and "set EXPLORER_TIMING_LOCK" in message
    assert "\n" not in message
    err = capfd.readouterr().err
    assert err.count("waiting for the timing lock") == 1
    assert "(gives up after 0.5 s, EXPLORER_TIMING_LOCK_TIMEOUT" in err
    with timing_lock():  # free again once the holder is gone
        pass


def test_a_bad_timeout_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(latency.LOCK_TIMEOUT_ENV, "soon")
    with pytest.raises(TimingLockError, match="EXPLORER_TIMING_LOCK_TIMEOUT must be a number"):
        latency.lock_timeout()
