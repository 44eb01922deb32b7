"""Causal language models (Llama, Qwen2, Mistral, GPT-2, ... and the built-in ``tiny-lm``):
perplexity over held-out text windows, KL divergence to float and same top token per token,
prefill and decode latency.

Text is tokenized with the directory's own tokenizer and cut into windows of up to 512 tokens
(never more than the model's positions) that overlap by half a window, as the Hugging Face
perplexity guide ("Perplexity of fixed-length models") does it: the first window scores every
token it predicts; each later one re-reads the overlap as context and scores only the tokens
beyond it. So every token after the first is scored exactly once, each with at least half a
window of context (except in the first window). A window is stored as inputs ``ids[b:e-1]`` and
next-token targets ``ids[b+1:e]`` with unscored targets set to -100 (and the last window padded
on the right, which a causal model never attends to).

Fidelity is per token, as llama.cpp's ``perplexity --kl-divergence`` reports it: mean and 99th
percentile of KL(float ‖ quantized), and how often the top token is the float model's
(``same_top``); see `explorer.measure.evaluation.token_fidelity`.

Latency workloads, decode first (the primary one: what a user waits on per generated token):
``decode`` is one step at batch 1 after 128 cached tokens, using the model's own cache
(``DynamicCache``): the cache is built once from a 128-token prefill, and each call runs one
token and crops the cache back to 128, so every call sees the same cache length. ``prefill`` runs
128 tokens at batch 1 into a fresh cache.

Imports: `explorer.tasks.task`, `.text`, `explorer.measure.evaluation`, `explorer.models.userdata`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from explorer.measure.evaluation import (
    SampleStats,
    fidelity_per_sample,
    lm_stats,
    token_fidelity,
)
from explorer.models.hf_workloads import decode_workload, prefill_workload
from explorer.tasks.task import (
    Task,
    TaskData,
    TaskError,
    Workload,
    is_transformers_model,
    named_output,
)
from explorer.tasks.text import documents, is_text, load_tokenizer, tokenizer_summary

IGNORE = -100
WINDOW = 512
PROMPT_TOKENS = 128
EVAL_TOKENS = 16384
"""Most tokens scored: the evaluation budget (about 3 minutes of a 0.5 B model on 2 cores)."""
CALIBRATION_SEQUENCES = 32
CALIBRATION_LEN = 128
RANDOM_SEQUENCES = 64
STATS_CHUNK_ELEMENTS = 1 << 24
"""Most logits of one sequence that `CausalLMTask.stats` scores at once (128 MB in float64)."""
BYTE_VOCAB = 256


def max_positions(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 1:
            return value
    return None


def vocab_size(model: nn.Module) -> int | None:
    value = getattr(getattr(model, "config", None), "vocab_size", None)
    return value if isinstance(value, int) and value > 1 else None


def strided_windows(
    ids: torch.Tensor, window: int, stride: int, pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of ``ids`` (N,) of up to ``window`` tokens every ``stride`` tokens: inputs
    (n, window - 1) and next-token targets (n, window - 1), -100 where a target was scored by an
    earlier window or is padding. Σ scored = N - 1: every token but the first, once."""
    n_tokens = int(ids.numel())
    if n_tokens < 2:
        raise TaskError(f"{n_tokens} token(s) leave nothing to predict; give more text")
    if not 0 < stride <= window - 1:
        raise TaskError(f"stride {stride} must lie in [1, {window - 1}] for windows of {window}")
    inputs, targets = [], []
    scored_until = 1  # targets before this absolute position are already scored
    begin = 0
    while True:
        end = min(begin + window, n_tokens)
        x = torch.full((window - 1,), pad_id, dtype=torch.long)
        y = torch.full((window - 1,), IGNORE, dtype=torch.long)
        x[: end - 1 - begin] = ids[begin : end - 1]
        y[: end - 1 - begin] = ids[begin + 1 : end]
        first_new = max(scored_until, begin + 1) - (begin + 1)  # first scored index in y
        y[:first_new] = IGNORE
        inputs.append(x)
        targets.append(y)
        scored_until = end
        if end == n_tokens:
            break
        begin += stride
    return torch.stack(inputs), torch.stack(targets)


