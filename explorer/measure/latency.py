"""Latency, measured honestly: warm-up, then the median and spread of repeated timed calls, with
the thread count recorded. Timings take a machine-wide file lock, so that two timings (from two
sweeps, or the app and a benchmark) never overlap and slow each other down. A run whose spread
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
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from explorer.nn.convert import set_submodule
from explorer.nn.modules import _QuantBase

NOISY_SPREAD = 0.25
LOCK_PATH = Path(
    os.environ.get(
        "EXPLORER_TIMING_LOCK", Path(tempfile.gettempdir()) / "quant-explorer-timing.lock"
    )
)


@contextlib.contextmanager
def timing_lock() -> Iterator[None]:
    """Exclusive machine-wide lock (POSIX advisory lock on a file in the temp dir)."""
    with open(LOCK_PATH, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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
    simulated = [n for n, m in model.named_modules() if isinstance(m, _QuantBase) and m.simulated]
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
