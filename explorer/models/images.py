"""What the built-in image classifiers share: reading their data files, a seeded training loop,
top-1 accuracy, the post-training-quantization numbers of a model card, and latency workloads.

A built-in classifier is small enough to train in minutes on two CPU cores, so its card can be
rebuilt by anyone: `fit` draws every random number (initialisation, shuffling, augmentation,
dropout) from torch's global generator seeded once by the caller, and `ptq_metrics` evaluates the
trained float model against weight-only round-to-nearest quantization (activations stay float)
at the settings the anchors name: W8 per-channel, which should cost at most about a point (trend 1
in docs/trends.md), W8 per-tensor, which collapses on networks whose folded batch norms make channel
ranges differ widely (trend 2; Krishnamoorthi 2018, arXiv 1806.08342, table 2), and W4 with
groups of 32 and 128 along the input dimension (trend 4).

Every classifier keeps three disjoint splits: ``train`` fits the weights, ``calibration`` is what
a quantizer may look at (activation ranges, GPTQ/AWQ statistics), and ``eval`` is held out and
is the only split any reported number comes from.

Imports `explorer.models.registry` and `explorer.models.safe_load`, `explorer.nn` and
`explorer.quant`; never `explorer.measure` (it sits above the models).
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from explorer.errors import ModelLoadError
from explorer.models.registry import SPLITS, Workload
from explorer.models.safe_load import load_tensors
from explorer.nn import quantize_model
from explorer.quant.config import Plan, QuantConfig

EVAL_BATCH = 512
WORKLOAD_BATCH = 64

PTQ_CONFIGS: dict[str, QuantConfig] = {
    "w8_channel": QuantConfig(weight_bits=8, granularity="channel"),
    "w8_tensor": QuantConfig(weight_bits=8, granularity="tensor"),
    "w4_g32": QuantConfig(weight_bits=4, granularity="group", group_size=32),
    "w4_g128": QuantConfig(weight_bits=4, granularity="group", group_size=128),
}
"""The weight-only settings every image card reports (symmetric, min-max, round-to-nearest)."""

Augment = Callable[[torch.Tensor], torch.Tensor]


@lru_cache(maxsize=8)
def _read(path: str, mtime_ns: int) -> dict[str, torch.Tensor]:
    return load_tensors(path)


def read_data_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a shipped data file, cached per file version (callers must not mutate)."""
    if not path.exists():
        raise ModelLoadError(f"data file {path} is missing; it ships with the repository")
    return _read(str(path), path.stat().st_mtime_ns)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ModelLoadError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")


def save_weights(model: nn.Module, path: Path) -> None:
    """The state dict (parameters and batch-norm buffers) as safetensors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    safetensors.torch.save_file(state, str(path))


def batches(
    x: torch.Tensor, y: torch.Tensor, size: int, shuffle: bool
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    order = torch.randperm(len(x)) if shuffle else torch.arange(len(x))
    return [(x[i], y[i]) for i in order.split(size)]


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model``'s logits on ``x`` (n, ...) in batches of `EVAL_BATCH`; the model must be in eval
    mode (batch norm then uses its running statistics, so a sample's logits never depend on its
    batch)."""
    if model.training:
        raise ValueError("evaluate a model in eval mode; call .eval() first")
    return torch.cat([model(chunk) for chunk in x.split(EVAL_BATCH)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` as a fraction."""
    return float((logits_of(model, x).argmax(dim=1) == y).double().mean())


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
    augment: Augment | None = None,
    label_smoothing: float = 0.0,
    clip_grad_norm: float | None = None,
    log: Callable[[str], None] | None = None,
) -> nn.Module:
    """Minimise cross-entropy with ``optimizer`` for ``epochs`` passes over shuffled batches.

    ``schedule`` steps once per batch; ``clip_grad_norm`` caps the global gradient norm. Random
    numbers come from torch's global generator, so the caller seeds it once
    (``torch.manual_seed``) for a reproducible run.
    """
    model.train()
    for epoch in range(epochs):
        total, seen = 0.0, 0
        for xb, yb in batches(x, y, batch_size, shuffle=True):
            if augment is not None:
                xb = augment(xb)
            loss = F.cross_entropy(model(xb), yb, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            optimizer.step()
            if schedule is not None:
                schedule.step()
            total += loss.item() * len(xb)
            seen += len(xb)
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: train loss {total / seen:.4f}")
    return model.eval()


def ptq_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy on ``(x, y)`` of ``model`` quantized with each of `PTQ_CONFIGS`, weights only.

    Layers whose input width a group size does not divide fall back to per-channel at the same
    bit width (the plan's default policy); `ptq_fallbacks` names them for the card.
    """
    return {
        key: accuracy(quantize_model(model, Plan.uniform(config)), x, y)
        for key, config in PTQ_CONFIGS.items()
    }


def ptq_fallbacks(model: nn.Module) -> dict[str, list[str]]:
    """``{setting: [layer, ...]}``: the layers whose input width a `PTQ_CONFIGS` group size does
    not divide, quantized per-channel at the same bit width instead."""
    out = {}
    for key, config in PTQ_CONFIGS.items():
        report = quantize_model(model, Plan.uniform(config)).quant_report
        if report.fallbacks:
            out[key] = sorted(report.fallbacks)
    return out


def fallback_note(fallbacks: dict[str, list[str]]) -> str:
    """One Markdown line per setting that needed per-channel fallbacks."""
    if not fallbacks:
        return "none"
    lines = [
        f"{key}: " + ", ".join(f"`{layer}`" for layer in layers)
        for key, layers in fallbacks.items()
    ]
    return "; ".join(lines)


def image_workloads(example: Callable[[], torch.Tensor]) -> dict[str, Workload]:
    """``single`` (one image) and ``batch64`` (64 images) run as one forward pass each.

    ``example()`` returns held-out images (n >= 64, float, the model's input layout); the
    workload inputs are taken once, when a workload is bound to a model, so the timed call is
    the forward pass alone.
    """

    def bind(n: int) -> Workload:
        def workload(model: nn.Module) -> Callable[[], torch.Tensor]:
            x = example()[:n].contiguous()

            def run() -> torch.Tensor:
                return model(x)

            return run

        return workload

    return {"single": bind(1), "batch64": bind(WORKLOAD_BATCH)}


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Stopwatch:
    """Wall time of a training run and the thread count it ran with (for the card)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.threads = torch.get_num_threads()

    def record(self) -> dict[str, Any]:
        seconds = round(time.perf_counter() - self.start, 1)
        return {
            "train_seconds": seconds,
            "train_threads": self.threads,
            # The card's headline number is the documented two-core time; a run with another
            # thread count records its own time but does not claim this one.
            "train_seconds_2_cores": seconds if self.threads == 2 else None,
            "train_machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "torch": torch.__version__,
        }


def write_card(out_dir: Path, card: dict[str, Any], markdown: str) -> None:
    """``card.json`` (sorted keys) and ``CARD.md`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    (out_dir / "CARD.md").write_text(markdown)


def percent(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"
