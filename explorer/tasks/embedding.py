"""Sentence embeddings from encoders (BERT, RoBERTa, ... and sentence-transformers directories).

An embedding is the encoder's last hidden state pooled over the sentence's tokens as the
directory says: a sentence-transformers directory names its pooling in ``modules.json`` and
``1_Pooling/config.json`` (mean over the attention mask, the [CLS] token, max, or mean times
sqrt(length)) and whether a ``Normalize`` module follows; a plain encoder is mean-pooled over the
attention mask (padding never counts), as sentence-transformers does by default.

What is measured: for every sentence, the cosine of the quantized model's embedding to the float
model's (the ``cosine`` metric; per sample, so the paired bootstrap applies), and SQNR. With
scored sentence pairs (``sentence1, sentence2, score``: STS-B's layout) the task metric is
Spearman's rank correlation of the pair's cosine similarity with the score. Class labels
(``text, label``) give no metric of their own here: an encoder without a trained head has no
classifier to score, so only the cosine to float is reported, and the data's description says so.

Workloads: ``single`` (one sentence) and ``batch32`` (32 sentences, padded to the longest).

Imports: `explorer.tasks.task`, `.text`, `explorer.measure.evaluation`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from explorer.measure.evaluation import SampleStats, embedding_fidelity
from explorer.tasks.task import Task, TaskData, TaskError, Workload, named_output
from explorer.tasks.text import (
    is_text,
    load_tokenizer,
    number_field,
    read_records,
    read_text,
    text_field,
    tokenizer_summary,
)

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")
MAX_TOKENS = 128
CALIBRATION_SAMPLES = 128
CALIBRATION_LEN = 64
MIN_SAMPLES = 8
BATCH_WORKLOAD = 32


@dataclass(frozen=True)
class Pooling:
    mode: str = "mean"
    normalize: bool = False
    source: str = "default (mean over the attention mask)"

    def __post_init__(self) -> None:
        if self.mode not in POOLING_MODES:
            raise TaskError(f"pooling {self.mode!r} is not one of {', '.join(POOLING_MODES)}")


def read_pooling(model_dir: Path | None) -> Pooling:
    """The pooling a sentence-transformers directory asks for; mean pooling otherwise."""
    if model_dir is None:
        return Pooling()
    modules: list[dict[str, Any]] = []
    modules_file = model_dir / "modules.json"
    if modules_file.is_file():
        try:
            modules = json.loads(modules_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TaskError(f"{modules_file} is not readable JSON: {exc}") from None
        if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
            raise TaskError(f"{modules_file} must hold a list of module objects")
    pooling_dir = (model_dir / "1_Pooling").resolve()
    for module in modules:
        if str(module.get("type", "")).endswith("Pooling"):
            pooling_dir = (model_dir / str(module.get("path", ""))).resolve()
            if model_dir.resolve() not in pooling_dir.parents:
                raise TaskError(f"{modules_file}: pooling path points outside {model_dir}")
    normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    config_file = pooling_dir / "config.json"
    if not config_file.is_file():
        if modules:
            return Pooling(normalize=normalize, source=f"{modules_file.name}, default mean")
        return Pooling()
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TaskError(f"{config_file} is not readable JSON: {exc}") from None
    chosen = [
        mode
        for mode, key in (
            ("cls", "pooling_mode_cls_token"),
            ("mean", "pooling_mode_mean_tokens"),
            ("max", "pooling_mode_max_tokens"),
            ("mean_sqrt_len", "pooling_mode_mean_sqrt_len_tokens"),
        )
        if config.get(key)
    ]
    if len(chosen) != 1:
        raise TaskError(
            f"{config_file} must choose exactly one pooling mode (cls, mean, max, "
            f"mean_sqrt_len); it chooses {chosen or 'none'}"
        )
    return Pooling(chosen[0], normalize, source=str(config_file.relative_to(model_dir.resolve())))


def pool(states: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Sentence embeddings (n, H) from token states (n, T, H) and the attention mask (n, T)."""
    weights = mask.to(states.dtype).unsqueeze(-1)  # (n, T, 1)
    if pooling.mode == "cls":
        out = states[:, 0]
    elif pooling.mode == "max":
        out = states.masked_fill(weights == 0, -math.inf).amax(dim=1)
    else:
        lengths = weights.sum(dim=1).clamp_min(1.0)  # (n, 1)
        summed = (states * weights).sum(dim=1)  # (n, H)
        out = summed / (lengths if pooling.mode == "mean" else lengths.sqrt())
    return F.normalize(out, dim=-1) if pooling.normalize else out


