"""Training tiny-lm and measuring its card: the tokenizer, the seeded training loop, the
round-to-nearest PTQ perplexities and the decode / prefill latency table on the real kernels.

The recipe: fixed seeds, AdamW (decay on matrices only), linear warm-up and cosine decay,
gradient clipping, random windows of the training split's tokens, resumable checkpoints
(`explorer.models.training`). Weights ship as bf16; the float reference is those values in fp32.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from explorer.kernels import native
from explorer.machine import cpu_features, last_level_cache
from explorer.models.registry import ASSETS
from explorer.models.tinylm.card import card_markdown
from explorer.models.tinylm.data import (
    WORKLOAD_INPUTS,
    encode,
    evaluate,
    rows,
    split_text,
    train_tokenizer,
    workloads,
)
from explorer.models.tinylm.model import (
    ARCHITECTURE,
    CONTEXT,
    INT4_PLANS,
    INT8_PLANS,
    LATENCY_CONFIGS,
    NAME,
    PTQ_CONFIGS,
    VOCAB,
    llama_config,
    load,
)
from explorer.models.training import adamw, resume, save_checkpoint
from explorer.nn.convert import quant_modules, quantize_model
from explorer.quant.config import Plan

CARD_PTQ = ("w8_channel", "w4_g32", "w4_g128", "w4_channel")
CHECKPOINT_SECONDS = 300.0


def _log(message: str) -> None:
    print(f"[{NAME}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 600
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
        """Linear warm-up, then cosine decay to ``min_lr`` at the last step."""
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
    """Round-to-nearest weight-only PTQ of every linear layer under each of `CARD_PTQ`."""
    out = {}
    for name in CARD_PTQ:
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
    latency: bool = True,
    latency_options: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Train the tokenizer and the model from scratch; write the Hugging Face directory,
    ``card.json`` and ``CARD.md`` to ``out_dir``; return the card's perplexities.

    ``config``, ``architecture`` (overrides of `ARCHITECTURE`) and ``vocab_size`` let tests run
    a tiny model for a few steps; ``eval_rows`` limits the evaluation rows; ``latency=False``
    skips the latency table (``latency_options`` go to `measure_workloads`)."""
    from transformers import LlamaForCausalLM

    config = config or TrainConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    load_at_start = os.getloadavg()[0]  # other processes on the machine slow training down
    try:
        t0 = time.perf_counter()
        tokenizer = train_tokenizer(split_text("train"), vocab_size)
        tokenizer.save_pretrained(str(out_dir))
        train_ids = encode(tokenizer, split_text("train"))
        _log(
            f"tokenizer: {len(tokenizer)} tokens, {time.perf_counter() - t0:.0f} s; "
            f"train split {train_ids.numel()} tokens"
        )
        torch.manual_seed(seed)  # the initial weights
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
        "latency": None,
    }
    write_card(out_dir, card)
    if latency:
        remeasure_latency(out_dir, model=reference, **(latency_options or {}))
    return {k: v for k, v in card.items() if isinstance(v, float) and k in ("float", *CARD_PTQ)}


def write_card(out_dir: Path, card: dict[str, Any]) -> None:
    (Path(out_dir) / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (Path(out_dir) / "CARD.md").write_text(card_markdown(card))


# --- the card's latency table --------------------------------------------------------------------


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes a forward pass reads for the linear layers' weights (codes, scales and zero
    points as stored; fp32 or bf16 weights for float layers): what a decode step streams. The
    tied head counts once more: a decode step reads it as the head after the embedding row."""
    quantized = set(quant_modules(model))
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or name in quantized:
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
        "llc": last_level_cache().label,
        "kernels": native.build_stamp(),
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
    for workload in ("decode", "prefill"):
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


def remeasure_latency(
    out_dir: Path = ASSETS / NAME, model: nn.Module | None = None, **options: Any
) -> dict[str, Any]:
    """Measure the latency table (`measure_workloads` with ``options``) of the weights in
    ``out_dir`` on this machine, and rewrite the card with it; ``train`` ends with this."""
    out_dir = Path(out_dir)
    model = model if model is not None else load(out_dir)
    card = json.loads((out_dir / "card.json").read_text())
    card["latency"] = measure_workloads(model, **options)
    write_card(out_dir, card)
    return card["latency"]
