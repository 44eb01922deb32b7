"""`tiny-lm`: a byte-level GPT trained here on the prose of CPython's standard library.

The model is the decoder-only transformer of GPT-2 as nanoGPT writes it (Karpathy, nanoGPT
``model.py``): a token embedding, pre-LayerNorm blocks of causal self-attention and a 4x GELU
MLP, a final LayerNorm and a linear head. The shape is nanoGPT's ``shakespeare_char`` baby GPT
(384 wide, 6 heads of 64, 256 bytes of context) with 4 layers instead of 6: 7.3 M parameters.
The vocabulary is the 256 byte values, so there is no tokenizer: any UTF-8 text is a sequence of
tokens.

Positions are rotary (RoFormer, Su et al. 2021; as nanochat's ``gpt.py`` does) rather than
nanoGPT's learned table: each query and key is rotated by an angle proportional to its position,
so attention scores depend on relative distance, and "look at the previous byte" is easy to learn
from the start. Measured here with the same recipe, the learned table kept the model near the
unigram loss (2.7 nats per byte) for the first 100 steps, rotary reached 2.4 by step 100; with
a training budget of minutes that difference decides the model's quality.

Every projection is an ``nn.Linear`` named as users will write patterns against it
(``blocks.0.attn.qkv``, ``blocks.0.attn.proj``, ``blocks.0.mlp.fc1``, ``blocks.0.mlp.fc2``,
``lm_head``), and every in/out width is a multiple of 128, so per-group quantization with groups
of 32, 64 or 128 applies to every layer and the native int4/int8 kernels (K a multiple of 32)
run them all.

Generation uses a KV cache, as nanochat's ``engine.py`` does: `TinyLM.prefill` runs the prompt
once and stores each layer's keys and values; `TinyLM.decode_step` then feeds one token, attends
to the cached keys and values, and appends its own. The ``decode`` latency workload is exactly
one such step at batch 1 with 128 cached tokens: one matrix-vector product per layer, so its
time is the time to stream the weights, which is where int8 and int4 weights pay off. The
``prefill`` workload runs 128 prompt tokens at once (matrix-matrix products, compute-bound).

Why this size. The fp32 weights of the linear layers (28.7 MB) are about the 32 MiB L3 and do
not stay there between decode steps, so fp32 decoding streams them from memory; the int8 (7.2 MB)
and int4 (3.7 to 4 MB with scales) copies stay cached. A model a few times smaller would fit the
cache even in fp32, and its decode step would be bound by per-call overhead (trend 12,
docs/trends.md). The weights ship as bf16 (14.6 MB, under the 16 MB per-file limit); the float
reference is those bf16 values in fp32.

Training (`train`): fixed seeds, AdamW, linear warm-up and cosine decay, random 256-byte windows
of the training split. The card (``card.json``, ``CARD.md``) records the float perplexity on the
eval split, round-to-nearest PTQ perplexities, and decode / prefill latencies measured on the
real kernels.

Imports `explorer.errors`, `explorer.quant`, `explorer.nn` and `explorer.models`; the card's
latency table imports `explorer.measure.latency` inside `measure_workloads` (a card is a
measurement; nothing else here depends on the measurement layer).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from explorer.errors import ModelLoadError
from explorer.machine import cpu_features
from explorer.models.corpus import Splits, read_gzip, split_corpus
from explorer.models.registry import ASSETS, SPLITS, BuiltinModel, Workload, register
from explorer.models.safe_load import load_into
from explorer.nn.convert import quant_modules, quantize_model
from explorer.quant.config import Plan, QuantConfig

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


# --- data -------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _splits() -> Splits:
    path = ASSETS / NAME / "corpus.txt.gz"
    if not path.exists():
        raise ModelLoadError(
            f"the tiny-lm corpus is missing at {path}; run `python scripts/build_corpus.py`"
        )
    return split_corpus(read_gzip(path), CONTEXT + 1)


def split_bytes(split: str) -> torch.Tensor:
    """The raw bytes (uint8, 1-D) of ``split``; a copy, so callers may modify it."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
    return getattr(_splits(), split).clone()


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)``, both int64 (n, 256): non-overlapping 257-byte rows of ``split``,
    targets shifted by one byte (next-byte prediction). Deterministic."""
    data = split_bytes(split)
    rows = data.numel() // (CONTEXT + 1)
    chunks = data[: rows * (CONTEXT + 1)].view(rows, CONTEXT + 1).long()  # (n, T + 1)
    return chunks[:, :-1].contiguous(), chunks[:, 1:].contiguous()


def random_batch(
    data: torch.Tensor, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``data`` (1-D bytes): inputs and targets (B, T)."""
    starts = torch.randint(data.numel() - CONTEXT - 1, (batch_size,), generator=generator)
    offsets = torch.arange(CONTEXT + 1)
    windows = data[starts.unsqueeze(1) + offsets].long()  # (B, T + 1)
    return windows[:, :-1], windows[:, 1:]


