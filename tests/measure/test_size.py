"""Size counts every stored byte and equals the payload of the safetensors export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from explorer.measure.size import (
    export_safetensors,
    safetensors_payload_bytes,
    size_bytes,
    size_report,
)
from explorer.nn import quantize_model
from explorer.quant.config import Plan, QuantConfig


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.LayerNorm(512), nn.Linear(512, 64))


CONFIGS = [
    QuantConfig(),
    QuantConfig(weight_bits=4, granularity="group", group_size=32),
    QuantConfig(weight_bits=4, granularity="group", group_size=128, symmetric=False),
    QuantConfig(weight_bits=3, granularity="group", group_size=64),
    QuantConfig(act_bits=8, act_granularity="tensor", act_mode="static"),
    QuantConfig.float("bf16"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_size_equals_safetensors_payload(config: QuantConfig, tmp_path: Path) -> None:
    q = quantize_model(mlp(), Plan.uniform(config), calibration_data=torch.randn(16, 256))
    path = export_safetensors(q, tmp_path / "model.safetensors")
    assert size_bytes(q) == safetensors_payload_bytes(path)
    loaded = load_file(str(path))
    for name, t in q.state_dict().items():
        assert torch.equal(loaded[name], t), name


def test_float_size_counts_every_parameter() -> None:
    model = mlp()
    expected = sum(p.numel() * 4 for p in model.parameters())
    assert size_bytes(model) == expected


@pytest.mark.parametrize(
    ("group", "symmetric", "bits_per_weight"),
    [(32, True, 4.5), (128, True, 4.125), (32, False, 4.625), (128, False, 4.15625)],
)
def test_int4_bits_per_weight_include_scales_and_zeros(
    group: int, symmetric: bool, bits_per_weight: float
) -> None:
    """Trend 11: one 16-bit scale per 32 weights is 4.5 bits per weight, per 128 it is 4.125;
    asymmetric adds a packed 4-bit zero point per group."""
    config = QuantConfig(weight_bits=4, granularity="group", group_size=group, symmetric=symmetric)
    q = quantize_model(mlp(), Plan.uniform(config))
    report = size_report(q)
    assert report.bits_per_quantized_weight == pytest.approx(bits_per_weight)
    float_bytes = sum(
        p.numel() * 4
        for n, p in mlp().named_parameters()
        if "weight" not in n or n.startswith("2.")
    )
    assert report.total_bytes == report.quantized_weight_bytes + float_bytes
    assert report.quantized_share == pytest.approx((256 * 512 + 512 * 64) / report.total_params)


def test_w8_is_about_four_times_smaller_than_fp32() -> None:
    model = mlp()
    q = quantize_model(model, Plan.uniform(QuantConfig()))
    ratio = size_bytes(model) / size_bytes(q)
    assert 3.5 < ratio < 4.0
