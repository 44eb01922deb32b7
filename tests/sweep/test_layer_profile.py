"""`profile_layers`, the per-layer timing behind a row's ``layers``: per call of each layer, the
activation bytes and multiply-adds at the workload's shape (against a hand count) and a
positive time; the shares of the total as before."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from explorer.measure.readrate import byte_time, layer_bytes
from explorer.nn import quantize_model
from explorer.quant.config import Plan, QuantConfig
from explorer.sweep.runner import LAYER_PROFILE_RUNS, profile_layers


def test_profile_counts_bytes_and_multiply_adds_per_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXPLORER_TIMING_LOCK", str(tmp_path / "lock"))  # a lock of its own
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),
        nn.Flatten(),
        nn.Linear(288, 32),
        nn.ReLU(),
        nn.Linear(32, 16, bias=False),
    )
    x = torch.randn(2, 4, 6, 6)
    q = quantize_model(model, Plan.uniform(QuantConfig()), calibration_data=x)
    calls = []

    def run() -> torch.Tensor:
        calls.append(1)
        return q(x)

    times = profile_layers(q, ["0", "2", "4"], run)
    assert len(calls) == 1 + LAYER_PROFILE_RUNS  # one warm-up, then the profiled runs
    # activations in + out, fp32, at x's shape (2, 4, 6, 6): the conv writes (2, 8, 6, 6)
    assert times.activation_bytes == {
        "0": (2 * 144 + 2 * 288) * 4,
        "2": (2 * 288 + 2 * 32) * 4,
        "4": (2 * 32 + 2 * 16) * 4,
    }
    # each output element is a dot product over K weights: 36 (4 x 3 x 3), 288 and 32
    assert times.macs == {"0": 2 * 288 * 36, "2": 2 * 32 * 288, "4": 2 * 16 * 32}
    assert set(times.call_ms) == {"0", "2", "4"}
    assert all(ms > 0 for ms in times.call_ms.values())
    assert 0 < sum(times.spent.values()) <= times.total
    # int8 codes + fp32 scale per output channel + fp32 bias
    assert [layer_bytes(q.get_submodule(n)) for n in "024"] == [
        8 * 36 + 8 * 4 + 8 * 4,
        32 * 288 + 32 * 4 + 32 * 4,
        16 * 32 + 16 * 4,
    ]
    layer = {
        "read_bytes": layer_bytes(q.get_submodule("2")),
        "activation_bytes": times.activation_bytes["2"],
        "macs": times.macs["2"],
        "latency_ms": times.call_ms["2"],
    }
    got = byte_time(layer, 1e10)
    assert got["predicted_ms"] == pytest.approx((9472 + 2560) / 1e10 * 1e3, rel=1e-12)
    assert got["ratio"] == pytest.approx(times.call_ms["2"] / got["predicted_ms"], rel=1e-12)
