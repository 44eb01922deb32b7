"""`tiny-llama`: a small `LlamaForCausalLM` with its own byte-level BPE tokenizer, trained here on
the same text as `tiny-lm` (the prose of CPython's standard library, PSF licence).

It exists next to `tiny-lm` (a hand-written byte-level GPT) so the explorer has a built-in in a
standard architecture: a Hugging Face directory (``config.json``, ``model.safetensors``,
``tokenizer.json``, ``tokenizer_config.json``) that ``LlamaForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` open, with the parts real Llamas have and tiny-lm lacks:
RMSNorm, rotary positions, a SwiGLU MLP (gate, up, down) and grouped-query attention (6 query
heads share 2 key/value heads). It loads through the same safe Hugging Face loader as a user's
directory, and its rows are computed by the causal-LM task (perplexity per token, KL mean and
99th percentile, same top token); its ``decode`` / ``prefill`` workloads are the model's own KV
cache (`explorer.models.hf_workloads`).

Tokenizer. Byte-level BPE (GPT-2's scheme, the `tokenizers` library) with a vocabulary of
`VOCAB` = 4096, trained on the training split only (so held-out text cannot leave merges
behind), plus ``<s>`` / ``</s>`` as bos / eos. Every string tokenizes (the 256 byte symbols are in
the alphabet), and each token stands for a fixed byte string, so the bytes a prediction covers are
exact: bits per byte = total NLL in bits / UTF-8 bytes of the predicted tokens, comparable with
tiny-lm's per-byte perplexity (log2 of it).

Shape: 384 wide, 4 layers, 6 heads of 64, 2 KV heads, SwiGLU 1024 wide, 256 tokens of context.
Embeddings are tied (the head reuses the embedding matrix): at this vocabulary an untied head
would be 1.6 M more parameters (20 % of the model) and 3 MB more asset, for a model trained on
too few tokens to give the two matrices different jobs. Every projection's in and out width is a
multiple of 128, so group sizes 32 / 64 / 128 apply to every linear layer.

Training (`train`) is tiny-lm's recipe: fixed seeds, AdamW (decay on matrices only), linear
warm-up and cosine decay, gradient clipping, random windows of the training split (here of
tokens), resumable checkpoints. Weights ship as bf16; the float reference is those values in
fp32.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from explorer.errors import ModelLoadError
from explorer.models.hf_workloads import Workload, decode_workload, prefill_workload
from explorer.models.registry import ASSETS, SPLITS, BuiltinModel, register
from explorer.models.training import adamw, resume, save_checkpoint

NAME = "tiny-llama"
VOCAB = 4096
CONTEXT = 256
DECODE_CONTEXT = 128
EVAL_BATCH = 16
BOS, EOS = "<s>", "</s>"
ARCHITECTURE: dict[str, Any] = {
    "hidden_size": 384,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "max_position_embeddings": CONTEXT,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "initializer_range": 0.02,
}
PTQ_NAMES = ("w8_channel", "w4_g32", "w4_g128")
"""The card's round-to-nearest rows: tiny-lm's `PTQ_CONFIGS` of these names."""


def _log(message: str) -> None:
    print(f"[{NAME}] {message}", file=sys.stderr, flush=True)


# --- text and tokenizer -----------------------------------------------------------------------


def split_text(split: str) -> str:
    """The text of ``split`` (tiny-lm's byte splits, decoded; a character cut at a stretch
    boundary is dropped)."""
    from explorer.models.tinylm.data import split_bytes

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
    return bytes(split_bytes(split).numpy()).decode("utf-8", errors="ignore")


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
            f"the tiny-llama tokenizer is missing at {path}; run `explorer train {NAME}`"
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


def rows(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping rows of ``CONTEXT + 1`` tokens: ``(inputs, targets)`` (n, CONTEXT)."""
    n = ids.numel() // (CONTEXT + 1)
    chunks = ids[: n * (CONTEXT + 1)].view(n, CONTEXT + 1)
    return chunks[:, :-1].contiguous(), chunks[:, 1:].contiguous()