def perplexity(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int = EVAL_BATCH,
) -> float:
    """exp(mean next-byte NLL) over every position of ``inputs`` (n, T): the per-token
    perplexity, summed in float64 batch by batch (the formula of `SampleStats.perplexity`)."""
    nll = torch.zeros((), dtype=torch.float64)
    with torch.inference_mode():
        for start in range(0, inputs.shape[0], batch_size):
            logits = model(inputs[start : start + batch_size])  # (b, T, V)
            nll += F.cross_entropy(
                logits.double().flatten(0, 1),
                targets[start : start + batch_size].flatten(),
                reduction="sum",
            )
    return math.exp(float(nll) / targets.numel())


# --- latency workloads ------------------------------------------------------------------------


def _prompt() -> torch.Tensor:
    """The first 128 bytes of the first eval row, (1, 128): the workloads' fixed prompt."""
    data = split_bytes("eval")
    return data[:DECODE_CONTEXT].long().unsqueeze(0)


def decode_workload(model: nn.Module) -> Callable[[], torch.Tensor]:
    """One decode step at batch 1 after 128 cached tokens. The prompt is prefilled once, here;
    each call rewinds the cache to 128 tokens (the cached prefix is never rewritten) and feeds
    the same next token, so repeated calls do identical work."""
    prompt = _prompt()  # (1, 128)
    cache = model.init_cache(1, DECODE_CONTEXT + 1)
    with torch.no_grad():
        token = model.prefill(prompt, cache).argmax(dim=-1)  # (1,)

    def step() -> torch.Tensor:
        cache.length = DECODE_CONTEXT
        with torch.no_grad():
            return model.decode_step(token, cache)  # (1, V)

    return step


def prefill_workload(model: nn.Module) -> Callable[[], torch.Tensor]:
    """A 128-token prefill at batch 1 into an empty cache; returns the next-token logits."""
    prompt = _prompt()  # (1, 128)
    cache = model.init_cache(1, DECODE_CONTEXT)

    def run() -> torch.Tensor:
        cache.length = 0
        with torch.no_grad():
            return model.prefill(prompt, cache)  # (1, V)

    return run


def workloads() -> dict[str, Workload]:
    return {"decode": decode_workload, "prefill": prefill_workload}


WORKLOAD_INPUTS: dict[str, Callable[[], torch.Tensor]] = {
    "decode": lambda: torch.zeros(1, 1, dtype=torch.long),
    "prefill": _prompt,
}
"""Example inputs for kernel selection: each layer sees 1 row when decoding, 128 in prefill."""


# --- training and the card --------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 400
    batch_size: int = 16
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup: int = 20
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    threads: int = 2

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to ``min_lr`` at the last step."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * progress))


@dataclass
class TrainLog:
    seconds: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)
    resumed_at: list[int] = field(default_factory=list)


def _log(message: str) -> None:
    print(f"[tiny-lm] {message}", file=sys.stderr, flush=True)


CHECKPOINT_EVERY = 25


