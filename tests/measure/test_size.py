"""Size counts every stored byte and equals the payload of the safetensors export."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_model
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


SAFETENSORS_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1,
}  # fmt: skip


def written_data_bytes(path: Path) -> int:
    """Data bytes of a safetensors file read from its own header: 8-byte little-endian header
    length, JSON header, then the tensors back to back. Each tensor's bytes are its dtype's size
    times its element count; the offsets must tile the data section, which must end the file."""
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    header.pop("__metadata__", None)
    total = 0
    for name, v in header.items():
        start, end = v["data_offsets"]
        assert end - start == SAFETENSORS_DTYPE_BYTES[v["dtype"]] * math.prod(v["shape"]), name
        total += end - start
    spans = sorted(tuple(v["data_offsets"]) for v in header.values())
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert 8 + header_len + total == len(raw)
    return total


def tied_mlp() -> nn.Module:
    torch.manual_seed(0)
    shared = nn.Linear(64, 64)
    return nn.Sequential(shared, nn.ReLU(), shared, nn.LayerNorm(64))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_size_equals_bytes_of_a_file_written_without_explorer(
    config: QuantConfig, tmp_path: Path
) -> None:
    """Independent of `_unique_tensors` and `export_safetensors`: safetensors' own writer
    (which drops shared tensors itself) writes the model, and the data bytes come from the
    file's header and length."""
    q = quantize_model(mlp(), Plan.uniform(config), calibration_data=torch.randn(16, 256))
    path = tmp_path / "independent.safetensors"
    save_model(q, str(path))
    assert size_bytes(q) == written_data_bytes(path)


def test_tied_weights_are_counted_once(tmp_path: Path) -> None:
    model = tied_mlp()
    path = tmp_path / "tied.safetensors"
    save_model(model, str(path))
    assert size_bytes(model) == written_data_bytes(path) == (64 * 64 + 64 + 2 * 64) * 4


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