def load_split(split: str, directory: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` int64 (n, 256) of ``split`` tokenized with the shipped tokenizer."""
    return rows(encode(load_tokenizer(directory), split_text(split)))


# --- model ------------------------------------------------------------------------------------


def llama_config(tokenizer: Any | None = None, **overrides: Any) -> Any:
    from transformers import LlamaConfig

    tokenizer = tokenizer or load_tokenizer()
    return LlamaConfig(
        **{**ARCHITECTURE, **overrides},
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


class LogitsOnly(nn.Module):
    """Wraps a causal LM so that ``model(ids)`` returns logits (B, T, V) (training, perplexity)."""

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


# --- metrics ----------------------------------------------------------------------------------


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


# --- training ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 500
    batch_size: int = 16
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup: int = 20
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    threads: int = 1  # the shipped run: one thread ran steadier than two on a shared machine
    max_seconds: float | None = None  # stop early (the card records the steps actually taken)

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to ``min_lr`` at the last step (tiny-lm's)."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * progress))


@dataclass
class TrainLog:
    seconds: float = 0.0
    steps: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)
    resumed_at: list[int] = field(default_factory=list)


CHECKPOINT_SECONDS = 300.0


def fit(
    model: nn.Module,
    ids: torch.Tensor,
    config: TrainConfig,
    seed: int,
    checkpoint: Path | None = None,
) -> TrainLog:
    """Train ``model`` in place on random ``CONTEXT + 1``-token windows of ``ids``; checkpoint
    the whole state every `CHECKPOINT_SECONDS` and resume from it (same config and seed)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = adamw(model, config.lr, config.betas, config.weight_decay)
    log = TrainLog()
    first = 0
    key = json.dumps({"config": asdict(config), "seed": seed}, sort_keys=True)
    state = resume(checkpoint, key, model, optimizer, generator)
    if state is not None:
        first = state["step"]
        log = TrainLog(
            state["seconds"], first, [tuple(x) for x in state["losses"]], state["resumed"]
        )
        log.resumed_at.append(first)
        _log(f"resuming at step {first} from {checkpoint}")
    model.train()
    t0 = time.perf_counter() - log.seconds
    last_save = time.perf_counter()
    offsets = torch.arange(CONTEXT + 1)
    for step in range(first, config.steps):
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)
        starts = torch.randint(ids.numel() - CONTEXT - 1, (config.batch_size,), generator=generator)
        windows = ids[starts.unsqueeze(1) + offsets]  # (B, T + 1)
        logits = model(input_ids=windows[:, :-1], use_cache=False).logits  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        log.steps = step + 1
        elapsed = time.perf_counter() - t0
        if step % 10 == 0 or step == config.steps - 1:
            log.losses.append((step, loss.item()))
            _log(f"step {step}/{config.steps} loss {loss.item():.4f} ({elapsed:.0f} s)")
        if checkpoint is not None and time.perf_counter() - last_save > CHECKPOINT_SECONDS:
            save_checkpoint(
                checkpoint,
                key,
                model,
                optimizer,
                generator,
                step=step + 1,
                seconds=elapsed,
                losses=log.losses,
                resumed=log.resumed_at,
            )
            last_save = time.perf_counter()
        if config.max_seconds is not None and elapsed > config.max_seconds:
            _log(f"stopping at step {step + 1}: {elapsed:.0f} s > {config.max_seconds:.0f} s")
            break
    log.seconds = time.perf_counter() - t0
    model.eval()
    return log


def ptq_metrics(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, tokenizer: Any
) -> dict[str, dict[str, float]]:
    """Round-to-nearest weight-only PTQ of every linear layer under each of `PTQ_NAMES`."""
    from explorer.models.tinylm.model import PTQ_CONFIGS
    from explorer.nn.convert import quantize_model
    from explorer.quant.config import Plan

    out = {}
    for name in PTQ_NAMES:
        qmodel = quantize_model(model, Plan.uniform(PTQ_CONFIGS[name]))
        out[name] = evaluate(qmodel, inputs, targets, tokenizer)
        _log(f"{name}: {out[name]}")
    return out


def train(
    out_dir: Path,
    seed: int = 0,
    *,
    config: TrainConfig | None = None,
    architecture: dict[str, Any] | None = None,
    vocab_size: int = VOCAB,
    eval_rows: int | None = None,
    ptq: bool = True,
) -> dict[str, float]:
    """Train the tokenizer and the model from scratch; write the Hugging Face directory,
    ``card.json`` and ``CARD.md`` to ``out_dir``; return the card's perplexities.

    ``config``, ``architecture`` (overrides of `ARCHITECTURE`) and ``vocab_size`` let tests run
    a tiny model for a few steps; ``eval_rows`` limits the evaluation rows."""
    config = config or TrainConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    load_at_start = os.getloadavg()[0]
    try:
        t0 = time.perf_counter()
        tokenizer = train_tokenizer(split_text("train"), vocab_size)
        tokenizer.save_pretrained(str(out_dir))
        train_ids = encode(tokenizer, split_text("train"))
        _log(
            f"tokenizer: {len(tokenizer)} tokens, {time.perf_counter() - t0:.0f} s; "
            f"train split {train_ids.numel()} tokens"
        )
        from transformers import LlamaForCausalLM

        torch.manual_seed(seed)
        model = LlamaForCausalLM(llama_config(tokenizer, **(architecture or {})))
        checkpoint = out_dir / "train_state.pt"
        log = fit(model, train_ids, config, seed, checkpoint)
        model.to(torch.bfloat16).save_pretrained(str(out_dir))
        checkpoint.unlink(missing_ok=True)
        reference = load(out_dir)  # the float model as it ships
        inputs, targets = rows(encode(tokenizer, split_text("eval")))
        if eval_rows is not None:
            inputs, targets = inputs[:eval_rows], targets[:eval_rows]
        t1 = time.perf_counter()
        float_metrics = evaluate(reference, inputs, targets, tokenizer)
        eval_seconds = time.perf_counter() - t1
        _log(f"float: {float_metrics} ({eval_seconds:.1f} s)")
        ptq_results = ptq_metrics(reference, inputs, targets, tokenizer) if ptq else {}
    finally:
        torch.set_num_threads(threads_before)
    card: dict[str, Any] = {
        "float": float_metrics["perplexity"],
        **{name: m["perplexity"] for name, m in ptq_results.items()},
        "metric": "perplexity",
        "bits_per_byte": {"float": float_metrics["bits_per_byte"]}
        | {name: m["bits_per_byte"] for name, m in ptq_results.items()},
        "eval_tokens": float_metrics["tokens"],
        "eval_bytes": float_metrics["bytes"],
        "eval_seconds": eval_seconds,
        "train_seconds": log.seconds,
        "seed": seed,
        "params": sum(p.numel() for p in reference.parameters()),
        "weights_dtype": "bfloat16",
        "architecture": {**ARCHITECTURE, **(architecture or {}), "vocab_size": len(tokenizer)},
        "training": {
            **asdict(config),
            "steps_taken": log.steps,
            "tokens": log.steps * config.batch_size * CONTEXT,
            "train_split_tokens": int(train_ids.numel()),
            "load_average_at_start": load_at_start,
            "resumed_at_steps": log.resumed_at,
        },
        "loss_curve": log.losses,
        "torch": torch.__version__,
    }
    write_card(out_dir, card)
    return {k: v for k, v in card.items() if isinstance(v, float) and k in ("float", *PTQ_NAMES)}


def write_card(out_dir: Path, card: dict[str, Any]) -> None:
    (Path(out_dir) / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (Path(out_dir) / "CARD.md").write_text(card_markdown(card))


def card_markdown(card: dict[str, Any]) -> str:
    arch, tr = card["architecture"], card["training"]
    bpb = card["bits_per_byte"]
    lines = [
        f"# {NAME}",
        "",
        "A `LlamaForCausalLM` (RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention) "
        "with its own byte-level BPE tokenizer, trained here on the docstrings and comments of "
        "CPython's standard library (PSF licence, `assets/tiny-lm/LICENSE-PSF.txt`; the same "
        "text and splits as tiny-lm). It ships next to the byte-level `tiny-lm`, which stays "
        "unchanged for now; a later session swaps them. Reproduce: `explorer train tiny-llama`.",
        "",
        f"- {card['params']:,} parameters: {arch['num_hidden_layers']} layers, hidden "
        f"{arch['hidden_size']}, {arch['num_attention_heads']} heads, "
        f"{arch['num_key_value_heads']} KV heads, SwiGLU {arch['intermediate_size']}, context "
        f"{arch['max_position_embeddings']} tokens, vocabulary {arch['vocab_size']}, tied "
        "embeddings (an untied head would add 20 % parameters the short training cannot use).",
        f"- Training: {tr['steps_taken']} steps of {tr['batch_size']} x {CONTEXT} tokens "
        f"({tr['tokens']:,} tokens; the train split holds {tr['train_split_tokens']:,}), AdamW "
        f"lr {tr['lr']} warm-up {tr['warmup']} cosine to {tr['min_lr']} over {tr['steps']} "
        f"steps, clip {tr['grad_clip']}, seed {card['seed']}, {tr['threads']} threads, "
        f"{card['train_seconds']:.0f} s wall, load average {tr['load_average_at_start']:.2f} "
        "at start (2 cores shared with other jobs).",
        f"- Weights: {card['weights_dtype']}; the float reference is those values in fp32.",
        "",
        f"Held-out eval split: {card['eval_tokens']:,} tokens = {card['eval_bytes']:,} UTF-8 "
        "bytes. Bits per byte = total NLL in bits / bytes of the predicted tokens; tiny-lm's "
        "5.45 per-byte perplexity is 2.45 bits per byte.",
        "",
        "| weights (round to nearest, every linear layer) | perplexity per token | bits per byte |",
        "|---|---|---|",
    ]
    for name in ("float", *PTQ_NAMES):
        if name in card:
            lines.append(f"| {name} | {card[name]:.4f} | {bpb[name]:.4f} |")
    return "\n".join(lines) + "\n"


# --- registration ---------------------------------------------------------------------------


def workloads() -> dict[str, Workload]:
    """``decode`` (one token at batch 1 after `DECODE_CONTEXT` cached tokens) and ``prefill``
    (`DECODE_CONTEXT` tokens), on the first tokens of the eval split."""
    prompt = load_split("eval")[0].reshape(-1)[:DECODE_CONTEXT].unsqueeze(0)
    return {"decode": decode_workload(prompt), "prefill": prefill_workload(prompt)}


def _train(out_dir: Path, seed: int) -> dict[str, float]:
    return train(out_dir, seed)


MODEL = register(
    BuiltinModel(
        name=NAME,
        task="lm",
        metric="perplexity",
        description=(
            "Llama-architecture language model (RMSNorm, rotary, SwiGLU, grouped-query "
            "attention) with a 4,096-token BPE tokenizer, trained here on the prose of "
            "CPython's standard library"
        ),
        build=build,
        load_split=load_split,
        train=_train,
        workloads=workloads,
        loader=load,
        qat_lr=1e-4,
        qat_batch=8,
    )
)