def fit(model: TinyLM, config: TrainConfig, seed: int, checkpoint: Path | None = None) -> TrainLog:
    """Train ``model`` in place on random windows of the train split.

    With ``checkpoint``, the whole training state (weights, optimizer, batch sampler, log) is
    saved there every `CHECKPOINT_EVERY` steps and training resumes from it if it was written
    for the same config and seed, so a killed run continues where it stopped and ends with the
    same weights. ``seconds`` counts training time only, summed over the sessions.
    """
    generator = torch.Generator().manual_seed(seed)  # the batches
    data = split_bytes("train")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=config.betas,
    )
    log = TrainLog()
    first = 0
    key = json.dumps({"config": asdict(config), "seed": seed}, sort_keys=True)
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        if state["key"] == key:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            first = state["step"]
            log = TrainLog(state["seconds"], [tuple(x) for x in state["losses"]], state["resumed"])
            log.resumed_at.append(first)
            _log(f"resuming at step {first} from {checkpoint}")
    model.train()
    t0 = time.perf_counter() - log.seconds
    for step in range(first, config.steps):
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)
        inputs, targets = random_batch(data, config.batch_size, generator)  # (B, T) each
        logits = model(inputs)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if step % 25 == 0 or step == config.steps - 1:
            log.losses.append((step, loss.item()))
            elapsed = time.perf_counter() - t0
            _log(f"step {step}/{config.steps} loss {loss.item():.4f} ({elapsed:.0f} s)")
        if checkpoint is not None and (step + 1) % CHECKPOINT_EVERY == 0:
            state = {
                "key": key,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "step": step + 1,
                "seconds": time.perf_counter() - t0,
                "losses": log.losses,
                "resumed": log.resumed_at,
            }
            torch.save(state, checkpoint.with_suffix(".tmp"))
            checkpoint.with_suffix(".tmp").replace(checkpoint)
    log.seconds = time.perf_counter() - t0
    model.eval()
    return log


