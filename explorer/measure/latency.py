"""Latency, measured honestly: warm-up, then the median and spread of repeated timed calls, with
the thread count recorded. Timings take a machine-wide file lock, so that two timings (from two
sweeps, two users, or the app and a benchmark) never overlap and slow each other down; a process
that waits for it says so on stderr and gives up after a timeout (`timing_lock`). A run whose spread
(p90 − p10) exceeds `NOISY_SPREAD` of the median is flagged noisy.

A model with `simulated` layers (formats that have no real kernel) is timed on its twin in which
each such layer runs on the real kernel of the next wider format: an upper bound, labelled.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from explorer.errors import ExplorerError
from explorer.nn.convert import set_submodule
from explorer.nn.modules import QuantModule

NOISY_SPREAD = 0.25
LOCK_ENV = "EXPLORER_TIMING_LOCK"
LOCK_TIMEOUT_ENV = "EXPLORER_TIMING_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT_S = 600.0
SHARED_LOCK = Path(tempfile.gettempdir()) / "quant-explorer-timing.lock"
_POLL_S = (0.01, 0.25)  # first and longest sleep between tries while another process times


class TimingLockError(ExplorerError):
    """The timing lock could not be taken (held too long by another process, or unusable)."""


def lock_path() -> Path:
    """``$EXPLORER_TIMING_LOCK``, else one file in the temp folder shared by every user."""
    value = os.environ.get(LOCK_ENV)
    return Path(value).expanduser() if value else SHARED_LOCK


def lock_timeout() -> float:
    value = os.environ.get(LOCK_TIMEOUT_ENV)
    if not value:
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise TimingLockError(f"{LOCK_TIMEOUT_ENV} must be a number of seconds >= 0, got {value!r}")
    return seconds


def _open_lock(path: Path) -> int:
    """A descriptor on the lock file, which any user can lock.

    ``flock`` needs no write access, so an existing file is opened read-only (a file another
    user created, even one left 0644 by older versions, works; ``O_CREAT`` on another user's
    file in a sticky temp folder fails under ``fs.protected_regular``). A new file is made
    ``0o666`` whatever the umask, so the next user can open it too.
    """
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:  # another process created it just now
        return os.open(path, os.O_RDONLY)
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666)
    return fd


def _holder(fd: int) -> str:
    """Who holds the flock on ``fd``'s file, from /proc/locks (Linux), or a plain phrase."""
    st = os.fstat(fd)
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return "another process"
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or "->" in fields:
            continue
        pid, dev_ino = fields[4], fields[5].split(":")
        if len(dev_ino) == 3 and int(dev_ino[2]) == st.st_ino:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
                return f"process {pid} ({cmd.decode(errors='replace')[:120]})"
            except OSError:
                return f"process {pid}"
    return "another process"


@contextlib.contextmanager
def timing_lock(timeout_s: float | None = None) -> Iterator[None]:
    """Exclusive machine-wide lock (POSIX advisory lock on `lock_path`), so that no two timings
    overlap. While another process holds it, says so once on stderr (who, and how to use another
    lock) and gives up with `TimingLockError` after ``timeout_s`` (default
    ``$EXPLORER_TIMING_LOCK_TIMEOUT`` or 600 s)."""
    path = lock_path()
    limit = lock_timeout() if timeout_s is None else timeout_s
    try:
        fd = _open_lock(path)
    except OSError as exc:
        raise TimingLockError(
            f"cannot open the timing lock {path}: {exc.strerror or exc}; "
            f"set {LOCK_ENV} to a file you can read"
        ) from None
    try:
        start = time.monotonic()
        pause = _POLL_S[0]
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            waited = time.monotonic() - start
            if waited >= limit:
                raise TimingLockError(
                    f"gave up after {waited:.1f} s waiting for the timing lock {path}, held by "
                    f"{_holder(fd)}; wait for it, or set {LOCK_ENV} to another file to time "
                    f"alongside it (timings may then disturb each other)"
                )
            if not told:
                print(
                    f"waiting for the timing lock {path}, held by {_holder(fd)} (gives up after "
                    f"{limit:g} s, {LOCK_TIMEOUT_ENV}; {LOCK_ENV} selects another lock)",
                    file=sys.stderr,
                    flush=True,
                )
                told = True
            time.sleep(min(pause, max(0.0, limit - waited)))
            pause = min(2 * pause, _POLL_S[1])
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class LatencyResult:
    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    repeats: int
    threads: int
    device: str
    kind: str = "measured"  # or "simulated"

    @property
    def spread(self) -> float:
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms else 0.0

    @property
    def noisy(self) -> bool:
        return self.spread > NOISY_SPREAD

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "spread": self.spread, "noisy": self.noisy}


def _quantile(sorted_values: list[float], q: float) -> float:
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def time_callable(
    fn: Callable[[], Any], warmup: int = 3, repeats: int = 20, device: str = "cpu"
) -> LatencyResult:
    """Time ``fn()`` (no lock; see `measure_latency`)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return LatencyResult(
        median_ms=statistics.median(samples),
        p10_ms=_quantile(samples, 0.1),
        p90_ms=_quantile(samples, 0.9),
        min_ms=samples[0],
        repeats=repeats,
        threads=torch.get_num_threads(),
        device=device,
    )


def measure_latency(
    model: nn.Module, example_input: torch.Tensor, warmup: int = 3, repeats: int = 20
) -> LatencyResult:
    """Median latency of ``model(example_input)`` under the machine-wide timing lock."""
    device = example_input.device.type
    with torch.inference_mode(), timing_lock():
        return time_callable(lambda: model(example_input), warmup, repeats, device)


def timing_model(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """``model`` itself, or a copy whose simulated layers are replaced by their timing twins."""
    simulated = [n for n, m in model.named_modules() if isinstance(m, QuantModule) and m.simulated]
    if not simulated:
        return model, []
    twin = copy.deepcopy(model)
    for name in simulated:
        set_submodule(twin, name, twin.get_submodule(name).timing_twin())
    return twin, simulated


def measure_model_latency(
    model: nn.Module, example_input: torch.Tensor, warmup: int = 3, repeats: int = 20
) -> LatencyResult:
    """Latency of a quantized model; ``kind`` says ``simulated`` if any layer needed a twin."""
    timed, simulated = timing_model(model)
    result = measure_latency(timed, example_input, warmup, repeats)
    if simulated:
        result = LatencyResult(**{**asdict(result), "kind": "simulated"})
    return result


def measure_callable(
    fn: Callable[[], Any], warmup: int = 3, repeats: int = 20, device: str = "cpu"
) -> LatencyResult:
    """Median latency of ``fn()`` (a model's workload) under the machine-wide timing lock."""
    with torch.inference_mode(), timing_lock():
        return time_callable(fn, warmup, repeats, device)
