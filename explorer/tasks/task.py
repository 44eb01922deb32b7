"""The `Task` interface: what a model does, and so how it is judged.

A task brings four things, and nothing downstream guesses them from tensor shapes:
- its data (`Task.load_data`), read with the model's own tokenizer where it has one, cut into
  an evaluation split and a calibration split (`TaskData`);
- its metric (`TaskData.metric`: ``perplexity``, ``accuracy``, ``spearman`` or none) and the
  per-sample statistics it is computed from (`Task.stats`, see `explorer.measure.evaluation`);
- the output tensor fidelity compares, taken by *name* from a Hugging Face ``ModelOutput``
  (`Task.output`, `named_output`): ``logits`` for language models, a pooled sentence embedding
  for encoders;
- its latency workloads (`Task.workloads`), each run exactly as a user would run the model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from explorer.errors import TaskError  # noqa: F401  (re-exported: its old home)
from explorer.measure.evaluation import SampleStats

Workload = Callable[[nn.Module], Callable[[], Any]]


@dataclass
class TaskData:
    """A task's data for one model: ``(inputs, targets or None)`` for evaluation and for
    calibration (calibration inputs are what ``model(x)`` takes), the metric those targets
    allow (None: fidelity only), a sentence saying what is evaluated, the tokens scored (language
    models), the tokenizer used, and what the workloads feed the model.

    ``train_split``: labelled rows for QAT, disjoint from the evaluation split, where the data
    has them (a speech folder's ``train/``); None: QAT trains on the calibration split."""

    eval_split: tuple[torch.Tensor, torch.Tensor | None]
    calibration_split: tuple[torch.Tensor, torch.Tensor | None]
    metric: str | None
    description: str
    tokens_evaluated: int | None = None
    tokenizer: str | None = None
    workload_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    train_split: tuple[torch.Tensor, torch.Tensor | None] | None = None


def named_output(output: Any, name: str) -> torch.Tensor:
    """The tensor ``name`` of a model's output: a ``ModelOutput`` (or dict) entry, or the output
    itself when the model returns a bare tensor (our built-in models)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        value = output.get(name)
        if isinstance(value, torch.Tensor):
            return value
        keys = ", ".join(k for k, v in output.items() if isinstance(v, torch.Tensor))
        raise TaskError(
            f"the model's {type(output).__name__} has no `{name}` tensor (it has: {keys or 'none'})"
        )
    raise TaskError(f"the model returned {type(output).__name__}, not a tensor or ModelOutput")


def is_transformers_model(model: nn.Module) -> bool:
    """A ``transformers`` model (keyword inputs, ``ModelOutput`` results), judged by its class's
    module so that ``transformers`` need not be imported to ask."""
    return type(model).__module__.startswith("transformers.")


class Task:
    """Base class of the tasks; one module per task subclasses it (see `explorer.tasks`).

    ``name`` is the row's ``task``; ``output`` the name of the compared tensor; ``eval_batch``
    how many evaluation samples run at once."""

    name: str = ""
    output: str = "logits"
    eval_batch: int = 16

    def describe(self) -> str:
        """One sentence: what this task measures."""
        raise NotImplementedError

    def load_data(self, model: nn.Module, model_dir: Path | None, data: Path | None) -> TaskData:
        raise NotImplementedError

    def outputs(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """The compared output of ``model`` on an evaluation or calibration batch."""
        return named_output(model(inputs), self.output)

    def stats(self, outputs: torch.Tensor, targets: torch.Tensor | None) -> SampleStats:
        raise NotImplementedError

    def fidelity(
        self, ref: torch.Tensor, quant: torch.Tensor, targets: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def workloads(self, data: TaskData) -> dict[str, Workload]:
        """Named latency workloads, the primary one first."""
        raise NotImplementedError