def save_weights(model: nn.Module, path: Path) -> str:
    """Write the state dict as fp32 if it fits in `MAX_FILE_BYTES`, else as bf16; return the
    dtype written."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    dtype = torch.float32
    if sum(t.numel() * 4 for t in state.values()) > MAX_FILE_BYTES:
        dtype = torch.bfloat16
    safetensors.torch.save_file({k: v.to(dtype) for k, v in state.items()}, str(path))
    return str(dtype).removeprefix("torch.")


def ptq_perplexities(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> dict[str, float]:
    """Perplexity under each of `PTQ_CONFIGS` (uniform plans, every linear layer quantized,
    run on each layer's default real kernel)."""
    out = {}
    for name, config in PTQ_CONFIGS.items():
        qmodel = quantize_model(model, Plan.uniform(config))
        out[name] = perplexity(qmodel, inputs, targets)
        _log(f"{name}: perplexity {out[name]:.4f}")
    return out


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes a forward pass reads for the linear layers' weights (codes, scales and zero
    points as stored; fp32 or bf16 weights for float layers): what a decode step streams."""
    total = 0
    for name, module in model.named_modules():
        if (name.startswith("blocks.") and name.count(".") == 3) or name == "lm_head":
            tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def _kernel_counts(model: nn.Module) -> dict[str, int]:
    counts: dict[str, int] = {}
    for module in quant_modules(model).values():
        counts[module.kernel_name] = counts.get(module.kernel_name, 0) + 1
    return dict(sorted(counts.items()))


def measure_workloads(
    model: nn.Module,
    threads: tuple[int, ...] = (1, 2),
    repeats: dict[str, int] | None = None,
    rounds: int = 5,
) -> dict[str, Any]:
    """Latency of every workload under each of `LATENCY_CONFIGS`, at each thread count.

    Each layer's kernel is chosen by timing on the workload's real row count (1 for decode,
    128 for prefill). Every (config, workload) is timed `rounds` times, interleaved, with
    `explorer.measure.latency.measure_callable` (warm-up, median of ``repeats`` calls, machine
    lock); the lowest of the round medians is kept, so a round slowed by another process on the
    machine does not decide the comparison. All medians are kept in the result.
    """
    from explorer.measure.latency import measure_callable

    repeats = repeats or {"decode": 200, "prefill": 20}
    before = torch.get_num_threads()
    results: dict[str, Any] = {
        "threads": {},
        "method": f"lowest of {rounds} interleaved round medians; repeats {repeats}",
        "load_average_at_start": os.getloadavg()[0],
        "cpu": cpu_features(),
    }
    try:
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            table: dict[str, dict[str, Any]] = {}
            calls: list[tuple[str, str, Callable[[], Any]]] = []
            for workload, make in workloads().items():
                for name, config in LATENCY_CONFIGS.items():
                    example = WORKLOAD_INPUTS[workload]()
                    qmodel = quantize_model(model, Plan.uniform(config), example_input=example)
                    calls.append((name, workload, make(qmodel)))
                    row = table.setdefault(name, {"weight_bytes": linear_weight_bytes(qmodel)})
                    entry = row.setdefault(workload, {})
                    entry["kernels"] = _kernel_counts(qmodel)
                    entry["medians_ms"] = []
            for _ in range(rounds):
                for name, workload, fn in calls:
                    result = measure_callable(fn, warmup=5, repeats=repeats[workload])
                    entry = table[name][workload]
                    entry["medians_ms"].append(result.median_ms)
                    if result.median_ms <= min(entry["medians_ms"]):
                        entry.update(
                            ms=result.median_ms, p10_ms=result.p10_ms, p90_ms=result.p90_ms
                        )
            results["threads"][str(n_threads)] = _with_speedups(table)
            _log(f"latency at {n_threads} thread(s): {_latency_line(table)}")
    finally:
        torch.set_num_threads(before)
    return results


def _with_speedups(table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"plans": table, "best": {}}
    for workload in workloads():
        base = table["fp32"][workload]["ms"]
        for name in table:
            table[name][workload]["speedup_vs_fp32"] = base / table[name][workload]["ms"]
        for label, names in (("int8", INT8_PLANS), ("int4", INT4_PLANS)):
            best = min(names, key=lambda n, w=workload: table[n][w]["ms"])
            out["best"][f"{label}_{workload}"] = {
                "plan": best,
                "ms": table[best][workload]["ms"],
                "speedup_vs_fp32": table[best][workload]["speedup_vs_fp32"],
                "speedup_vs_bf16": table["bf16"][workload]["ms"] / table[best][workload]["ms"],
            }
    return out


def _latency_line(table: dict[str, dict[str, Any]]) -> str:
    return ", ".join(
        f"{name} decode {table[name]['decode']['ms']:.3f} ms prefill "
        f"{table[name]['prefill']['ms']:.2f} ms"
        for name in table
    )


def train(
    out_dir: Path,
    seed: int = 0,
    *,
    config: TrainConfig | None = None,
    eval_rows: int | None = None,
    latency: bool = True,
    latency_options: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Train from scratch; write ``model.safetensors``, ``card.json`` and ``CARD.md`` to
    ``out_dir``; return the card's perplexities.

    ``config`` overrides the training recipe (tests run a few steps); ``eval_rows`` limits the
    evaluation rows; ``latency=False`` skips the latency table; ``latency_options`` are passed
    to `measure_workloads` (threads, repeats, rounds).
    """
    config = config or TrainConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    load_at_start = os.getloadavg()[0]  # other processes on the machine slow training down
    try:
        torch.manual_seed(seed)  # the initial weights
        model = build()
        checkpoint = out_dir / "train_state.pt"
        log = fit(model, config, seed, checkpoint)
        weights = out_dir / "model.safetensors"
        dtype = save_weights(model, weights)
        checkpoint.unlink(missing_ok=True)
        reference = load_into(build(), weights).eval()  # the float model as it ships
        inputs, targets = load_split("eval")
        if eval_rows is not None:
            inputs, targets = inputs[:eval_rows], targets[:eval_rows]
        t0 = time.perf_counter()
        float_ppl = perplexity(reference, inputs, targets)
        eval_seconds = time.perf_counter() - t0
        _log(f"float perplexity {float_ppl:.4f} ({eval_seconds:.1f} s)")
        metrics = {"float": float_ppl, **ptq_perplexities(reference, inputs, targets)}
    finally:
        torch.set_num_threads(threads_before)
    card: dict[str, Any] = {
        **metrics,
        "metric": "perplexity",
        "eval_tokens": int(targets.numel()),
        "eval_seconds": eval_seconds,
        "train_seconds_2_cores": log.seconds,
        "seed": seed,
        "params": sum(p.numel() for p in reference.parameters()),
        "weights_dtype": dtype,
        "architecture": asdict(reference.config),
        "training": {
            **asdict(config),
            "tokens": config.steps * config.batch_size * CONTEXT,
            "load_average_at_start": load_at_start,
            "resumed_at_steps": log.resumed_at,
        },
        "loss_curve": log.losses,
        "torch": torch.__version__,
        "latency": None,
    }
    write_card(out_dir, card)
    if latency:
        remeasure_latency(out_dir, model=reference, **(latency_options or {}))
    return metrics


