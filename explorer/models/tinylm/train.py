"""Training tiny-lm and measuring its card: the seeded training loop, round-to-nearest PTQ
perplexities and the decode / prefill latency table on the real kernels."""

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

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from explorer.kernels import native
from explorer.machine import cpu_features, last_level_cache
from explorer.models.registry import ASSETS
from explorer.models.safe_load import load_into
from explorer.models.tinylm.card import card_markdown
from explorer.models.tinylm.data import (
    WORKLOAD_INPUTS,
    load_split,
    perplexity,
    random_batch,
    split_bytes,
    workloads,
)
from explorer.models.tinylm.model import (
    CONTEXT,
    INT4_PLANS,
    INT8_PLANS,
    LATENCY_CONFIGS,
    MAX_FILE_BYTES,
    NAME,
    PTQ_CONFIGS,
    TinyLM,
    build,
)
from explorer.models.training import adamw, resume, save_checkpoint
from explorer.nn.convert import quant_modules, quantize_model
from explorer.quant.config import Plan

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
    optimizer = adamw(model, config.lr, config.betas, config.weight_decay)
    log = TrainLog()
    first = 0
    key = json.dumps({"config": asdict(config), "seed": seed}, sort_keys=True)
    state = resume(checkpoint, key, model, optimizer, generator)
    if state is not None:
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
            save_checkpoint(
                checkpoint,
                key,
                model,
                optimizer,
                generator,
                step=step + 1,
                seconds=time.perf_counter() - t0,
                losses=log.losses,
                resumed=log.resumed_at,
            )
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
