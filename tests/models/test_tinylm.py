"""tiny-lm: the shipped weights against their card, the group-size trend at 4 bits (trend 4,
docs/trends.md), int8 fidelity, the KV-cache decode path against a full forward pass, the latency
workloads on quantized models, and the corpus splits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from explorer.measure.evaluation import lm_stats
from explorer.models.corpus import CALIBRATION_ROWS, EVAL_ROWS, STRETCHES, split_corpus
from explorer.models.safe_load import load_into
from explorer.models.tinylm import (
    CONTEXT,
    DECODE_CONTEXT,
    MAX_FILE_BYTES,
    PTQ_CONFIGS,
    TINY_LM,
    TrainConfig,
    perplexity,
    train,
)
from explorer.nn import quantize_model
from explorer.nn.convert import quant_modules
from explorer.quant.config import Plan, QuantConfig

CARD_KEYS = {
    "float",
    "w8_channel",
    "w4_g32",
    "w4_g128",
    "w4_channel",
    "metric",
    "eval_tokens",
    "train_seconds_2_cores",
    "seed",
    "params",
}


@pytest.fixture(scope="module")
def float_model() -> nn.Module:
    return TINY_LM.load()


@pytest.fixture(scope="module")
def card() -> dict:
    return TINY_LM.card()


@pytest.fixture(scope="module")
def eval_split() -> tuple[torch.Tensor, torch.Tensor]:
    return TINY_LM.load_split("eval")


@pytest.fixture(scope="module")
def ptq(float_model: nn.Module, eval_split: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """Perplexity of each PTQ config, quantized weights run through the float reference kernel
    (the same function as the real kernels, at fp32 GEMM speed on 32k tokens)."""
    out = {}
    for name, config in PTQ_CONFIGS.items():
        qmodel = quantize_model(float_model, Plan.uniform(config))
        for module in quant_modules(qmodel).values():
            module.use_kernel("reference")
        out[name] = perplexity(qmodel, *eval_split)
    return out


def test_card_and_shipped_files(card: dict, float_model: nn.Module) -> None:
    assert CARD_KEYS <= set(card)
    assert card["metric"] == "perplexity"
    assert card["params"] == sum(p.numel() for p in float_model.parameters())
    assert 2_000_000 <= card["params"] <= 8_000_000
    assert card["eval_tokens"] == math.prod(TINY_LM.load_split("eval")[1].shape)
    assert TINY_LM.weights_path.stat().st_size <= MAX_FILE_BYTES
    assert (TINY_LM.asset_dir / "CARD.md").exists()
    assert (TINY_LM.asset_dir / "LICENSE-PSF.txt").exists()


def test_linear_layers_are_named_and_sized_for_the_kernels(float_model: nn.Module) -> None:
    linears = {n: m for n, m in float_model.named_modules() if isinstance(m, nn.Linear)}
    for layer in ("blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1", "lm_head"):
        assert layer in linears
    assert all(m.in_features % 32 == 0 and m.out_features % 32 == 0 for m in linears.values())


def test_float_perplexity_matches_card(
    float_model: nn.Module, card: dict, eval_split: tuple[torch.Tensor, torch.Tensor]
) -> None:
    inputs, targets = eval_split
    with torch.inference_mode():
        logits = torch.cat([float_model(inputs[i : i + 16]) for i in range(0, len(inputs), 16)])
    ppl = lm_stats(logits, targets).perplexity()
    assert ppl == pytest.approx(card["float"], rel=0.01)


def test_smaller_groups_help_at_4_bits(ptq: dict[str, float], card: dict) -> None:
    assert ptq["w4_g32"] < ptq["w4_g128"] < ptq["w4_channel"]
    for name in ("w4_g32", "w4_g128", "w4_channel"):  # the card's numbers come from real kernels
        assert ptq[name] == pytest.approx(card[name], rel=0.005)


def test_int8_per_channel_is_within_2_percent_of_float(ptq: dict[str, float], card: dict) -> None:
    assert ptq["w8_channel"] == pytest.approx(card["float"], rel=0.02)
    assert ptq["w8_channel"] == pytest.approx(card["w8_channel"], rel=0.005)


def test_decode_step_matches_full_forward(
    float_model: nn.Module, eval_split: tuple[torch.Tensor, torch.Tensor]
) -> None:
    tokens = eval_split[0][:2, : DECODE_CONTEXT + 1]  # (2, 129)
    with torch.inference_mode():
        full = float_model(tokens)  # (2, 129, V)
        cache = float_model.init_cache(batch_size=2)
        prefill = float_model.prefill(tokens[:, :DECODE_CONTEXT], cache)  # (2, V)
        step = float_model.decode_step(tokens[:, DECODE_CONTEXT], cache)  # (2, V)
        chunked = float_model.init_cache(batch_size=2)
        float_model.prefill(tokens[:, :50], chunked)
        rest = float_model.prefill(tokens[:, 50:], chunked)  # (2, V)
    assert cache.length == chunked.length == DECODE_CONTEXT + 1
    torch.testing.assert_close(prefill, full[:, DECODE_CONTEXT - 1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(step, full[:, DECODE_CONTEXT], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rest, full[:, DECODE_CONTEXT], rtol=1e-4, atol=1e-5)


def test_context_overflow_is_an_error(float_model: nn.Module) -> None:
    with pytest.raises(ValueError, match="exceed"):
        float_model(torch.zeros(1, CONTEXT + 1, dtype=torch.long))


@pytest.mark.parametrize(
    "config",
    [
        QuantConfig(weight_bits=8),
        QuantConfig(weight_bits=4, granularity="group", group_size=32),
        QuantConfig(weight_bits=8, act_bits=8, act_granularity="token"),
    ],
    ids=["w8", "w4-g32", "w8a8-token"],
)
def test_workloads_run_on_quantized_models(float_model: nn.Module, config: QuantConfig) -> None:
    example = torch.zeros(1, 1, dtype=torch.long)
    qmodel = quantize_model(float_model, Plan.uniform(config), example_input=example)
    assert all(not m.simulated for m in quant_modules(qmodel).values())
    reference = TINY_LM.workloads()["decode"](float_model)()  # (1, V)
    for name, make in TINY_LM.workloads().items():
        fn = make(qmodel)
        first, second = fn(), fn()
        assert first.shape == (1, 256) and torch.isfinite(first).all()
        torch.testing.assert_close(first, second, rtol=0, atol=0)  # the cache stays at 128
        if name == "decode":
            cosine = torch.cosine_similarity(first, reference, dim=-1)
            assert float(cosine) > 0.98


def test_decode_workload_times_the_129th_token(
    float_model: nn.Module, eval_split: tuple[torch.Tensor, torch.Tensor]
) -> None:
    prompt = eval_split[0][:1, :DECODE_CONTEXT]
    with torch.inference_mode():
        token = float_model(prompt)[:, -1].argmax(dim=-1)  # (1,)
        expected = float_model(torch.cat([prompt, token.view(1, 1)], dim=1))[:, -1]  # (1, V)
    step = TINY_LM.workloads()["decode"](float_model)
    for _ in range(3):
        torch.testing.assert_close(step(), expected, rtol=1e-4, atol=1e-5)


def test_splits_are_fixed_rows_of_next_byte_pairs() -> None:
    for split in ("train", "calibration", "eval"):
        inputs, targets = TINY_LM.load_split(split)
        assert inputs.shape == targets.shape and inputs.shape[1] == CONTEXT
        assert inputs.dtype == targets.dtype == torch.int64
        assert torch.equal(inputs[:, 1:], targets[:, :-1])
    inputs, _ = TINY_LM.load_split("eval")
    assert inputs.shape[0] == STRETCHES * EVAL_ROWS
    assert torch.equal(inputs, TINY_LM.load_split("eval")[0])


def test_split_corpus_holds_out_the_end_of_every_stretch() -> None:
    row = 5
    stretch = 4 * (EVAL_ROWS + CALIBRATION_ROWS) * row
    data = bytes(i // stretch for i in range(STRETCHES * stretch))  # byte = its stretch
    splits = split_corpus(data, row)
    sizes = [splits.train.numel(), splits.calibration.numel(), splits.eval.numel()]
    assert sum(sizes) == len(data)
    for part, rows in ((splits.eval, EVAL_ROWS), (splits.calibration, CALIBRATION_ROWS)):
        counts = torch.bincount(part.long(), minlength=STRETCHES)
        assert counts.tolist() == [rows * row] * STRETCHES
    assert data[stretch - EVAL_ROWS * row : stretch] == bytes(splits.eval[: EVAL_ROWS * row])


@pytest.mark.slow
def test_training_runs_end_to_end(tmp_path: Path) -> None:
    config = TrainConfig(steps=3, batch_size=2, warmup=1, threads=1)
    options = {"threads": (1,), "repeats": {"decode": 3, "prefill": 2}, "rounds": 1}
    metrics = train(tmp_path, seed=0, config=config, eval_rows=2, latency_options=options)
    card = json.loads((tmp_path / "card.json").read_text())
    assert CARD_KEYS <= set(card)
    assert card["float"] == metrics["float"] and math.isfinite(card["float"])
    assert card["eval_tokens"] == 2 * CONTEXT
    assert {"decode", "prefill"} <= set(card["latency"]["threads"]["1"]["plans"]["fp32"])
    assert "int4" in (tmp_path / "CARD.md").read_text()
    model = load_into(TINY_LM.build(), tmp_path / "model.safetensors").eval()
    inputs, targets = TINY_LM.load_split("eval")
    assert perplexity(model, inputs[:2], targets[:2]) == pytest.approx(card["float"], rel=1e-6)