def write_card(out_dir: Path, card: dict[str, Any]) -> None:
    (out_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out_dir / "CARD.md").write_text(card_markdown(card))


def remeasure_latency(
    out_dir: Path = ASSETS / NAME, model: nn.Module | None = None, **options: Any
) -> dict[str, Any]:
    """Measure the latency table (`measure_workloads` with ``options``) of the weights in
    ``out_dir`` on this machine, and rewrite the card with it; ``train`` ends with this."""
    out_dir = Path(out_dir)
    if model is None:
        model = load_into(build(), out_dir / "model.safetensors").eval()
    card = json.loads((out_dir / "card.json").read_text())
    card["latency"] = measure_workloads(model, **options)
    write_card(out_dir, card)
    return card["latency"]


def card_markdown(card: dict[str, Any]) -> str:
    """``CARD.md``: what the model is, its data and licence, and the numbers of ``card``."""
    arch = card["architecture"]
    training = card["training"]
    corpus_path = ASSETS / NAME / "corpus.json"
    corpus = json.loads(corpus_path.read_text()) if corpus_path.exists() else {}
    lines = [
        "# tiny-lm",
        "",
        f"A byte-level decoder-only transformer (GPT-2 / nanoGPT style): {arch['n_layer']} "
        f"layers, {arch['n_embd']} wide, {arch['n_head']} heads, MLP {arch['mlp_ratio']}x, "
        f"rotary positions, {arch['block_size']} bytes of context, vocabulary of the 256 byte "
        f"values; {card['params']:,} parameters. Weights ship as {card['weights_dtype']} "
        "(`model.safetensors`); the float reference is those values in fp32.",
        "",
        "## Data",
        "",
        f"`corpus.txt.gz`: the docstrings and comments of the CPython {corpus.get('python', '?')} "
        f"standard library ({corpus.get('files', '?')} `.py` files; tests, codec tables and "
        f"site-packages excluded), {corpus.get('bytes', 0):,} bytes of UTF-8 text, sha256 "
        f"`{corpus.get('sha256', '?')}`, built by `scripts/build_corpus.py`. Licence: PSF License "
        "Agreement version 2 (permissive; `LICENSE-PSF.txt`). Splits (`explorer/models/"
        "corpus.py`): 32 equal stretches, each ending in 2 calibration rows and 4 eval rows of "
        "257 bytes; the rest is training text.",
        "",
        "## Training",
        "",
        f"AdamW (betas {tuple(training['betas'])}, weight decay {training['weight_decay']}), "
        f"peak learning rate {training['lr']} with {training['warmup']} warm-up steps and cosine "
        f"decay to {training['min_lr']}, {training['steps']} steps of {training['batch_size']} "
        f"random 256-byte windows ({training['tokens']:,} tokens), seed {card['seed']}, "
        f"{training['threads']} thread(s) on a 2-core machine: "
        f"{card['train_seconds_2_cores'] / 60:.1f} minutes (torch {card['torch']}; load average "
        f"{training['load_average_at_start']:.2f} when training started: other processes share "
        "this machine).",
        "",
        "## Perplexity (eval split, per byte)",
        "",
        f"{card['eval_tokens']:,} next-byte predictions, evaluated in "
        f"{card['eval_seconds']:.1f} s. PTQ is round-to-nearest, symmetric, min-max, "
        "weight-only, every linear layer (lm_head included).",
        "",
        "| weights | perplexity | vs float |",
        "| --- | --- | --- |",
    ]
    for key, label in (
        ("float", "float (bf16 values in fp32)"),
        ("w8_channel", "int8 per-channel"),
        ("w4_g32", "int4 group 32"),
        ("w4_g128", "int4 group 128"),
        ("w4_channel", "int4 per-channel"),
    ):
        lines.append(
            f"| {label} | {card[key]:.4f} | {100 * (card[key] / card['float'] - 1):+.2f} % |"
        )
    if card.get("latency"):
        lines += ["", *latency_markdown(card["latency"])]
    return "\n".join(lines) + "\n"


