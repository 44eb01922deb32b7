"""Classification: top-1 accuracy of a classifier's logits against integer labels, the task of
the built-in image classifiers and of users' tabular models (CSV feature columns and a
``label`` column, or tensors with labels; see `explorer.models.userdata`), and of Hugging Face
sequence classifiers (``…ForSequenceClassification``) on labelled text: ``.csv``/``.jsonl`` with
``text, label`` (or ``sentence1, sentence2, label`` for sentence pairs), tokenized with the
directory's tokenizer; labels are class indices or the names in the config's ``label2id``.
Sequence classifiers also report the macro-averaged F1 (every class weighs the same, however
rare), with its paired-bootstrap interval.

The compared output is the ``logits`` tensor (n, C); fidelity is `fidelity_per_sample`'s SQNR,
cosine, top-1 agreement and KL per sample. Sequence classifiers' workloads are ``single`` (one
text) and ``batch32``.

Imports: `explorer.tasks.task`, `.text`, `.embedding` (its workload inputs),
`explorer.measure.evaluation`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from explorer.measure.evaluation import SampleStats, classification_stats, fidelity_per_sample
from explorer.tasks.task import Task, TaskData, TaskError, Workload, named_output
from explorer.tasks.text import is_text, load_tokenizer, read_records, text_field, tokenizer_summary

MAX_TOKENS = 128
CALIBRATION_SAMPLES = 128
MIN_SAMPLES = 8


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


class SequenceClassificationTask(ClassificationTask):
    """A Hugging Face sequence classifier on labelled text. Evaluation inputs are (n, 2, T):
    token ids and attention mask; a (n, T) input is unpadded ids (calibration)."""

    def describe(self) -> str:
        return (
            "top-1 accuracy and macro-F1 against the labels of the texts, and fidelity of the "
            "logits to float"
        )

    def load_data(self, model: nn.Module, model_dir: Path | None, data: Path | None) -> TaskData:
        if data is None or not is_text(data) or data.suffix.lower() == ".txt":
            raise TaskError(
                "a sequence classifier needs labelled text: .csv or .jsonl with text, label "
                "(or sentence1, sentence2, label)"
            )
        tokenizer = load_tokenizer(model_dir)
        if tokenizer is None:
            raise TaskError(f"{data.name} is text, but {model_dir} has no tokenizer")
        records = read_records(data)
        if "text" in records[0]:
            texts: tuple[list[str], ...] = (text_field(data, records, "text"),)
        elif {"sentence1", "sentence2"} <= set(records[0]):
            texts = (
                text_field(data, records, "sentence1"),
                text_field(data, records, "sentence2"),
            )
        else:
            raise TaskError(
                f"{data.name} has fields {sorted(records[0])}; a sequence classifier needs "
                "text, label (or sentence1, sentence2, label)"
            )
        labels = _labels(data, records, model)
        if len(labels) < MIN_SAMPLES:
            raise TaskError(f"{data.name} has {len(labels)} samples; give at least {MIN_SAMPLES}")
        max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        limit = min(MAX_TOKENS, max_positions or MAX_TOKENS)
        tokenizer.padding_side = "right"
        enc = tokenizer(
            *texts, padding=True, truncation=True, max_length=limit, return_tensors="pt"
        )
        x = torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1)  # (n, 2, T)
        y = torch.tensor(labels, dtype=torch.long)
        n_cal = min(CALIBRATION_SAMPLES, len(x) // 4)
        from explorer.tasks.embedding import calibration_ids, sentence_workload_inputs

        return TaskData(
            eval_split=(x[n_cal:], y[n_cal:]),
            calibration_split=(calibration_ids(x[:n_cal].unsqueeze(1), tokenizer), None),
            metric="accuracy",
            description=(
                f"{len(x) - n_cal} labelled {'pairs' if len(texts) == 2 else 'texts'} of "
                f"{data.name} (after {n_cal} for calibration), {int(y.max()) + 1} classes seen"
            ),
            tokenizer=tokenizer_summary(tokenizer),
            workload_inputs=sentence_workload_inputs(x[n_cal:].unsqueeze(1)),
        )

    def logits(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return named_output(model(input_ids=ids, attention_mask=mask), self.output)

    def outputs(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dim() == 2:
            return self.logits(model, inputs, torch.ones_like(inputs))
        return self.logits(model, inputs[:, 0], inputs[:, 1])

    def stats(self, outputs: torch.Tensor, targets: torch.Tensor | None) -> SampleStats:
        stats = classification_stats(outputs, targets)
        if targets is None:
            return stats
        return SampleStats(
            n_samples=stats.n_samples,
            correct=stats.correct,
            predicted=outputs.detach().argmax(dim=-1).to(torch.float64),
            label=targets.to(torch.float64),
        )

    def workloads(self, data: TaskData) -> dict[str, Workload]:
        def bind(key: str) -> Workload:
            ids, mask = data.workload_inputs[f"{key}_ids"], data.workload_inputs[f"{key}_mask"]

            def make(model: nn.Module) -> Callable[[], Any]:
                def run() -> torch.Tensor:
                    with torch.no_grad():
                        return self.logits(model, ids, mask)

                return run

            return make

        return {"single": bind("single"), "batch32": bind("batch")}


def _labels(data: Path, records: list[dict[str, Any]], model: nn.Module) -> list[int]:
    """Each record's ``label`` as a class index: an integer, or a name in ``label2id``."""
    config = getattr(model, "config", None)
    label2id = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()}
    classes = getattr(config, "num_labels", None) or len(label2id) or None
    out = []
    for i, record in enumerate(records, start=1):
        value = record.get("label")
        if isinstance(value, str) and value.strip() in label2id:
            index = label2id[value.strip()]
        else:
            try:
                index = int(str(value).strip())
            except ValueError:
                names = ", ".join(sorted(label2id)) or "none"
                raise TaskError(
                    f"{data.name} record {i}: label {value!r} is neither a class index nor a "
                    f"name in the config's label2id ({names})"
                ) from None
        if index < 0 or (classes is not None and index >= classes):
            raise TaskError(
                f"{data.name} record {i}: label {value!r} is outside the model's {classes} classes"
            )
        out.append(index)
    return out
