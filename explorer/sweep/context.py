"""What a sweep evaluates against: the float model, its data splits, its latency workloads, the
float reference outputs and the fingerprints that key its result rows.

A `ModelSource` names a model the way the command line does (a built-in name or a Hugging Face
directory, optional safetensors weights, an operator-named factory, optional data) and is plain
data (defined, torch-free, in `explorer.models.catalog`), so a worker process or a Ray actor
can rebuild the same `ModelContext` from it.
`ModelContext` computes once, and then reuses for every plan, the float model with batch norm
folded (per-layer references), the float outputs on the evaluation split (`FloatReference`), and
the calibration cache (static activation ranges, and the input statistics that GPTQ, AWQ and
SmoothQuant read: see `explorer.nn.convert`).

Imports: `explorer.models`, `explorer.measure`, `explorer.nn`.
"""

from __future__ import annotations

import copy
import hashlib
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from explorer.errors import ModelLoadError
from explorer.measure.evaluation import (
    FIDELITY_KEYS,
    Evaluation,
    SampleStats,
    _concat,
    classification_stats,
    fidelity_per_sample,
    lm_stats,
    summarize,
)
from explorer.models.catalog import ModelSource
from explorer.models.registry import Workload
from explorer.nn.fold import fold_batch_norm
from explorer.nn.qat import DEFAULT_QAT_BATCH, DEFAULT_QAT_LR

EVAL_BATCH = {"classification": 256, "lm": 16, "fidelity": 16}
USER_CALIBRATION_SAMPLES = 128
FINGERPRINT_CHARS = 16


def tensor_fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order (first 16 hex digits)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:FINGERPRINT_CHARS]


def environment() -> dict[str, Any]:
    """What changes latency numbers: CPU, torch, threads, device, native kernels."""
    from explorer.kernels import native

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "native_kernels": native.available(),
    }


class FlatLogits(nn.Module):
    """Unlabelled sequence models: per-token logits ``(b*T, V)`` for fidelity metrics."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        logits = getattr(out, "logits", out)
        return logits.reshape(-1, logits.shape[-1])


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return getattr(out, "logits", out)


@dataclass
class FloatReference:
    """The float model's outputs on the evaluation batches, computed once per context."""

    task: str  # classification | lm | fidelity
    batches: list[tuple[torch.Tensor, torch.Tensor | None]]
    logits: list[torch.Tensor]
    stats: SampleStats

    @classmethod
    def compute(
        cls, model: nn.Module, task: str, batches: list[tuple[torch.Tensor, torch.Tensor | None]]
    ) -> FloatReference:
        logits, stats = [], []
        with torch.inference_mode():
            for x, y in batches:
                out = _task_logits(model, x, task)
                logits.append(out)
                stats.append(_stats(out, y, task))
        return cls(task, batches, logits, _concat(stats))

    def evaluate(self, qmodel: nn.Module, *, n_boot: int = 1000, seed: int = 0) -> Evaluation:
        """`summarize` the quantized model against the stored float outputs."""
        q_stats, fid = [], []
        with torch.inference_mode():
            for (x, y), f_out in zip(self.batches, self.logits, strict=True):
                q_out = _task_logits(qmodel, x, self.task)
                fid.append(fidelity_per_sample(f_out, q_out))
                q_stats.append(_stats(q_out, y, self.task))
        fidelity = {k: torch.cat([part[k] for part in fid]) for k in FIDELITY_KEYS}
        return summarize(self.stats, _concat(q_stats), fidelity, n_boot=n_boot, seed=seed)


def _task_logits(model: nn.Module, x: torch.Tensor, task: str) -> torch.Tensor:
    out = _logits(model, x)
    if task == "fidelity" and out.dim() == 3:
        out = out.reshape(-1, out.shape[-1])
    return out


def _stats(out: torch.Tensor, y: torch.Tensor | None, task: str) -> SampleStats:
    if task == "lm":
        assert y is not None
        return lm_stats(out, y)
    return classification_stats(out, y if task == "classification" else None)


