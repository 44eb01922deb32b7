"""Replaying the float prefix (`explorer.nn.replay`): the sensitivity table it speeds up is the
same table, bit for bit, on a small seeded Llama; which blocks are replayed; and the guards (a
block called twice per batch, outputs over the byte cap, a pass over more batches)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from explorer.nn import replay
from explorer.nn.convert import quantize_model
from explorer.nn.replay import PrefixRecorder, Replay, changed_modules
from explorer.quant.config import Plan
from explorer.sweep.context import ModelContext, ModelSource
from explorer.sweep.sensitivity import measure_sensitivity, setting_config

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = 3
CHOSEN = (
    "model.layers.0.self_attn.q_proj",
    "model.layers.1.self_attn.o_proj",
    "model.layers.2.mlp.down_proj",
    "lm_head",
)


@pytest.fixture(scope="module")
def llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def ctx(llama: nn.Module) -> ModelContext:
    ids = torch.randint(0, 96, (20, 17), generator=torch.Generator().manual_seed(1))
    x, y = ids[:, :-1], ids[:, 1:]
    return ModelContext(
        name="seeded-llama",
        source=ModelSource(model="seeded-llama"),
        model=llama,
        task="lm",
        metric="perplexity",
        eval_split=(x[:4], y[:4]),
        calibration_split=(x, y),
        train_split=None,
        workloads={},
    )


def _record(model: nn.Module, batches: list[torch.Tensor], **kw: Any) -> PrefixRecorder:
    recorder = PrefixRecorder(**kw)
    with recorder.record(model), torch.inference_mode():
        for x in batches:
            model(input_ids=x, use_cache=False)
    return recorder


def test_sensitivity_with_replay_is_bit_identical(
    ctx: ModelContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every cell (metric, drop, kl, output SQNR, ...) equal to the last bit with and without
    the replay, over 3 calibration batches (8, 8 and 4 sequences); a layer in block k replays
    blocks 0..k-1, the head all of them."""
    replayed: dict[str, list[str]] = {}
    install = replay.PrefixCache.install

    def counting(self: Any, float_model: nn.Module, changed: nn.Module) -> list[Replay]:
        (quantized,) = changed_modules(float_model, changed)
        out = install(self, float_model, changed)
        replayed[quantized] = [r.name for r in out]
        return out

    monkeypatch.setattr(replay.PrefixCache, "install", counting)
    settings = ("W4 g32", "W2 g32")
    fast = measure_sensitivity(ctx, settings, layers=CHOSEN, samples=20, latency=False)
    assert replayed["model.layers.0.self_attn.q_proj"] == []
    assert replayed["model.layers.2.mlp.down_proj"] == ["model.layers.0", "model.layers.1"]
    assert replayed["model.layers.1.self_attn.o_proj"] == ["model.layers.0"]
    assert replayed["lm_head"] == [f"model.layers.{i}" for i in range(LAYERS)]
    monkeypatch.setattr(replay.PrefixRecorder, "cache", lambda self: None)
    full = measure_sensitivity(ctx, settings, layers=CHOSEN, samples=20, latency=False)
    assert fast.cells.keys() == full.cells.keys()
    for key, cell in full.cells.items():
        assert fast.cells[key] == cell, key
    assert all(c.metric_drop is not None for c in full.cells.values())


def test_changed_modules_are_found_by_value_and_name(llama: nn.Module) -> None:
    config = setting_config("W4 g32")
    qmodel = quantize_model(
        llama, Plan(default=None, rules=(("model.layers.1.mlp.up_proj", config),))
    )
    assert changed_modules(llama, qmodel) == {"model.layers.1.mlp.up_proj"}
    twin = quantize_model(llama, Plan(default=None, rules=()))
    assert changed_modules(llama, twin) == set()
    with torch.no_grad():
        twin.model.norm.weight[3] += 1e-6
    assert changed_modules(llama, twin) == {"model.norm"}


def test_blocks_called_twice_or_too_large_are_not_recorded(llama: nn.Module) -> None:
    batches = [torch.arange(16)[None] % 96, torch.arange(16, 32)[None] % 96]
    cache = _record(llama, batches).cache()
    assert cache is not None and cache.batches == 2
    assert sorted(cache.outputs) == [f"model.layers.{i}" for i in range(LAYERS)]
    # outputs of 3 blocks x 2 batches x 16 tokens x 64 floats: 24 KiB
    assert _record(llama, batches, max_bytes=20_000).cache() is None

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.blocks[1](self.blocks[0](self.blocks[0](x)))

    model, twice = Twice(), PrefixRecorder()
    with twice.record(model), torch.inference_mode():
        for _ in range(2):
            model(torch.randn(3, 4))
    cache = twice.cache()
    assert cache is not None and list(cache.outputs) == ["blocks.1"]  # blocks.0 ran twice

    # a block run outside the model's call (an encoder before the decoder) is not recorded
    early = PrefixRecorder()
    with early.record(model), torch.inference_mode():
        for _ in range(2):
            model.blocks[1](torch.randn(3, 4))
            model(torch.randn(3, 4))
    cache = early.cache()
    assert cache is None


def test_a_replay_refuses_a_pass_it_did_not_record(ctx: ModelContext, llama: nn.Module) -> None:
    batches = [ctx.calibration_split[0][:4]]
    cache = _record(llama, batches).cache()
    assert cache is not None
    config = setting_config("W2 g32")
    qmodel = quantize_model(llama, Plan(default=None, rules=(("lm_head", config),)))
    replays = cache.install(llama, qmodel)
    assert len(replays) == LAYERS
    with torch.inference_mode():
        qmodel(input_ids=batches[0], use_cache=False)
        cache.check(replays)
        with pytest.raises(RuntimeError, match="replayed block model.layers.0 called 2 times"):
            qmodel(input_ids=batches[0], use_cache=False)
    replays[0].calls = 0
    with pytest.raises(RuntimeError, match="called 0 times for 1 recorded batches"):
        cache.check(replays)
