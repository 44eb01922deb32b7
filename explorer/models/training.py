"""What the built-in language models' training loops share (tiny-lm, and any later built-in):
AdamW with weight decay on matrices only, and resumable checkpoints of the whole training state.

A checkpoint holds the weights, the optimizer, the batch sampler's generator, the step, the
training seconds so far, the loss log and the steps it was resumed at, under a ``key`` (the
config and seed as JSON): it is resumed only by a run of the same key, so a killed run continues
where it stopped and ends with the same weights. It is written to a temporary file and renamed
into place, so a run killed while saving leaves the previous checkpoint intact.

Imports: torch only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


def adamw(
    model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float
) -> torch.optim.AdamW:
    """AdamW decaying the matrices (embeddings, projections) but not gains and biases."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=betas,
    )


def resume(
    path: Path | None,
    key: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> dict[str, Any] | None:
    """Load the checkpoint at ``path`` into ``model``, ``optimizer`` and ``generator`` if it was
    written under ``key``; return its state (``step``, ``seconds``, ``losses``, ``resumed``),
    or None when there is none to resume."""
    if path is None or not path.exists():
        return None
    state = torch.load(path, weights_only=True)
    if state["key"] != key:
        return None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    return state


def save_checkpoint(
    path: Path,
    key: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    *,
    step: int,
    seconds: float,
    losses: list[tuple[int, float]],
    resumed: list[int],
) -> None:
    """Write the whole training state after ``step`` steps (atomically: temp file + rename)."""
    state = {
        "key": key,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "step": step,
        "seconds": seconds,
        "losses": losses,
        "resumed": resumed,
    }
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
