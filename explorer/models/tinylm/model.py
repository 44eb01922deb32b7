"""tiny-lm's architecture and the constants the package shares: a `LlamaForCausalLM` and the
card's quantization configs.

Shape: 512 wide, 4 layers, 8 query heads of 64 sharing 2 key/value heads (grouped-query
attention), a SwiGLU MLP 1024 wide, RMSNorm, rotary positions, 256 tokens of context and a
4,096-token byte-level BPE vocabulary with tied embeddings (an untied head would add 2.1 M
parameters, 19 % of the model, that a few minutes of training cannot give a job of its own).

Why these widths. Every matrix's input width (512 for the projections, 1024 for ``down_proj``)
is a multiple of 256, the block of llama.cpp's k-quants (Q2_K ... Q6_K), so every tensor takes
the type a recipe asks for rather than a Q4_0/Q5_0 fallback; and a multiple of 128, so group
sizes 32 / 64 / 128 apply to every linear layer and the native int4/int8 kernels run them all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from explorer.errors import ModelLoadError
from explorer.models.registry import ASSETS
from explorer.quant.config import QuantConfig

NAME = "tiny-lm"
VOCAB = 4096
CONTEXT = 256
"""Tokens a training or evaluation row holds (and the rotary tables' length)."""
DECODE_CONTEXT = 128
"""Cached tokens in the ``decode`` workload; prompt length of the ``prefill`` workload."""
EVAL_BATCH = 16
BOS, EOS = "<s>", "</s>"
ARCHITECTURE: dict[str, Any] = {
    "hidden_size": 512,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "max_position_embeddings": CONTEXT,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "initializer_range": 0.02,
}

PTQ_CONFIGS: dict[str, QuantConfig] = {
    "w8_channel": QuantConfig(weight_bits=8),
    "w4_g32": QuantConfig(weight_bits=4, granularity="group", group_size=32),
    "w4_g128": QuantConfig(weight_bits=4, granularity="group", group_size=128),
    "w4_channel": QuantConfig(weight_bits=4),
}
"""The card's round-to-nearest, symmetric, min-max, weight-only PTQ configs."""

LATENCY_CONFIGS: dict[str, QuantConfig] = {
    "fp32": QuantConfig.float("fp32"),
    "bf16": QuantConfig.float("bf16"),
    "w8_channel": PTQ_CONFIGS["w8_channel"],
    "w8a8_token": QuantConfig(weight_bits=8, act_bits=8, act_granularity="token"),
    "w4_g32": PTQ_CONFIGS["w4_g32"],
    "w4_g128": PTQ_CONFIGS["w4_g128"],
}
INT8_PLANS = ("w8_channel", "w8a8_token")
INT4_PLANS = ("w4_g32", "w4_g128")
DECODE_GOAL = 1.3
"""The card's decode goal: the best int8 and the best int4 plan at least this much faster than
fp32 per decode step."""


def llama_config(tokenizer: Any | None = None, **overrides: Any) -> Any:
    """The `LlamaConfig` of `ARCHITECTURE` (with ``overrides``) for ``tokenizer``'s vocabulary
    (the shipped tokenizer by default)."""
    from transformers import LlamaConfig

    from explorer.models.tinylm.data import load_tokenizer

    tokenizer = tokenizer or load_tokenizer()
    return LlamaConfig(
        **{**ARCHITECTURE, **overrides},
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


class LogitsOnly(nn.Module):
    """Wraps a causal LM so that ``model(ids)`` returns logits (B, T, V) (training, tests)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, use_cache=False).logits


def build() -> nn.Module:
    """The `LlamaForCausalLM`, randomly initialised (the shipped tokenizer's vocabulary)."""
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(llama_config())


def load(directory: str | os.PathLike[str] | None = None) -> nn.Module:
    """The shipped float model (fp32) through the explorer's safe HF loader, in eval mode."""
    from explorer.models.hf import load_hf

    path = Path(directory) if directory else ASSETS / NAME
    if not (path / "model.safetensors").exists():
        raise ModelLoadError(
            f"weights of built-in model {NAME!r} are missing at {path}; run `explorer train {NAME}`"
        )
    return load_hf(path).model.float().eval()
