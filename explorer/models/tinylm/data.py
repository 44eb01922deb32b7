"""tiny-lm's data: the corpus splits as text, the byte-level BPE tokenizer, token rows, random
training windows, the card's metrics (per-token perplexity, bits per byte) and the ``decode`` /
``prefill`` latency workloads.

Tokenizer. Byte-level BPE (GPT-2's scheme, the `tokenizers` library) with a vocabulary of
`VOCAB` = 4096, trained on the training split only (so held-out text cannot leave merges
behind), plus ``<s>`` / ``</s>`` as bos / eos. Every string tokenizes (the 256 byte symbols are in
the alphabet), and each token stands for a fixed byte string, so the bytes a prediction covers are
exact: bits per byte = total NLL in bits / UTF-8 bytes of the predicted tokens, comparable with
the byte-level GPT that was tiny-lm until session 7 (5.45 per-byte perplexity = 2.45 bits per
byte).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from explorer.errors import ModelLoadError
from explorer.models.corpus import Splits, read_gzip, split_corpus
from explorer.models.hf_workloads import Workload, decode_workload, prefill_workload
from explorer.models.registry import ASSETS, SPLITS
from explorer.models.tinylm.model import (
    BOS,
    CONTEXT,
    DECODE_CONTEXT,
    EOS,
    EVAL_BATCH,
    NAME,
    VOCAB,
)

# --- text ---------------------------------------------------------------------------------------


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


def split_text(split: str) -> str:
    """The text of ``split`` (its bytes decoded; a character cut at a stretch boundary is
    dropped)."""
    return bytes(split_bytes(split).numpy()).decode("utf-8", errors="ignore")


# --- tokenizer ----------------------------------------------------------------------------------


def train_tokenizer(text: str, vocab_size: int = VOCAB) -> Any:
    """A byte-level BPE `PreTrainedTokenizerFast` trained on ``text`` (paragraph by paragraph)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.split("\n\n"), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, model_max_length=CONTEXT
    )


@lru_cache(maxsize=2)
def load_tokenizer(directory: str | None = None) -> Any:
    from transformers import PreTrainedTokenizerFast

    path = Path(directory) if directory else ASSETS / NAME
    if not (path / "tokenizer.json").exists():
        raise ModelLoadError(
            f"the tiny-lm tokenizer is missing at {path}; run `explorer train {NAME}`"
        )
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def encode(tokenizer: Any, text: str) -> torch.Tensor:
    """Token ids (int64, 1-D) of ``text``, without bos/eos. The fast tokenizer's backend is
    called directly: the same ids as ``tokenizer(text)``, without its warning that a whole split
    is longer than the model's context (it is cut into rows afterwards)."""
    ids = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids
    return torch.tensor(ids, dtype=torch.long)


def token_bytes(tokenizer: Any) -> torch.Tensor:
    """Bytes each token id stands for (0 for special tokens): a byte-level token's string has one
    character per byte."""
    out = torch.zeros(len(tokenizer), dtype=torch.long)
    special = set(tokenizer.all_special_ids)
    for token, i in tokenizer.get_vocab().items():
        out[i] = 0 if i in special else len(token)
    return out


# --- rows ---------------------------------------------------------------------------------------


def rows(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping rows of ``CONTEXT + 1`` tokens: ``(inputs, targets)`` (n, CONTEXT)."""
    n = ids.numel() // (CONTEXT + 1)
    chunks = ids[: n * (CONTEXT + 1)].view(n, CONTEXT + 1)
    return chunks[:, :-1].contiguous(), chunks[:, 1:].contiguous()


@lru_cache(maxsize=8)
def _split_rows(split: str, directory: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    return rows(encode(load_tokenizer(directory), split_text(split)))


def load_split(split: str, directory: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` int64 (n, 256) of ``split`` tokenized with the shipped tokenizer
    (copies: callers may modify them)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
    x, y = _split_rows(split, directory)
    return x.clone(), y.clone()


def split_ids(split: str) -> torch.Tensor:
    """Every token id of ``split`` (1-D), for random windows."""
    return encode(load_tokenizer(), split_text(split))


def random_batch(
    ids: torch.Tensor, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``ids`` (1-D tokens): inputs and targets (B, T)."""
    starts = torch.randint(ids.numel() - CONTEXT - 1, (batch_size,), generator=generator)
    windows = ids[starts.unsqueeze(1) + torch.arange(CONTEXT + 1)].long()  # (B, T + 1)
    return windows[:, :-1], windows[:, 1:]


# --- metrics ------------------------------------------------------------------------------------


def nll_bits(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int = EVAL_BATCH
) -> float:
    """Total next-token NLL over ``targets`` in bits, summed in float64."""
    nll = torch.zeros((), dtype=torch.float64)
    with torch.inference_mode():
        for start in range(0, inputs.shape[0], batch_size):
            logits = model(input_ids=inputs[start : start + batch_size]).logits
            nll += F.cross_entropy(
                logits.double().flatten(0, 1),
                targets[start : start + batch_size].flatten(),
                reduction="sum",
            )
    return float(nll) / math.log(2)


def evaluate(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, tokenizer: Any
) -> dict[str, float]:
    """Per-token perplexity and bits per byte over every target."""
    bits = nll_bits(model, inputs, targets)
    n_bytes = int(token_bytes(tokenizer)[targets].sum())
    return {
        "perplexity": 2 ** (bits / targets.numel()),
        "bits_per_byte": bits / n_bytes,
        "tokens": int(targets.numel()),
        "bytes": n_bytes,
    }


def perplexity(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """exp(mean next-token NLL) over every target (the formula of `SampleStats.perplexity`)."""
    return 2 ** (nll_bits(model, inputs, targets) / targets.numel())


# --- latency workloads --------------------------------------------------------------------------


def prompt() -> torch.Tensor:
    """The first `DECODE_CONTEXT` tokens of the eval split, (1, 128): the workloads' prompt."""
    return load_split("eval")[0].reshape(-1)[:DECODE_CONTEXT].unsqueeze(0)


def workloads() -> dict[str, Workload]:
    """``decode`` (one token at batch 1 after `DECODE_CONTEXT` cached tokens, the model's own
    KV cache) and ``prefill`` (`DECODE_CONTEXT` tokens)."""
    p = prompt()
    return {"decode": decode_workload(p), "prefill": prefill_workload(p)}


WORKLOAD_INPUTS: dict[str, Callable[[], torch.Tensor]] = {
    "decode": lambda: torch.zeros(1, 1, dtype=torch.long),
    "prefill": prompt,
}
"""Example inputs for kernel selection: each layer sees 1 row when decoding, 128 in prefill."""
