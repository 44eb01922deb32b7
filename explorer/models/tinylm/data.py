"""tiny-lm's data and latency workloads: the corpus splits as byte tensors, random training
windows, per-byte perplexity, and the ``decode`` / ``prefill`` workloads."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from explorer.errors import ModelLoadError
from explorer.models.corpus import Splits, read_gzip, split_corpus
from explorer.models.registry import ASSETS, SPLITS, Workload
from explorer.models.tinylm.model import CONTEXT, DECODE_CONTEXT, EVAL_BATCH, NAME

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
