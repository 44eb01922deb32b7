"""mobile-cnn: the shipped weights reproduce the card, the generated splits are disjoint and
regenerate bit for bit, per-tensor 8-bit weights collapse after batch-norm folding while
per-channel holds (trend 2), and the workloads run."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from explorer.measure.evaluation import classification_stats
from explorer.models import mobile
from explorer.models.registry import SPLITS, default_model
from explorer.nn import quantize_model
from explorer.nn.fold import fold_batch_norm
from explorer.quant.config import Plan, QuantConfig

MODEL = mobile.MODEL
CARD_KEYS = {
    "float",
    "w8_channel",
    "w4_g32",
    "w4_g128",
    "metric",
    "eval_samples",
    "train_seconds_2_cores",
    "seed",
}


def eval_accuracy(model: nn.Module) -> float:
    x, y = MODEL.load_split("eval")
    with torch.inference_mode():
        return classification_stats(model(x), y).accuracy()


def w8(model: nn.Module, granularity: str) -> nn.Module:
    return quantize_model(model, Plan.uniform(QuantConfig(weight_bits=8, granularity=granularity)))


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return MODEL.load()


@pytest.fixture(scope="module")
def card() -> dict[str, Any]:
    return MODEL.card()


@pytest.fixture(scope="module")
def float_accuracy(model: nn.Module) -> float:
    return eval_accuracy(model)


def test_registered_as_the_default_model() -> None:
    assert MODEL.default and MODEL.task == "classification" and MODEL.metric == "accuracy"
    assert default_model() is MODEL


def test_card_has_the_documented_keys(card: dict[str, Any]) -> None:
    assert CARD_KEYS <= set(card) and "w8_tensor" in card
    assert card["metric"] == "accuracy"
    assert card["eval_samples"] == mobile.SPLIT_SIZES["eval"]
    assert card["train_seconds_2_cores"] is not None and card["train_seconds_2_cores"] < 180
    assert (MODEL.asset_dir / "CARD.md").read_text().startswith("# mobile-cnn")


def test_assets_are_small_safetensors() -> None:
    for name in ("model.safetensors", "data.safetensors"):
        assert (MODEL.asset_dir / name).stat().st_size <= 16 * 2**20


def test_shipped_weights_reproduce_the_card(float_accuracy: float, card: dict[str, Any]) -> None:
    assert float_accuracy == pytest.approx(card["float"], abs=0.005)
    assert float_accuracy >= 0.95


def test_splits_are_disjoint_balanced_and_sized() -> None:
    seen: dict[bytes, str] = {}
    for split in SPLITS:
        x, y = MODEL.load_split(split)
        assert x.shape == (mobile.SPLIT_SIZES[split], 3, 32, 32) and x.dtype == torch.float32
        assert torch.equal(y.bincount(), torch.full((10,), len(y) // 10))
        raw, _ = mobile.raw_split(split)
        for image in raw:
            key = image.numpy().tobytes()
            assert seen.setdefault(key, split) == split, f"an image is in {seen[key]} and {split}"


@pytest.mark.parametrize("split", mobile.SHIPPED_SPLITS)
def test_shipped_data_regenerates_bit_for_bit(split: str) -> None:
    shipped_x, shipped_y = mobile.raw_split(split)
    x, y = mobile.generate(mobile.SPLIT_SIZES[split], mobile.split_seed(split))
    assert torch.equal(x, shipped_x) and torch.equal(y, shipped_y)


def test_generator_is_seeded_and_covers_every_shape() -> None:
    x1, y1 = mobile.generate(20, seed=7)
    x2, y2 = mobile.generate(20, seed=7)
    x3, _ = mobile.generate(20, seed=8)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert set(y1.tolist()) == set(range(len(mobile.SHAPES)))
    assert x1.dtype == torch.uint8 and x1.shape == (20, 3, 32, 32)


def test_folding_keeps_the_float_function(model: nn.Module) -> None:
    x, _ = MODEL.load_split("calibration")
    folded, names = fold_batch_norm(MODEL.load())  # folding mutates, so a fresh copy
    assert len(names) == 1 + 2 * len(mobile.BLOCKS)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-3)


def test_per_tensor_w8_collapses_and_per_channel_holds(
    model: nn.Module, float_accuracy: float, card: dict
) -> None:
    # Trend 2 (docs/trends.md; Krishnamoorthi 2018, table 2: MobileNet-v1 70.9 / 0.1 / 70.3 %).
    per_tensor = eval_accuracy(w8(model, "tensor"))
    per_channel = eval_accuracy(w8(model, "channel"))
    assert per_tensor <= float_accuracy - 0.10
    assert per_channel >= float_accuracy - 0.01
    assert per_tensor == pytest.approx(card["w8_tensor"], abs=0.005)
    assert per_channel == pytest.approx(card["w8_channel"], abs=0.005)


def test_the_cause_is_folded_depthwise_ranges(model: nn.Module) -> None:
    # A depthwise channel reading an almost-constant input has a running variance near zero, so
    # folding multiplies it by up to gamma / sqrt(eps): some layer's channel ranges must differ by
    # far more than the 127 steps of an 8-bit code can span.
    ratios = mobile.folded_range_ratios(model)
    depthwise = {f"features.{i + 1}.0" for i in range(len(mobile.BLOCKS))}
    assert max(ratios[name] for name in depthwise) > 100
    variances = torch.cat([m.running_var for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    assert float(variances.min()) < 1e-6


@pytest.mark.parametrize("granularity", ["float", "tensor", "channel"])
def test_workloads_run_and_return_logits(model: nn.Module, granularity: str) -> None:
    if granularity != "float":
        model = w8(model, granularity)
    workloads = MODEL.workloads()
    assert set(workloads) == {"single", "batch64"}
    with torch.inference_mode():
        for name, batch in (("single", 1), ("batch64", 64)):
            out = workloads[name](model)()
            assert out.shape == (batch, 10) and torch.isfinite(out).all()
