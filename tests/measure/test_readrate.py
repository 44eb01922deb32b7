"""The streaming read rate (positive, finite, labelled by how it was read, cached per process),
the bytes a layer holds against a hand count, and the verdict's thresholds."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from explorer import machine
from explorer.kernels import native
from explorer.measure import readrate
from explorer.measure.readrate import (
    NATIVE,
    TORCH,
    byte_time,
    byte_verdict,
    call_macs,
    layer_bytes,
    measure_read_rate,
    read_rate,
    tensor_bytes,
)
from explorer.nn import quantize_model
from explorer.quant.config import Plan, QuantConfig

SMALL = 4 << 20  # 4 MiB: enough to time a pass, cheap in a test


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    readrate.clear_cache()
    yield
    readrate.clear_cache()


def test_read_rate_is_positive_finite_and_says_how_it_read() -> None:
    rate = measure_read_rate(1, buffer_bytes=SMALL, passes=3)
    assert 0 < rate.bytes_per_s < math.inf
    assert rate.method == (NATIVE if native.available() else TORCH)
    assert (rate.buffer_bytes, rate.passes, rate.threads) == (SMALL, 3, 1)
    assert rate.spread >= 0
    assert rate.to_dict()["gbps"] == pytest.approx(rate.bytes_per_s / 1e9, abs=1e-3)


def test_without_native_kernels_a_torch_sum_reads_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(readrate.native, "available", lambda: False)
    rate = measure_read_rate(1, buffer_bytes=SMALL, passes=2)
    assert rate.method == TORCH == "torch sum (native kernels unavailable)"
    assert 0 < rate.bytes_per_s < math.inf


def test_threads_are_restored_and_passes_checked() -> None:
    before = torch.get_num_threads()
    measure_read_rate(1, buffer_bytes=SMALL, passes=1)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="passes must be at least 1, got 0"):
        measure_read_rate(1, buffer_bytes=SMALL, passes=0)


def test_the_buffer_is_several_last_level_caches_and_the_rate_is_cached(
    monkeypatch: pytest.MonkeyPatch, fresh_cache: None
) -> None:
    llc = machine.LastLevelCache(3, 1 << 20, "sysfs")
    monkeypatch.setattr(readrate.machine, "last_level_cache", lambda: llc)
    assert readrate.read_buffer_bytes() == 4 << 20
    huge = machine.LastLevelCache(3, 1 << 30, "sysfs")
    monkeypatch.setattr(readrate.machine, "last_level_cache", lambda: huge)
    assert readrate.read_buffer_bytes() == readrate.MAX_READ_BYTES
    monkeypatch.setattr(readrate.machine, "last_level_cache", lambda: llc)
    first = read_rate(1)
    assert first.buffer_bytes == 4 << 20
    assert read_rate(1) is first  # measured once per process and thread count


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16, bias=False))


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        # int8 codes N*K + fp32 scale per row (N*4) + fp32 bias (N*4)
        (QuantConfig(), {"0": 32 * 64 + 32 * 4 + 32 * 4, "2": 16 * 32 + 16 * 4}),
        # 4-bit codes N*K/2 + bf16 scale per group (N*K/32*2) + 4-bit zero per group + bias
        (
            QuantConfig(weight_bits=4, granularity="group", group_size=32, symmetric=False),
            {"0": 1024 + 32 * 2 * 2 + 32 * 2 // 2 + 32 * 4, "2": 256 + 16 * 2 + 16 // 2},
        ),
        # static activation qparams add an fp32 scale and an int32 zero point
        (
            QuantConfig(act_bits=8, act_granularity="tensor", act_mode="static"),
            {"0": 2304 + 8, "2": 576 + 8},
        ),
        # a float layer: its fp32 weight and bias
        (QuantConfig.float("fp32"), {"0": (32 * 64 + 32) * 4, "2": 16 * 32 * 4}),
    ],
    ids=lambda v: v.name if isinstance(v, QuantConfig) else "",
)
def test_layer_bytes_count_what_the_layer_stores(config: QuantConfig, expected: dict) -> None:
    q = quantize_model(_mlp(), Plan.uniform(config), calibration_data=torch.randn(8, 64))
    assert {n: layer_bytes(q.get_submodule(n)) for n in expected} == expected


def test_activation_bytes_and_multiply_adds_of_a_call() -> None:
    conv = nn.Conv2d(4, 8, 3, padding=1, groups=2)
    x = torch.randn(2, 4, 6, 6)
    y = conv(x)
    assert tensor_bytes((x,)) + tensor_bytes((y,)) == 2 * 4 * 36 * 4 + 2 * 8 * 36 * 4
    assert tensor_bytes(((x, [y]), None, 3)) == (2 * 144 + 2 * 288) * 4
    # every output element is a dot product over in_channels / groups x 3 x 3 = 18 weights
    assert call_macs(conv, y) == 2 * 8 * 36 * 18
    assert call_macs(nn.Linear(64, 32), torch.zeros(3, 32)) == 3 * 32 * 64
    assert call_macs(nn.ReLU(), torch.zeros(3)) is None


@pytest.mark.parametrize(
    ("ratio", "macs_per_byte", "verdict"),
    [
        (None, 1.0, ""),
        (0.5, 1.0, "from cache: 0.50x the byte time"),
        (0.67, 1.0, "bound by bytes"),
        (1.5, 100.0, "bound by bytes"),
        (1.51, 1.0, "overhead: 1.5x the byte time"),
        (12.34, 7.99, "overhead: 12.3x the byte time"),
        (12.34, None, "overhead: 12.3x the byte time"),
        (1.51, 8.0, "compute-bound"),
    ],
)
def test_verdict_thresholds(ratio: float | None, macs_per_byte: float | None, verdict: str) -> None:
    assert byte_verdict(ratio, macs_per_byte) == verdict


def test_byte_time_of_a_layer() -> None:
    layer = {"read_bytes": 6000, "activation_bytes": 4000, "macs": 20000, "latency_ms": 0.004}
    got = byte_time(layer, 1e9)  # 10,000 bytes at 1 GB/s: 10 us
    assert got["bytes_per_call"] == 10000
    assert got["predicted_ms"] == pytest.approx(0.01, rel=1e-12)
    assert got["ratio"] == pytest.approx(0.4, rel=1e-12)
    assert got["macs_per_byte"] == 2.0
    assert got["verdict"] == "from cache: 0.40x the byte time"
    # a row stored before the fields existed, or without a rate: nothing predicted
    assert byte_time({"latency_ms": 1.0}, 1e9)["predicted_ms"] is None
    assert byte_time(layer, None) == {**got, "predicted_ms": None, "ratio": None, "verdict": ""}
