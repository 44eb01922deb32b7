"""Classification: top-1 accuracy of a classifier's logits against integer labels, the task of
the built-in image classifiers and of users' tabular models (CSV feature columns and a
``label`` column, or tensors with labels; see `explorer.models.userdata`).

The compared output is the ``logits`` tensor (n, C); fidelity is `fidelity_per_sample`'s SQNR,
cosine, top-1 agreement and KL per sample.

Imports: `explorer.tasks.task`, `explorer.measure.evaluation`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from explorer.measure.evaluation import SampleStats, classification_stats, fidelity_per_sample
from explorer.tasks.task import Task, TaskData, TaskError, Workload


class ClassificationTask(Task):
    name = "classification"
    output = "logits"
    eval_batch = 256

    def describe(self) -> str:
        return "top-1 accuracy against the labels, and fidelity of the logits to float"

    def load_data(self, model: nn.Module, model_dir: Path | None, data: Path | None) -> TaskData:
        raise TaskError(
            "classification data is read by the built-in models and explorer.models.userdata"
        )

    def stats(self, outputs: torch.Tensor, targets: torch.Tensor | None) -> SampleStats:
        return classification_stats(outputs, targets)

    def fidelity(
        self, ref: torch.Tensor, quant: torch.Tensor, targets: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        return fidelity_per_sample(ref, quant)

    def workloads(self, data: TaskData) -> dict[str, Workload]:
        raise TaskError("classification workloads come from the built-in model or the data")
