"""digits-cnn: the shipped weights reproduce the card, the splits are disjoint and stratified,
8-bit per-channel PTQ stays within a point of float (trend 1), and the workloads run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from explorer.measure.evaluation import classification_stats
from explorer.models import digits
from explorer.models.registry import SPLITS, default_model
from explorer.models.safe_load import load_tensors
from explorer.nn import quantize_model
from explorer.quant.config import Plan, QuantConfig

MODEL = digits.MODEL
SPLIT_SIZES = {"train": 1078, "calibration": 179, "eval": 540}
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


def quantized(model: nn.Module, granularity: str) -> nn.Module:
    return quantize_model(model, Plan.uniform(QuantConfig(weight_bits=8, granularity=granularity)))


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return MODEL.load()


@pytest.fixture(scope="module")
def card() -> dict[str, Any]:
    return MODEL.card()


def test_registered_as_a_classifier_but_not_the_default() -> None:
    assert MODEL.task == "classification" and MODEL.metric == "accuracy"
    assert not MODEL.default and default_model() is not MODEL


def test_card_has_the_documented_keys(card: dict[str, Any]) -> None:
    assert CARD_KEYS <= set(card)
    assert card["metric"] == "accuracy"
    assert card["eval_samples"] == SPLIT_SIZES["eval"]
    assert card["train_seconds_2_cores"] is not None and card["train_seconds_2_cores"] < 60
    assert (MODEL.asset_dir / "CARD.md").read_text().startswith("# digits-cnn")


def test_assets_are_small_safetensors() -> None:
    for name in ("model.safetensors", "data.safetensors"):
        assert (MODEL.asset_dir / name).stat().st_size <= 16 * 2**20


def test_shipped_weights_reproduce_the_card(model: nn.Module, card: dict[str, Any]) -> None:
    accuracy = eval_accuracy(model)
    assert accuracy == pytest.approx(card["float"], abs=0.005)
    assert accuracy >= 0.97


def test_splits_are_disjoint_stratified_and_sized() -> None:
    data = load_tensors(MODEL.asset_dir / digits.DATA_FILE)
    assert data["images"].shape == (digits.N_IMAGES, 8, 8) and data["images"].dtype == torch.uint8
    assert data["labels"].dtype == torch.int64 and int(data["images"].max()) <= 16
    # One split code per image: the splits partition the indices, so they cannot overlap.
    assert torch.equal(data["split"], digits.assign_splits(data["labels"]))
    for code, split in enumerate(SPLITS):
        x, y = MODEL.load_split(split)
        assert int((data["split"] == code).sum()) == len(x) == len(y) == SPLIT_SIZES[split]
        assert x.shape[1:] == (1, 8, 8) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert set(y.tolist()) == set(range(10)), f"{split} misses a class"


def test_w8_per_channel_is_within_a_point_of_float(model: nn.Module, card: dict[str, Any]) -> None:
    # Trend 1 (docs/trends.md): 8-bit per-channel PTQ costs about a point at most.
    float_accuracy = eval_accuracy(model)
    w8 = eval_accuracy(quantized(model, "channel"))
    assert w8 >= float_accuracy - 0.01
    assert w8 == pytest.approx(card["w8_channel"], abs=0.005)


@pytest.mark.parametrize("which", ["float", "w8-channel", "w4-g32"])
def test_workloads_run_and_return_logits(model: nn.Module, which: str) -> None:
    if which == "w8-channel":
        model = quantized(model, "channel")
    elif which == "w4-g32":
        w4 = QuantConfig(weight_bits=4, granularity="group", group_size=32)
        model = quantize_model(model, Plan.uniform(w4))
    workloads = MODEL.workloads()
    assert set(workloads) == {"single", "batch64"}
    with torch.inference_mode():
        for name, batch in (("single", 1), ("batch64", 64)):
            out = workloads[name](model)()
            assert out.shape == (batch, 10) and torch.isfinite(out).all()


def test_workload_input_is_bound_once(model: nn.Module) -> None:
    run = MODEL.workloads()["single"](model)
    with torch.inference_mode():
        assert torch.equal(run(), run())


@pytest.mark.slow
def test_retraining_with_the_card_seed_reproduces_it(tmp_path: Path, card: dict[str, Any]) -> None:
    metrics = digits.train(tmp_path, seed=card["seed"])
    assert metrics["float"] == pytest.approx(card["float"], abs=0.01)
    written = json.loads((tmp_path / "card.json").read_text())
    assert CARD_KEYS <= set(written)
    assert written["float"] == metrics["float"]
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "CARD.md").exists()
