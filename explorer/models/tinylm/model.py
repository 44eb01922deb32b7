"""tiny-lm's architecture: a byte-level GPT with rotary positions and a KV cache, and the
constants (context, the card's configurations) the rest of the package shares."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from explorer.quant.config import QuantConfig

NAME = "tiny-lm"
CONTEXT = 256
"""Bytes of context a training or evaluation row holds (and the position table's length)."""
DECODE_CONTEXT = 128
"""Cached tokens in the ``decode`` workload; prompt length of the ``prefill`` workload."""
EVAL_BATCH = 16
MAX_FILE_BYTES = 16 * 1024 * 1024

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
DECODE_GOAL = 1.3
INT4_PLANS = ("w4_g32", "w4_g128")


# --- the model --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyLMConfig:
    vocab_size: int = 256
    block_size: int = CONTEXT
    n_layer: int = 4
    n_head: int = 6
    n_embd: int = 384
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")


@dataclass
class KVCache:
    """Keys and values of the tokens seen so far, preallocated to ``max_len`` positions.

    ``length`` is how many positions hold data. Setting it back (``cache.length = 128``) forgets
    the later tokens without touching the earlier ones, which is how the ``decode`` workload
    repeats the same step.
    """

    k: list[torch.Tensor]  # per layer (B, nh, max_len, hs)
    v: list[torch.Tensor]  # per layer (B, nh, max_len, hs)
    length: int = 0

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]


def rotary_tables(positions: int, head_size: int, base: float = 10000.0) -> torch.Tensor:
    """cos and sin of the rotary angles, (2, positions, head_size / 2): position p turns the
    pair (x_i, x_{i + hs/2}) of a query or key by p * base^(-2i / hs) (RoFormer, Su et al. 2021)."""
    inv_freq = base ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
    angles = torch.outer(torch.arange(positions, dtype=torch.float32), inv_freq)  # (P, hs/2)
    return torch.stack([angles.cos(), angles.sin()])  # (2, P, hs/2)


def apply_rotary(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, nh, T, hs) by the angles of its positions, ``rope`` (2, T, hs/2).

    Attention scores between rotated queries and keys depend only on the distance between their
    positions, so cached keys stay valid as the sequence grows.
    """
    cos, sin = rope  # (T, hs/2) each
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)  # (B, nh, T, hs)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: TinyLMConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(
        self, x: torch.Tensor, rope: torch.Tensor, cache: KVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        """``x`` (B, T, C) at positions ``cache.length ...`` (0 without a cache), ``rope`` the
        rotary tables of those positions (2, T, hs/2) → (B, T, C).

        With a cache, this layer's (rotated) keys and values are written at those positions and
        the queries attend to every cached position up to their own; the caller advances
        ``cache.length`` once all layers have run.
        """
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)  # 3 x (B, T, C)
        q = q.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q, k = apply_rotary(q, rope), apply_rotary(k, rope)  # (B, nh, T, hs) each
        start = 0 if cache is None else cache.length
        if cache is not None:
            cache.k[layer][:, :, start : start + t] = k
            cache.v[layer][:, :, start : start + t] = v
        if start == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        else:
            keys = cache.k[layer][:, :, : start + t]  # (B, nh, start + T, hs)
            values = cache.v[layer][:, :, : start + t]  # (B, nh, start + T, hs)
            mask = None
            if t > 1:  # query i sits at position start + i and sees keys 0 .. start + i
                pos = torch.arange(start + t, device=x.device)
                mask = pos.unsqueeze(0) <= (start + torch.arange(t, device=x.device)).unsqueeze(1)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(b, t, c)  # (B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, config: TinyLMConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.n_embd, config.mlp_ratio * config.n_embd, bias=False)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(config.mlp_ratio * config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, config: TinyLMConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, rope: torch.Tensor, cache: KVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), rope, cache, layer)  # (B, T, C)
        return x + self.mlp(self.ln2(x))  # (B, T, C)


class TinyLM(nn.Module):
    """Byte-level GPT: ``forward(idx (B, T)) -> logits (B, T, 256)``, plus a KV-cache path."""

    def __init__(self, config: TinyLMConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or TinyLMConfig()
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Derived from the config, not learned: not part of the state dict or the weights file.
        rope = rotary_tables(config.block_size, config.n_embd // config.n_head)
        self.register_buffer("rope", rope, persistent=False)  # (2, block_size, hs/2)
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections so the residual stream's variance does not
        # grow with depth.
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.fc2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def _trunk(self, idx: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        """Hidden states before ``ln_f``: ``idx`` (B, T) → (B, T, C)."""
        _, t = idx.shape
        start = 0 if cache is None else cache.length
        if start + t > self.config.block_size:
            raise ValueError(
                f"{start + t} positions exceed the context of {self.config.block_size} bytes"
            )
        if cache is not None and start + t > cache.max_len:
            raise ValueError(f"{start + t} positions exceed the cache of {cache.max_len}")
        rope = self.rope[:, start : start + t]  # (2, T, hs/2)
        x = self.tok_emb(idx)  # (B, T, C)
        for layer, block in enumerate(self.blocks):
            x = block(x, rope, cache, layer)  # (B, T, C)
        if cache is not None:
            cache.length = start + t
        return x

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.ln_f(self._trunk(idx, None)))  # (B, T, V)

    def init_cache(self, batch_size: int = 1, max_len: int | None = None) -> KVCache:
        """An empty cache for ``batch_size`` sequences of up to ``max_len`` (default: the
        context length) positions, in the dtype and device of the embeddings."""
        cfg = self.config
        max_len = cfg.block_size if max_len is None else max_len
        ref = self.tok_emb.weight
        shape = (batch_size, cfg.n_head, max_len, cfg.n_embd // cfg.n_head)
        return KVCache(
            k=[torch.zeros(shape, dtype=ref.dtype, device=ref.device) for _ in self.blocks],
            v=[torch.zeros(shape, dtype=ref.dtype, device=ref.device) for _ in self.blocks],
        )

    def prefill(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run ``idx`` (B, T) after the cached tokens, cache it, and return the logits of its
        last position (B, V): the distribution of the next token."""
        x = self._trunk(idx, cache)  # (B, T, C)
        return self.lm_head(self.ln_f(x[:, -1]))  # (B, V)

    def decode_step(self, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One generation step: ``token`` (B,) follows the cached tokens; logits (B, V)."""
        return self.prefill(token.view(-1, 1), cache)  # (B, V)


def build(config: TinyLMConfig | None = None) -> TinyLM:
    return TinyLM(config)