@dataclass
class ModelContext:
    """A loaded float model with everything a sweep needs to evaluate plans on it.

    ``task``: ``classification`` (accuracy), ``lm`` (perplexity) or ``fidelity`` (no labels:
    fidelity metrics only). ``train`` is None when the model has no training data (QAT then
    trains on the calibration split, said on the row)."""

    name: str
    source: ModelSource
    model: nn.Module
    task: str
    metric: str | None
    eval_split: tuple[torch.Tensor, torch.Tensor | None]
    calibration_split: tuple[torch.Tensor, torch.Tensor | None]
    train_split: tuple[torch.Tensor, torch.Tensor | None] | None
    workloads: dict[str, Workload]
    act_cache: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    qat_lr: float = DEFAULT_QAT_LR  # the model's QAT defaults, where a sweep names none
    qat_batch: int = DEFAULT_QAT_BATCH

    # --- derived, computed once -------------------------------------------------------------
    @cached_property
    def folded(self) -> nn.Module:
        """The float model with batch norm folded: the per-layer reference of every plan."""
        folded, _ = fold_batch_norm(copy.deepcopy(self.model).eval())
        return folded

    @cached_property
    def fingerprint(self) -> str:
        return tensor_fingerprint(dict(self.model.state_dict()))

    @cached_property
    def data_fingerprint(self) -> str:
        tensors = {}
        for split, (x, y) in (
            ("eval", self.eval_split),
            ("calibration", self.calibration_split),
            *([("train", self.train_split)] if self.train_split is not None else []),
        ):
            tensors[f"{split}.x"] = x
            if y is not None:
                tensors[f"{split}.y"] = y
        return tensor_fingerprint(tensors)

    @cached_property
    def reference(self) -> FloatReference:
        return FloatReference.compute(self.model, self.task, self.eval_batches())

    def eval_batches(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        x, y = self.eval_split
        b = EVAL_BATCH[self.task]
        return [(x[i : i + b], None if y is None else y[i : i + b]) for i in range(0, len(x), b)]

    def calibration_inputs(self, samples: int) -> torch.Tensor:
        x = self.calibration_split[0]
        return x[: min(samples, len(x))]

    def qat_batches(
        self, batch_size: int, seed: int
    ) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
        """``step -> (inputs, targets)``: seeded random batches of the training split."""
        x, y = self.train_split if self.train_split is not None else self.calibration_split
        if y is None:
            raise ModelLoadError(
                f"{self.name}: QAT needs labelled training data; pass --data with labels"
            )
        generator = torch.Generator().manual_seed(seed)
        n = len(x)

        def batch(_step: int) -> tuple[torch.Tensor, torch.Tensor]:
            idx = torch.randint(n, (min(batch_size, n),), generator=generator)
            return x[idx], y[idx]

        return batch

    def loss(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = getattr(output, "logits", output)
        if logits.dim() == 3:
            return F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return F.cross_entropy(logits, targets)


def _input_workloads(example: torch.Tensor) -> dict[str, Workload]:
    """``single`` (one sample) and ``batch`` (up to 64) forward passes, for users' models."""

    def bind(n: int) -> Workload:
        def workload(model: nn.Module) -> Callable[[], Any]:
            x = example[:n].contiguous()
            return lambda: model(x)

        return workload

    return {"single": bind(1), f"batch{min(64, len(example))}": bind(64)}


def open_context(source: ModelSource) -> ModelContext:
    """Load the model and data of ``source``; built-in models bring their own splits."""
    from explorer.models.source import load_model

    loaded = load_model(source.model, weights=source.weights, factory=source.factory)
    spec = loaded.builtin
    if spec is not None and source.data is None:
        x_eval, y_eval = spec.load_split("eval")
        return ModelContext(
            name=loaded.name,
            source=source,
            model=loaded.model,
            task=spec.task,
            metric=spec.metric,
            eval_split=(x_eval, y_eval),
            calibration_split=spec.load_split("calibration"),
            train_split=spec.load_split("train"),
            workloads=spec.workloads(),
            qat_lr=spec.qat_lr,
            qat_batch=spec.qat_batch,
        )
    if source.data is not None:
        from explorer.models.userdata import check_for_model, load_dataset, require_samples

        data = load_dataset(source.data)
        require_samples(data, 2 * 8, "evaluation and calibration")
        calibration, evaluation = data.split(min(USER_CALIBRATION_SAMPLES, len(data) // 4))
        labelled = data.targets is not None
        task = (spec.task if spec is not None else "classification") if labelled else "fidelity"
        if task == "classification" and labelled and data.inputs.dim() == 2:
            if data.inputs.dtype in (torch.int64, torch.int32):  # token ids with next tokens
                task = "lm"
        check_for_model(data, loaded.model, task)  # labels and token ids in the model's range
        return ModelContext(
            name=loaded.name,
            source=source,
            model=loaded.model,
            task=task,
            metric={"classification": "accuracy", "lm": "perplexity"}.get(task),
            eval_split=(evaluation.inputs, evaluation.targets),
            calibration_split=(calibration.inputs, calibration.targets),
            train_split=None,
            workloads=_input_workloads(evaluation.inputs),
        )
    from explorer.models.hf import random_token_batches, vocab_size

    if source.model is None or not Path(source.model).is_dir():
        raise ModelLoadError(
            f"{loaded.name}: no evaluation data; pass --data (safetensors, npz, csv or txt)"
        )
    vocab = vocab_size(loaded.model)
    eval_ids = torch.cat([b for b, _ in random_token_batches(vocab, n=64, seed=0)])
    calib_ids = torch.cat([b for b, _ in random_token_batches(vocab, n=32, seed=1)])
    return ModelContext(
        name=loaded.name,
        source=source,
        model=loaded.model,
        task="fidelity",
        metric=None,
        eval_split=(eval_ids, None),
        calibration_split=(calib_ids, None),
        train_split=None,
        workloads=_input_workloads(eval_ids),
    )