class CausalLMTask(Task):
    """Next-token prediction. ``per_token`` (Hugging Face models): fidelity over scored tokens
    with KL p99 and same top token; without it (a model given token ids as a tensor file, with no
    task object: `explorer.tasks.detect.legacy_task`), fidelity over every position as
    `fidelity_per_sample` computes it."""

    name = "lm"
    output = "logits"
    eval_batch = 16

    def __init__(self, *, per_token: bool = True, window: int = WINDOW, stride: int | None = None):
        self.per_token = per_token
        self.window = window
        self.stride = stride

    def describe(self) -> str:
        if not self.per_token:
            return (
                "perplexity of the next token, and fidelity of the logits to float (SQNR, "
                "cosine, top-1 agreement, KL) at every position"
            )
        return (
            "perplexity of the next token over held-out text windows, and per token the KL "
            "divergence of the quantized model's next-token distribution to the float model's "
            "(mean and 99th percentile) and how often both pick the same top token"
        )

    # --- data ------------------------------------------------------------------------------
    def load_data(self, model: nn.Module, model_dir: Path | None, data: Path | None) -> TaskData:
        window = min(self.window, max_positions(model) or self.window)
        stride = self.stride or max(1, window // 2)
        if data is None:
            return self._random_data(model, window)
        if not is_text(data):
            return self._token_data(model, data)
        tokenizer = load_tokenizer(model_dir)
        text = "\n\n".join(documents(data))
        if tokenizer is None:
            vocab = vocab_size(model)
            if vocab != BYTE_VOCAB:
                raise TaskError(
                    f"{data.name} is text, but {model_dir or 'the model'} has no tokenizer and "
                    f"its vocabulary ({vocab} tokens) is not bytes; add the tokenizer files "
                    "(tokenizer.json ...) or give token ids in .safetensors/.npz"
                )
            ids = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
            used = "bytes (the vocabulary is 256 byte values)"
            pad_id = 0
        else:
            ids = torch.tensor(tokenizer(text, verbose=False)["input_ids"], dtype=torch.long)
            used = tokenizer_summary(tokenizer)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else None
            pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        calibration, held_out = self._split(ids, data)
        x, y = strided_windows(held_out, window, stride, pad_id)
        scored = int((y != IGNORE).sum())
        left = len(ids) - calibration[0].numel() - len(calibration[0]) - len(held_out)
        budget = f" (the budget of {EVAL_TOKENS:,}; {left:,} more tokens unread)" if left else ""
        return TaskData(
            eval_split=(x, y),
            calibration_split=calibration,
            metric="perplexity",
            description=(
                f"{scored:,} tokens of {data.name} scored{budget} in {len(x)} windows of up "
                f"to {window} tokens (stride {stride}), held out from "
                f"{len(calibration[0])} calibration sequences of {calibration[0].shape[1]}"
            ),
            tokens_evaluated=scored,
            tokenizer=used,
            workload_inputs={"prompt": _prompt(held_out, model)},
        )

    def _split(
        self, ids: torch.Tensor, data: Path
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Calibration sequences from the start of the text (at most a quarter of it); the
        evaluation tokens (at most `EVAL_TOKENS` + 1) from the rest."""
        length = min(CALIBRATION_LEN, max(2, len(ids) // 8))
        count = min(CALIBRATION_SEQUENCES, len(ids) // 4 // (length + 1))
        if count < 1 or len(ids) - count * (length + 1) < 2 * length:
            raise TaskError(
                f"{data.name} has {len(ids):,} tokens: too few for calibration and evaluation; "
                f"give at least {8 * (CALIBRATION_LEN + 1):,}"
            )
        cut = count * (length + 1)
        seqs = ids[:cut].view(count, length + 1)
        held_out = ids[cut : cut + EVAL_TOKENS + 1]
        return (seqs[:, :-1].contiguous(), seqs[:, 1:].contiguous()), held_out

    def _token_data(self, model: nn.Module, data: Path) -> TaskData:
        from explorer.models.userdata import check_for_model, load_dataset, require_samples

        dataset = load_dataset(data)
        require_samples(dataset, 2 * 8, "evaluation and calibration")
        check_for_model(dataset, model, "lm")  # token ids within the vocabulary
        if dataset.inputs.dim() != 2 or dataset.inputs.is_floating_point():
            raise TaskError(
                f"{data.name}: a language model takes token ids (n, T) of an integer type, "
                f"got {tuple(dataset.inputs.shape)} {dataset.inputs.dtype}"
            )
        calibration, evaluation = dataset.split(min(128, len(dataset) // 4))
        y = evaluation.targets
        return TaskData(
            eval_split=(evaluation.inputs, y),
            calibration_split=(calibration.inputs, calibration.targets),
            metric="perplexity" if y is not None else None,
            description=f"{len(evaluation)} sequences of token ids from {data.name}",
            tokens_evaluated=int((y != IGNORE).sum()) if y is not None else None,
            workload_inputs={"prompt": evaluation.inputs.reshape(-1)[:PROMPT_TOKENS][None]},
        )

    def _random_data(self, model: nn.Module, window: int) -> TaskData:
        vocab = vocab_size(model)
        if vocab is None:
            raise TaskError("the model's config has no usable vocab_size")
        gen = torch.Generator().manual_seed(0)
        length = min(64, window)
        ids = torch.randint(0, vocab, (RANDOM_SEQUENCES + 32, length), generator=gen)
        return TaskData(
            eval_split=(ids[:RANDOM_SEQUENCES], None),
            calibration_split=(ids[RANDOM_SEQUENCES:], None),
            metric=None,
            description=(
                f"no data: fidelity to float on {RANDOM_SEQUENCES} sequences of {length} seeded "
                "random token ids (no perplexity; pass --data for text)"
            ),
            workload_inputs={"prompt": _prompt(ids.reshape(-1), model)},
        )

    # --- evaluation ------------------------------------------------------------------------
    def outputs(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        if is_transformers_model(model):
            return named_output(model(input_ids=inputs, use_cache=False), self.output)
        return named_output(model(inputs), self.output)

    def stats(self, outputs: torch.Tensor, targets: torch.Tensor | None) -> SampleStats:
        if targets is None:
            return SampleStats(n_samples=outputs.shape[0])
        n, steps, vocab = outputs.shape
        if steps * vocab <= STATS_CHUNK_ELEMENTS:
            return lm_stats(outputs, targets, ignore_index=IGNORE)
        # A window of a wide vocabulary (511 x 151,936) is 620 MB once `lm_stats` converts it
        # to float64, and as much again for its log-softmax: score it a span of positions at a
        # time (spans with nothing scored skipped) and add the spans' sums.
        span = max(1, STATS_CHUNK_ELEMENTS // vocab)
        nll = torch.zeros(n, dtype=torch.float64)
        for start in range(0, steps, span):
            y = targets[:, start : start + span]
            if bool((y != IGNORE).any()):
                part = lm_stats(outputs[:, start : start + span], y, ignore_index=IGNORE)
                assert part.nll is not None
                nll += part.nll
        tokens = (targets != IGNORE).sum(dim=1).to(torch.float64)
        if not bool(tokens.sum()):
            return lm_stats(outputs, targets, ignore_index=IGNORE)  # its error: nothing scored
        return SampleStats(n_samples=n, nll=nll, tokens=tokens)

    def fidelity(
        self, ref: torch.Tensor, quant: torch.Tensor, targets: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        if not self.per_token:
            return fidelity_per_sample(ref, quant)
        if targets is None:  # unlabelled ids: every position counts
            targets = torch.zeros(ref.shape[:2], dtype=torch.long)
        return token_fidelity(ref, quant, targets, ignore_index=IGNORE)

    # --- latency ---------------------------------------------------------------------------
    def workloads(self, data: TaskData) -> dict[str, Workload]:
        prompt = data.workload_inputs["prompt"]
        return {"decode": decode_workload(prompt), "prefill": prefill_workload(prompt)}


def _prompt(ids: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """The workloads' prompt (1, 128): the first tokens of ``ids``, repeated if too few, and
    one position short of the model's limit so that the decode step still fits."""
    length = min(PROMPT_TOKENS, (max_positions(model) or PROMPT_TOKENS + 1) - 1)
    reps = math.ceil(length / max(1, ids.numel()))
    return ids.reshape(-1).repeat(reps)[:length].long().unsqueeze(0)