class EmbeddingTask(Task):
    """Sentence embeddings; evaluation inputs are (n, k, 2, T): k sentences a sample (1, or 2
    for a scored pair), their token ids and attention mask. A (n, T) input (calibration, and
    ids given directly) is one unpadded sentence a row."""

    name = "embedding"
    output = "last_hidden_state"
    eval_batch = 32

    def __init__(self, pooling: Pooling | None = None) -> None:
        self.pooling = pooling or Pooling()

    def describe(self) -> str:
        return (
            "cosine of each sentence embedding to the float model's, and with scored sentence "
            "pairs Spearman's correlation of the pairs' cosine similarity with the score"
        )

    # --- data ------------------------------------------------------------------------------
    def load_data(self, model: nn.Module, model_dir: Path | None, data: Path | None) -> TaskData:
        self.pooling = read_pooling(model_dir)
        if data is None:
            return self._random_data(model)
        if not is_text(data):
            raise TaskError(
                f"{data.name}: an embedding model reads .txt (a sentence a line), or .csv/.jsonl "
                "with sentence1, sentence2, score (or text, label)"
            )
        tokenizer = load_tokenizer(model_dir)
        if tokenizer is None:
            raise TaskError(
                f"{data.name} is text, but {model_dir or 'the model'} has no tokenizer "
                "(tokenizer.json, vocab.txt ...)"
            )
        sentences, scores, note = _sentences(data)
        k = len(sentences[0])
        flat = [s for sample in sentences for s in sample]
        limit = min(MAX_TOKENS, _max_positions(model) or MAX_TOKENS)
        tokenizer.padding_side = "right"  # the workloads cut one sentence at its own length
        enc = tokenizer(flat, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]  # (n·k, T)
        x = torch.stack([ids, mask], dim=1).view(len(sentences), k, 2, -1)  # (n, k, 2, T)
        y = None if scores is None else torch.tensor(scores, dtype=torch.float64)
        if len(x) < MIN_SAMPLES:
            raise TaskError(f"{data.name} has {len(x)} samples; give at least {MIN_SAMPLES}")
        n_cal = min(CALIBRATION_SAMPLES, len(x) // 4)
        calibration = calibration_ids(x[:n_cal], tokenizer)
        x_eval, y_eval = x[n_cal:], None if y is None else y[n_cal:]
        return TaskData(
            eval_split=(x_eval, y_eval),
            calibration_split=(calibration, None),
            metric="spearman" if y is not None else None,
            description=(
                f"{len(x_eval)} {'sentence pairs' if k == 2 else 'sentences'} of {data.name} "
                f"(after {n_cal} for calibration), pooling {self.pooling.mode}"
                f"{' then normalised' if self.pooling.normalize else ''} "
                f"({self.pooling.source}); {note}"
            ),
            tokenizer=tokenizer_summary(tokenizer),
            workload_inputs=sentence_workload_inputs(x_eval),
        )

    def _random_data(self, model: nn.Module) -> TaskData:
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        if not isinstance(vocab, int) or vocab < 2:
            raise TaskError("the model's config has no usable vocab_size")
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab, (96, 32), generator=gen)
        x = torch.stack([ids, torch.ones_like(ids)], dim=1).unsqueeze(1)  # (n, 1, 2, T)
        return TaskData(
            eval_split=(x[:64], None),
            calibration_split=(ids[64:], None),
            metric=None,
            description="no data: cosine to float of embeddings of 64 seeded random token "
            "sequences (pass --data with sentences)",
            workload_inputs=sentence_workload_inputs(x[:64]),
        )

    # --- evaluation ------------------------------------------------------------------------
    def embed(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pooled embeddings (n, H) of ``ids`` (n, T) under ``mask`` (n, T)."""
        if getattr(model, "base_model", model) is model:
            states = named_output(model(input_ids=ids, attention_mask=mask), self.output)
        else:  # a class with a head: its encoder's last hidden state, by name
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            hidden = out.get("hidden_states") if hasattr(out, "get") else None
            if not hidden:
                raise TaskError(f"{type(model).__name__} returns no hidden states to pool")
            states = hidden[-1]
        return pool(states, mask, self.pooling)

    def outputs(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dim() == 2:  # (n, T) unpadded ids
            return self.embed(model, inputs, torch.ones_like(inputs))
        n, k, _, steps = inputs.shape
        flat = inputs.reshape(n * k, 2, steps)
        return self.embed(model, flat[:, 0], flat[:, 1]).view(n, k, -1)  # (n, k, H)

    def stats(self, outputs: torch.Tensor, targets: torch.Tensor | None) -> SampleStats:
        n = outputs.shape[0]
        if targets is None:
            return SampleStats(n_samples=n)
        if outputs.dim() != 3 or outputs.shape[1] != 2:
            raise TaskError("scores need sentence pairs (sentence1, sentence2, score)")
        a, b = outputs[:, 0].double(), outputs[:, 1].double()
        similarity = F.cosine_similarity(a, b, dim=-1)  # (n,)
        return SampleStats(n_samples=n, similarity=similarity, score=targets.double())

    def fidelity(
        self, ref: torch.Tensor, quant: torch.Tensor, targets: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        return embedding_fidelity(ref, quant)

    # --- latency ---------------------------------------------------------------------------
    def workloads(self, data: TaskData) -> dict[str, Workload]:
        def bind(key: str) -> Workload:
            ids, mask = data.workload_inputs[f"{key}_ids"], data.workload_inputs[f"{key}_mask"]

            def make(model: nn.Module) -> Callable[[], Any]:
                def run() -> torch.Tensor:
                    with torch.no_grad():
                        return self.embed(model, ids, mask)

                return run

            return make

        return {"single": bind("single"), f"batch{BATCH_WORKLOAD}": bind("batch")}


def _max_positions(model: nn.Module) -> int | None:
    value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 1 else None


def _sentences(data: Path) -> tuple[list[list[str]], list[float] | None, str]:
    """Samples of one or two sentences, their scores (or None), and a note on the metric."""
    if data.suffix.lower() == ".txt":
        lines = [line.strip() for line in read_text(data).splitlines() if line.strip()]
        return [[line] for line in lines], None, "no labels: cosine to float only"
    records = read_records(data)
    fields = set(records[0])
    if {"sentence1", "sentence2", "score"} <= fields:
        first = text_field(data, records, "sentence1")
        second = text_field(data, records, "sentence2")
        scores = number_field(data, records, "score")
        pairs = [[a, b] for a, b in zip(first, second, strict=True)]
        return pairs, scores, "Spearman correlation of cosine similarity with the score"
    if "text" in fields:
        note = (
            "class labels present, but the encoder has no classification head: cosine to float only"
            if "label" in fields
            else "no labels: cosine to float only"
        )
        return [[t] for t in text_field(data, records, "text")], None, note
    raise TaskError(
        f"{data.name} has fields {sorted(fields)}; an embedding model needs sentence1, "
        "sentence2, score (or text, optionally label)"
    )


def calibration_ids(x: torch.Tensor, tokenizer: Any) -> torch.Tensor:
    """Calibration rows without padding: the samples' real tokens, end to end, cut into rows
    of `CALIBRATION_LEN` (``model(ids)`` attends to every token, so padding would skew the
    activation statistics)."""
    ids, mask = x[:, :, 0].reshape(-1, x.shape[-1]), x[:, :, 1].reshape(-1, x.shape[-1])
    tokens = ids[mask.bool()]  # (N,)
    length = min(CALIBRATION_LEN, max(1, tokens.numel() // 4))
    rows = max(1, tokens.numel() // length)
    return tokens[: rows * length].view(rows, length)


def sentence_workload_inputs(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """One sentence at its own length, and 32 (repeated if fewer) padded to the longest."""
    steps = x.shape[-1]
    flat = x.reshape(-1, 2, steps)  # (n·k, 2, T)
    first_len = int(flat[0, 1].sum())
    batch = flat[torch.arange(BATCH_WORKLOAD) % len(flat)]  # (32, 2, T)
    longest = int(batch[:, 1].sum(dim=1).max())
    return {
        "single_ids": flat[:1, 0, :first_len].contiguous(),
        "single_mask": flat[:1, 1, :first_len].contiguous(),
        "batch_ids": batch[:, 0, :longest].contiguous(),
        "batch_mask": batch[:, 1, :longest].contiguous(),
    }
