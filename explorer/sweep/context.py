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

Every context has a `Task` (`explorer.tasks`): it runs the model on a batch and names the output
compared, computes the per-sample statistics of the task metric and the fidelity to float, and
builds the latency workloads of users' Hugging Face models. A Hugging Face directory's task is
recognised from its architecture (`detect_task`) unless `ModelSource.task` names one. A float
reference whose outputs are not finite is refused with the layer where they first appear.

Imports: `explorer.models`, `explorer.tasks`, `explorer.measure`, `explorer.nn`.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from explorer import machine
from explorer.errors import ModelLoadError
from explorer.measure.evaluation import (
    Evaluation,
    NonFiniteOutputError,
    SampleStats,
    concat_fidelity,
    concat_stats,
    summarize,
)
from explorer.models.catalog import ModelSource
from explorer.models.registry import Workload
from explorer.nn.fold import fold_batch_norm
from explorer.nn.qat import DEFAULT_QAT_BATCH, DEFAULT_QAT_LR
from explorer.tasks import Task, TaskData, canonical_task, detect_task, legacy_task, read_config

EVAL_BATCH = {"classification": 256, "lm": 16, "fidelity": 16, "embedding": 32, "speech": 8}
USER_CALIBRATION_SAMPLES = 128
REFERENCE_BYTES = 1 << 30
BATCH_LOGITS_BYTES = 1 << 29
"""At most this many bytes of float32 logits per language-model evaluation batch."""
"""Most bytes of float outputs a `FloatReference` keeps; beyond it they are recomputed."""
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
    """What changes latency numbers: CPU, torch, threads, device, native kernels (the machine
    facts come from `explorer.machine`; the code that produced a row is in its ``code`` part)."""
    from explorer.kernels import native

    return {
        "cpu": machine.cpu_model(),
        "torch": torch.__version__,
        "threads": machine.threads(),
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


def first_nonfinite_layer(model: nn.Module, run: Callable[[], Any]) -> str | None:
    """The module whose output is the first (in execution order) to hold NaN or infinity during
    ``run()``, as ``name (Type)``; None if none does. Forward hooks on every module: a child
    finishes before its parent, so the first hit is the innermost layer that made them."""
    found: list[str] = []

    def check(name: str, module: nn.Module, out: Any) -> None:
        if found:
            return
        tensors = [out] if isinstance(out, torch.Tensor) else []
        if isinstance(out, tuple | list):
            tensors = [t for t in out if isinstance(t, torch.Tensor)]
        elif hasattr(out, "values") and not isinstance(out, torch.Tensor):
            tensors = [t for t in out.values() if isinstance(t, torch.Tensor)]
        if any(t.is_floating_point() and not torch.isfinite(t).all() for t in tensors):
            found.append(f"{name or '(the model itself)'} ({type(module).__name__})")

    hooks = [
        module.register_forward_hook(lambda m, _a, out, name=name: check(name, m, out))
        for name, module in model.named_modules()
    ]
    try:
        with torch.inference_mode():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return found[0] if found else None


Progress = Callable[..., None]
"""``progress(done, total)``: called after each evaluation batch (for language models a batch of
windows), so a caller can show a bar with the time left; ``done`` runs 1..total. A QAT row
first reports its training steps as ``progress(step, steps, stage="qat")`` (a Whisper step
takes seconds), so a hook given QAT rows takes a ``stage`` keyword (default ``"evaluate"``)."""


@dataclass
class FloatReference:
    """The float model's outputs on the evaluation batches, computed once per context: the
    task's compared output (``logits``: logits or embeddings) and per-sample statistics.

    Outputs larger than `REFERENCE_BYTES` in all are not kept (a language model's logits are
    tokens x vocabulary: 16k tokens of a 150k vocabulary would take 10 GB). The reference is then
    *streamed*: `compute` runs only the first batch (so a model that cannot take its data, or
    whose outputs are not finite, still fails at once), ``logits`` stays empty, and `evaluate`
    runs the float ``model`` batch by batch beside the quantized one, turning each pair of
    outputs into per-sample statistics and fidelity before the next batch, so at most one
    batch of float and one of quantized outputs is alive. The float statistics are taken from
    the first such pass (the same function of the same outputs, so the same numbers as a
    separate pass would give) and kept; `stats` runs the float pass alone only if it is read
    before any evaluation."""

    task: Task
    batches: list[tuple[torch.Tensor, torch.Tensor | None]]
    logits: list[torch.Tensor]
    float_stats: SampleStats | None
    model: nn.Module | None = None  # kept only when the logits are not
    bootstrap_seconds: float = 0.0  # `summarize` (the paired bootstrap) in the last evaluate

    @property
    def stats(self) -> SampleStats:
        """Per-sample statistics of the float model (a float pass now, if streamed and not yet
        evaluated)."""
        if self.float_stats is None:
            assert self.model is not None
            with torch.inference_mode():
                self.float_stats = concat_stats(
                    [self.task.stats(self._float_output(x), y) for x, y in self.batches]
                )
        return self.float_stats

    @property
    def streamed(self) -> bool:
        return not self.logits

    @classmethod
    def compute(
        cls,
        model: nn.Module,
        task: str | Task,
        batches: list[tuple[torch.Tensor, torch.Tensor | None]],
        progress: Progress | None = None,
    ) -> FloatReference:
        """``task``: a `Task`, or a task name (built-in models' tasks, see `legacy_task`).
        ``progress(done, total)`` is called after each batch (see `Progress`; a streamed
        reference reports its batches from `evaluate`).
        Raises `NonFiniteOutputError` naming the layer where non-finite values first appear."""
        task = legacy_task(task) if isinstance(task, str) else task
        reference = cls(task, batches, [], None, model=model)
        logits, stats = [], []
        with torch.inference_mode():
            for i, (x, y) in enumerate(batches):
                out = reference._float_output(x)
                # estimated from the first batch (batches are equal)
                if i == 0 and out.numel() * out.element_size() * len(batches) > REFERENCE_BYTES:
                    return reference
                logits.append(out)
                stats.append(task.stats(out, y))
                if progress is not None:
                    progress(i + 1, len(batches))
        return cls(task, batches, logits, concat_stats(stats))

    def _float_output(self, x: torch.Tensor) -> torch.Tensor:
        """The float model's output on ``x``; `NonFiniteOutputError` if it is not finite."""
        assert self.model is not None
        out = self.task.outputs(self.model, x)
        if out.is_floating_point() and not torch.isfinite(out).all():
            layer = first_nonfinite_layer(self.model, lambda: self.task.outputs(self.model, x))
            where = f"first appear in the output of {layer}" if layer else "appear"
            raise NonFiniteOutputError(
                f"the float model's outputs hold NaN or infinity; non-finite values "
                f"{where}: check that layer's weights and inputs"
            )
        return out

    def evaluate(
        self,
        qmodel: nn.Module,
        *,
        n_boot: int = 1000,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> Evaluation:
        """`summarize` the quantized model against the float outputs (stored, or streamed:
        see the class docstring); ``progress(done, total)`` after each batch."""
        q_stats, fid, f_stats = [], [], []
        with torch.inference_mode():
            for i, (x, y) in enumerate(self.batches):
                f_out = self.logits[i] if self.logits else self._float_output(x)
                if self.float_stats is None:
                    f_stats.append(self.task.stats(f_out, y))
                q_out = self.task.outputs(qmodel, x)
                fid.append(self.task.fidelity(f_out, q_out, y))
                q_stats.append(self.task.stats(q_out, y))
                del f_out, q_out  # before the next batch's outputs exist
                if progress is not None:
                    progress(i + 1, len(self.batches))
        if self.float_stats is None:
            self.float_stats = concat_stats(f_stats)
        fidelity = concat_fidelity(fid)
        t0 = time.perf_counter()
        evaluation = summarize(
            self.stats, concat_stats(q_stats), fidelity, n_boot=n_boot, seed=seed
        )
        self.bootstrap_seconds = time.perf_counter() - t0  # of the last evaluate: a row's part
        return evaluation


@dataclass
class ModelContext:
    """A loaded float model with everything a sweep needs to evaluate plans on it.

    ``task``: ``classification`` (accuracy), ``lm`` (perplexity), ``embedding`` (cosine to
    float; Spearman on scored pairs) or ``fidelity`` (no labels: fidelity metrics only);
    ``task_spec`` the `Task` that computes it (by default the name's built-in one).
    ``train`` is None when the model has no training data (QAT then trains on the calibration
    split, said on the row). ``data`` is the task's description of its data (Hugging Face
    models: tokenizer, windows, tokens scored), None for built-in models."""

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
    task_spec: Task | None = None
    data: TaskData | None = None
    warnings: tuple[str, ...] = ()  # from loading (e.g. weights initialised at random)

    def __post_init__(self) -> None:
        if self.task_spec is None:
            self.task_spec = legacy_task(self.task)

    def task_summary(self) -> dict[str, Any]:
        """What the task is and how it is judged, for the Model page and reports: ``task``,
        ``how`` (recognised from the architecture, named by the user, or the built-in model's),
        ``metric``, ``measures`` (one sentence), ``tokenizer``, ``data`` (what is evaluated) and
        ``tokens_evaluated``."""
        assert self.task_spec is not None
        model_dir = Path(self.source.model) if self.source.model else None
        if self.source.task:
            how = "named with --task"
        elif model_dir is not None and model_dir.is_dir():
            architectures = read_config(model_dir).get("architectures") or ["?"]
            how = f"recognised from its architecture {architectures[0]}"
        else:
            how = "the built-in model's" if self.source.data is None else "from its data"
        return {
            "task": self.task,
            "how": how,
            "metric": self.metric,
            "measures": self.task_spec.describe(),
            "tokenizer": None if self.data is None else self.data.tokenizer,
            "data": None if self.data is None else self.data.description,
            "tokens_evaluated": self.tokens_evaluated,
        }

    @property
    def tokens_evaluated(self) -> int | None:
        """Tokens scored on the evaluation split (language models), else None."""
        if self.data is not None and self.data.tokens_evaluated is not None:
            return self.data.tokens_evaluated
        y = self.eval_split[1]
        if self.task == "lm" and y is not None:
            return int((y != -100).sum())
        return None

    # --- derived, computed once -------------------------------------------------------------
    @cached_property
    def folded(self) -> nn.Module:
        """The float model with batch norm folded: the per-layer reference of every plan.

        Folding needs a copy (it rewrites the model); a model without batch norm is its own
        folded form, so it is returned as is rather than copied: a second float copy of a
        0.5 B-parameter model would cost another gigabyte for nothing. Callers only read it
        (hooks, forward passes), never change it."""
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules()):
            return self.model
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
        return self.compute_reference()

    def compute_reference(self, progress: Progress | None = None) -> FloatReference:
        """`reference`, computed now if it is not yet, reporting ``progress`` per batch."""
        if "reference" not in self.__dict__:
            assert self.task_spec is not None
            self.__dict__["reference"] = FloatReference.compute(
                self.model, self.task_spec, self.eval_batches(), progress
            )
        return self.__dict__["reference"]

    def budgeted(self, budget: int | None) -> ModelContext:
        """This context evaluated on a budget: the first ``budget`` scored tokens (language
        models with targets) or samples (every other task) of the evaluation split; itself when
        ``budget`` is None or covers the whole split. The model, calibration and training data
        are shared; the smaller split changes ``data_fingerprint`` (so rows keyed on it differ)
        and gives the paired bootstrap fewer samples, so the intervals widen as they should.
        Contexts are cached per budget."""
        if budget is None:
            return self
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ModelLoadError(
                f"the evaluation budget must be a positive integer, got {budget!r}"
            )
        cache = self.__dict__.setdefault("_budgets", {})
        if budget not in cache:
            cache[budget] = self._limit(budget)
        return cache[budget]

    def _limit(self, budget: int) -> ModelContext:
        x, y = self.eval_split
        tokens = self.task == "lm" and y is not None and y.dim() == 2
        if tokens:
            assert y is not None
            scored = (y != -100).sum(dim=1).cumsum(0)
            if int(scored[-1]) <= budget:
                return self
            n = int(torch.searchsorted(scored, torch.tensor(budget))) + 1
            x, y = x[:n], y[:n].clone()
            over = int(scored[n - 1]) - budget  # unscore the last window's excess targets
            if over:
                last = (y[-1] != -100).nonzero().flatten()[-over:]
                y[-1, last] = -100
            unit, kept = "tokens", budget
        else:
            if len(x) <= budget:
                return self
            x, y = x[:budget], None if y is None else y[:budget]
            unit, kept = "samples", budget
        data = self.data
        if data is not None:
            data = replace(
                data,
                eval_split=(x, y),
                tokens_evaluated=kept if tokens else data.tokens_evaluated,
                description=f"{data.description}; evaluation budget {kept:,} {unit}",
            )
        return replace(self, eval_split=(x, y), data=data)

    def eval_batches(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        x, y = self.eval_split
        b = EVAL_BATCH.get(self.task, 16)
        if self.task == "lm" and x.dim() == 2:
            # a batch's logits are windows x positions x vocabulary floats: 16 windows of 511
            # tokens of a 151,936-token vocabulary are 5 GB, so wide vocabularies go in fewer
            # windows at a time (the numbers do not change: statistics are per token)
            vocab = getattr(getattr(self.model, "config", None), "vocab_size", None)
            if isinstance(vocab, int) and vocab > 0:
                per_window = x.shape[1] * vocab * 4
                b = max(1, min(b, BATCH_LOGITS_BYTES // per_window))
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


def _hf_task_context(loaded: Any, source: ModelSource, model_dir: Path, spec: Task) -> ModelContext:
    """A Hugging Face model with a language-model, embedding or sequence-classification `Task`:
    its data read with the directory's tokenizer (or seeded random ids without --data), its
    workloads."""
    data = spec.load_data(
        loaded.model, model_dir, None if source.data is None else Path(source.data)
    )
    return ModelContext(
        name=loaded.name,
        source=source,
        model=loaded.model,
        warnings=loaded.warnings,
        task=spec.name,
        metric=data.metric,
        eval_split=data.eval_split,
        calibration_split=data.calibration_split,
        train_split=data.train_split,  # a speech folder's train/; else QAT uses calibration
        workloads=spec.workloads(data),
        task_spec=spec,
        data=data,
    )


def _text_fidelity_context(loaded: Any, source: ModelSource, model_dir: Path) -> ModelContext:
    """Any other Hugging Face model given text: the text tokenized with its tokenizer (as for a
    causal LM, never as bytes unless the vocabulary is bytes) and its outputs on those token
    windows compared with float's."""
    from dataclasses import replace

    from explorer.tasks import task_object

    assert source.data is not None
    lm_data = task_object("lm").load_data(loaded.model, model_dir, Path(source.data))
    x, x_cal = lm_data.eval_split[0], lm_data.calibration_split[0]
    data = replace(
        lm_data,
        eval_split=(x, None),
        calibration_split=(x_cal, None),
        metric=None,
        tokens_evaluated=None,
        description=f"fidelity only, on {len(x)} token windows of {Path(source.data).name}",
    )
    return ModelContext(
        name=loaded.name,
        source=source,
        model=loaded.model,
        warnings=loaded.warnings,
        task="fidelity",
        metric=None,
        eval_split=data.eval_split,
        calibration_split=data.calibration_split,
        train_split=None,
        workloads=_input_workloads(x),
        task_spec=task_object("fidelity"),
        data=data,
    )


def _builtin_hf_task(
    spec: Any, eval_split: tuple[torch.Tensor, torch.Tensor | None]
) -> tuple[Task | None, TaskData | None]:
    """A built-in language model shipped as a Hugging Face directory with its tokenizer
    (``tiny-lm``) is judged by the causal-LM task per token (KL mean and 99th percentile, same
    top token), on its own eval split; the older built-ins keep their task by name."""
    if spec.loader is None or spec.task != "lm":
        return None, None
    from explorer.tasks import task_object
    from explorer.tasks.text import load_tokenizer, tokenizer_summary

    tokenizer = load_tokenizer(spec.asset_dir)
    x, y = eval_split
    assert y is not None
    scored = int((y != -100).sum())
    data = TaskData(
        eval_split=eval_split,
        calibration_split=spec.load_split("calibration"),
        metric="perplexity",
        description=(
            f"{scored:,} tokens of {spec.name}'s held-out split in {len(x)} windows of "
            f"{x.shape[1]} tokens"
        ),
        tokens_evaluated=scored,
        tokenizer=None if tokenizer is None else tokenizer_summary(tokenizer),
    )
    return task_object("lm"), data


def resolve_task(source: ModelSource) -> str | None:
    """The task of a Hugging Face directory: ``source.task`` if named, else recognised from its
    ``config.json``; None for built-in models and factories."""
    if source.model is None or not Path(source.model).is_dir():
        return canonical_task(source.task) if source.task else None
    if source.task:
        return canonical_task(source.task)
    model_dir = Path(source.model)
    return detect_task(read_config(model_dir), model_dir)


def open_context(source: ModelSource) -> ModelContext:
    """Load the model and data of ``source``; built-in models bring their own splits."""
    from explorer.models.source import load_model

    task = resolve_task(source)
    loaded = load_model(source.model, weights=source.weights, factory=source.factory)
    if loaded.builtin is None and source.model is not None and Path(source.model).is_dir():
        from explorer.tasks import task_object
        from explorer.tasks.classification import SequenceClassificationTask
        from explorer.tasks.detect import is_image_classifier

        text = source.data is not None and Path(source.data).suffix.lower() in (".csv", ".jsonl")
        if task in ("lm", "embedding"):
            return _hf_task_context(loaded, source, Path(source.model), task_object(task))
        if task == "speech":  # Whisper, run on one packed tensor (explorer.tasks.speech)
            from explorer.models.whisper_plans import QAT_BATCH, QAT_LR
            from explorer.tasks.speech import SpeechRecognizer, SpeechTask

            loaded = replace(loaded, model=SpeechRecognizer(loaded.model))
            ctx = _hf_task_context(loaded, source, Path(source.model), SpeechTask())
            # a pretrained Whisper fine-tunes at whisper-tiny-en's QAT rate and batch (a batch
            # of 64 utterances would cost minutes a step)
            return replace(ctx, qat_lr=QAT_LR, qat_batch=QAT_BATCH)
        if task == "classification" and is_image_classifier(read_config(Path(source.model))):
            from explorer.tasks.image_classification import ImageClassificationTask

            images = ImageClassificationTask()  # image folder, pixel tensors or random pixels
            return _hf_task_context(loaded, source, Path(source.model), images)
        if task == "classification" and text:  # labelled text for a sequence classifier
            sequences = SequenceClassificationTask()
            return _hf_task_context(loaded, source, Path(source.model), sequences)
        if (
            task == "fidelity"
            and source.data is not None
            and Path(source.data).suffix
            in (
                ".txt",
                ".jsonl",
            )
        ):
            return _text_fidelity_context(loaded, source, Path(source.model))
    spec = loaded.builtin
    if spec is not None and spec.task == "speech" and source.weights is None:
        # a built-in Whisper (whisper-tiny-en): its converted Hugging Face directory, judged by
        # the speech task on its synthetic audio (eval/ evaluated, train/ for calibration and
        # QAT), or on --data
        from explorer.tasks.speech import SpeechRecognizer, SpeechTask

        audio = Path(source.data) if source.data else spec.extra["audio_dir"]()
        loaded = replace(loaded, model=SpeechRecognizer(loaded.model))
        speech = replace(source, data=str(audio))
        ctx = _hf_task_context(loaded, speech, spec.extra["model_dir"](), SpeechTask())
        # QAT fine-tunes a pretrained Whisper: its own rate and batch, not the default 1e-3
        return replace(ctx, qat_lr=spec.qat_lr, qat_batch=spec.qat_batch)
    if (
        spec is not None
        and spec.loader is not None
        and spec.task == "lm"
        and source.data is not None
        and source.weights is None
    ):
        # a built-in language model shipped as a Hugging Face directory (tiny-lm) given text:
        # tokenized with its own tokenizer by the causal-LM task, as a user's directory is
        from explorer.tasks import task_object

        return _hf_task_context(loaded, source, spec.asset_dir, task_object("lm"))
    if spec is not None and source.data is None:
        x_eval, y_eval = spec.load_split("eval")
        task_spec, task_data = _builtin_hf_task(spec, (x_eval, y_eval))
        return ModelContext(
            name=loaded.name,
            source=source,
            model=loaded.model,
            warnings=loaded.warnings,
            task=spec.task,
            metric=spec.metric,
            eval_split=(x_eval, y_eval),
            calibration_split=spec.load_split("calibration"),
            train_split=spec.load_split("train"),
            workloads=spec.workloads(),
            qat_lr=spec.qat_lr,
            qat_batch=spec.qat_batch,
            task_spec=task_spec,
            data=task_data,
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
            warnings=loaded.warnings,
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
        warnings=loaded.warnings,
        task="fidelity",
        metric=None,
        eval_split=(eval_ids, None),
        calibration_split=(calib_ids, None),
        train_split=None,
        workloads=_input_workloads(eval_ids),
    )