def latency_markdown(latency: dict[str, Any]) -> list[str]:
    lines = [
        "## Latency",
        "",
        "`decode`: one decode step at batch 1 with 128 cached tokens; `prefill`: 128 tokens at "
        "batch 1. Each layer's kernel is chosen by timing on the workload's row count. "
        f"Measured with `measure_callable` (warm-up, median; {latency['method']}; other "
        "processes share this machine, load average "
        f"{latency['load_average_at_start']:.2f} at the start). Speedups against torch fp32 "
        "and bf16. Weight MB: the bytes of the linear layers' weights as stored (codes, scales), "
        "which a decode step reads once.",
    ]
    for n_threads, result in latency["threads"].items():
        plans = result["plans"]
        lines += [
            "",
            f"### {n_threads} thread{'s' if n_threads != '1' else ''}",
            "",
            "| plan | weight MB | decode ms | x fp32 | prefill ms | x fp32 "
            "| kernels (decode / prefill) |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, row in plans.items():
            kernels = " / ".join(
                ", ".join(f"{k} x{n}" for k, n in row[w]["kernels"].items()) or "torch"
                for w in ("decode", "prefill")
            )
            lines.append(
                f"| {name} | {row['weight_bytes'] / 1e6:.1f} | {row['decode']['ms']:.3f} "
                f"| {row['decode']['speedup_vs_fp32']:.2f} "
                f"| {row['prefill']['ms']:.2f} | {row['prefill']['speedup_vs_fp32']:.2f} "
                f"| {kernels} |"
            )
        best = result["best"]
        lines.append("")
        for key, item in best.items():
            lines.append(
                f"- best {key.replace('_', ' ')}: {item['plan']}, {item['ms']:.3f} ms, "
                f"{item['speedup_vs_fp32']:.2f}x fp32, {item['speedup_vs_bf16']:.2f}x bf16"
            )
        goal = min(best["int8_decode"]["speedup_vs_fp32"], best["int4_decode"]["speedup_vs_fp32"])
        lines.append(
            f"- decode goal (best int8 and best int4 at least {DECODE_GOAL}x fp32): "
            + ("met" if goal >= DECODE_GOAL else f"not met (the slower of the two is {goal:.2f}x)")
        )
    fastest_fp32 = min(r["plans"]["fp32"]["decode"]["ms"] for r in latency["threads"].values())
    for label in ("int8", "int4"):
        fastest = min(r["best"][f"{label}_decode"]["ms"] for r in latency["threads"].values())
        lines.append(
            f"- best {label} decode at any thread count against the fastest fp32 decode at any "
            f"thread count: {fastest_fp32 / fastest:.2f}x"
        )
    return [*lines, "", *_reading(latency)]


def _reading(latency: dict[str, Any]) -> list[str]:
    """How to read the latency table of the highest thread count, from its own numbers."""
    n_threads = max(latency["threads"], key=int)
    plans = latency["threads"][n_threads]["plans"]

    def mb(name: str) -> str:
        return f"{plans[name]['weight_bytes'] / 1e6:.1f} MB"

    def x(name: str, workload: str = "decode") -> str:
        return f"{plans[name][workload]['speedup_vs_fp32']:.2f}x"

    cpu = latency.get("cpu") or {}
    isa = (
        f"{cpu.get('model', 'this CPU')}: AVX2 {'yes' if cpu.get('avx2') else 'no'}, AVX-512 "
        f"{'yes' if cpu.get('avx512') else 'no'}, VNNI {'yes' if cpu.get('vnni') else 'no'}, "
        f"bf16 arithmetic {'yes' if cpu.get('bf16') else 'no'}"
        if cpu
        else "CPU features not recorded"
    )
    int4 = min(INT4_PLANS, key=lambda n: plans[n]["decode"]["ms"])
    int4_vs_int8 = plans[int4]["decode"]["ms"] / plans["w8_channel"]["decode"]["ms"]
    prefill_best = max(
        (n for n in plans if n not in ("fp32", "bf16")),
        key=lambda n: plans[n]["prefill"]["speedup_vs_fp32"],
    )
    return [
        f"**Reading the numbers** ({n_threads} threads; {isa}). A decode step reads every "
        f"linear weight once: {mb('fp32')} in fp32, close to the 32 MiB L3 that the KV "
        "cache, the activations and other processes share, so much of it comes from memory "
        f"every step; {mb('w8_channel')} in int8 and {mb(int4)} in int4 ({int4}) stay cached; bf16 "
        f"({mb('bf16')}) gets {x('bf16')} from halving the bytes alone. int8 weight-only gets "
        f"{x('w8_channel')}; int4 reads about half of int8's bytes but takes "
        f"{int4_vs_int8:.2f}x int8's time ({x(int4)}), because the int4 kernels unpack nibbles "
        "with extra instructions before each fp32 multiply-add, so at one row they are bound "
        "by instructions as much as by bytes. W8A8 with per-token dynamic scales "
        f"({x('w8a8_token')} at decode) quantizes each activation row with a chain of small "
        "torch ops in every layer, a fixed cost that one row cannot amortize. Prefill "
        "multiplies 128 rows by each weight and is compute-bound: the weight-only kernels "
        "multiply in fp32 after converting the codes, W8A8 multiplies int16 pairs, and the best "
        f"quantized prefill is {prefill_best} at {x(prefill_best, 'prefill')} of torch's fp32 "
        f"GEMM; bf16 prefill ({x('bf16', 'prefill')}) shows the missing bf16 arithmetic.",
    ]


TINY_LM = register(
    BuiltinModel(
        name=NAME,
        task="lm",
        description=(
            "Byte-level GPT (4 layers, 384 wide, 7.3 M parameters) trained on the docstrings "
            "and comments of CPython's standard library; metric: per-byte perplexity"
        ),
        build=build,
        load_split=load_split,
        train=train,
        workloads=workloads,
        metric="perplexity",
        extra={"context": CONTEXT, "decode_context": DECODE_CONTEXT},
        # Fine-tuning wants a far gentler peak than training's 2e-3. W4 g128, 128 held-out
        # rows, RTN 5.4699: QAT at 1e-4 gives 5.4064 / 5.3580 / 5.3027 / 5.2303 after 20 / 50
        # / 100 / 200 steps; at 3e-4, 5.5052 (worse than RTN) / 5.4162 / 5.2939 after 20 / 50
        # / 100. A step of 8 rows x 256 bytes takes about 0.85 s on 2 cores.
        qat_lr=1e-4,
        qat_batch=8,
    )
)
