"""Anything else: output fidelity on the model's own kind of input.

What is measured: how close the quantized model's output is to the float model's on the same
inputs (SQNR, cosine, top-1 agreement and KL of the softmax), with no task metric. The output is
taken by name: ``logits`` where the model has them, otherwise ``last_hidden_state``; a
sequence's positions are flattened into rows (b·T, V), as earlier rows of unlabelled models were.

Imports: `explorer.tasks.task`, `explorer.measure.evaluation`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from explorer.measure.evaluation import SampleStats, classification_stats, fidelity_per_sample
from explorer.tasks.task import Task, TaskData, TaskError, Workload, named_output

OUTPUT_NAMES = ("logits", "last_hidden_state")


class FidelityTask(Task):
    name = "fidelity"
    output = "logits"
    eval_batch = 16

    def describe(self) -> str:
        return (
            "fidelity only: SQNR, cosine, top-1 agreement and KL of the quantized model's "
            "output to the float model's on the same inputs"
        )

    def load_data(self, model: nn.Module, model_dir: Path | None, data: Path | None) -> TaskData:
        raise TaskError("fidelity data is read by explorer.models.userdata")

    def outputs(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        out = model(inputs)
        if isinstance(out, Mapping):
            name = next((n for n in OUTPUT_NAMES if out.get(n) is not None), self.output)
            out = named_output(out, name)
        else:
            out = named_output(out, self.output)
        return out.reshape(-1, out.shape[-1]) if out.dim() == 3 else out

    def stats(self, outputs: torch.Tensor, targets: torch.Tensor | None) -> SampleStats:
        return classification_stats(outputs, None)

    def fidelity(
        self, ref: torch.Tensor, quant: torch.Tensor, targets: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        return fidelity_per_sample(ref, quant)

    def workloads(self, data: TaskData) -> dict[str, Workload]:
        raise TaskError("fidelity workloads come from the data")
