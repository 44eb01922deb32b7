"""Latency measurement: statistics, the machine-wide lock, simulated labelling."""

from __future__ import annotations

import multiprocessing as mp
import time

import torch
from torch import nn

from explorer.measure.latency import (
    LatencyResult,
    measure_model_latency,
    time_callable,
    timing_lock,
)
from explorer.measure.metrics import cosine_similarity, sqnr_db
from explorer.nn import quantize_model
from explorer.quant.config import Plan, QuantConfig


def test_time_callable_reports_median_and_spread() -> None:
    delays = iter([0.001] * 3 + [0.002] * 9 + [0.02])

    def fn() -> None:
        time.sleep(next(delays))

    result = time_callable(fn, warmup=3, repeats=10)
    assert 1.9 < result.median_ms < 5.0
    assert result.p10_ms <= result.median_ms <= result.p90_ms
    assert result.min_ms <= result.p10_ms
    assert result.threads == torch.get_num_threads() and result.repeats == 10


def test_noisy_flag() -> None:
    steady = LatencyResult(1.0, 0.95, 1.05, 0.9, 10, 2, "cpu")
    noisy = LatencyResult(1.0, 0.5, 2.0, 0.4, 10, 2, "cpu")
    assert not steady.noisy and noisy.noisy


def _hold_lock(started, seconds: float) -> None:
    with timing_lock():
        started.set()
        time.sleep(seconds)


def test_timing_lock_excludes_other_processes() -> None:
    ctx = mp.get_context("spawn")
    started = ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(started, 1.0))
    proc.start()
    assert started.wait(30)
    t0 = time.perf_counter()
    with timing_lock():
        waited = time.perf_counter() - t0
    proc.join()
    assert waited > 0.5


def test_simulated_models_are_labelled() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 32))
    x = torch.randn(4, 128)
    real = quantize_model(model, Plan.uniform(QuantConfig(weight_bits=4)), example_input=x)
    sim = quantize_model(model, Plan.uniform(QuantConfig(weight_bits=5)), example_input=x)
    assert measure_model_latency(real, x, repeats=3).kind == "measured"
    assert measure_model_latency(sim, x, repeats=3).kind == "simulated"


def test_sqnr_and_cosine() -> None:
    x = torch.randn(1000, dtype=torch.float64)
    noise = torch.randn(1000, dtype=torch.float64)
    noise *= 0.01 * x.norm() / noise.norm()
    assert abs(sqnr_db(x, x + noise) - 40.0) < 1e-9
    assert sqnr_db(x, x) == float("inf")
    assert cosine_similarity(x, 2 * x) == 1.0 or abs(cosine_similarity(x, 2 * x) - 1) < 1e-12
