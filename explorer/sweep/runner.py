"""The sweep runner: evaluate plans on real kernels and stream result rows into the store.

`evaluate_entry` turns one `PlanEntry` into one result row, all from *one* quantized model: it
quantizes (PTQ) or trains (QAT from the PTQ point), chooses each layer's kernel by timing on the
model's primary workload, evaluates the task metric and fidelity against the float reference
outputs (computed once per context, by the context's `Task`) with paired-bootstrap intervals
(language models: ``tokens_evaluated``, the tokens scored; Hugging Face language models add
``kl_p99`` and ``same_top`` to ``metrics``; see `explorer.tasks`), counts the bytes as stored,
times every workload (layers without a real kernel run on a timing twin, and the row says
`simulated`), and records per-layer figures: weight SQNR, output SQNR on a calibration batch,
kernel, and share of the primary workload's time. A row says which PTQ algorithm produced each
layer as resolved (``algorithms``: counts; ``layers[i].algorithm``) and what calibration cost
(``seconds.calibrate``, of which ``seconds.algorithm`` was GPTQ/AWQ/SmoothQuant; input statistics
reused from an earlier row of the sweep are not in it, and ``seconds.statistics_reused`` says what
they cost there) or QAT's training (``seconds.qat``).

`run_sweep` keys each entry (`row_parts`: everything that changes its numbers), skips entries
whose key is already in the store, sends the rest to an executor, and writes each finished row
in its own transaction, so a killed sweep resumes where it stopped. Timings run one at a time
under the machine-wide timing lock, and the local executor does nothing else while one runs.

Imports: `explorer.quant`, `explorer.nn`, `explorer.measure`, `explorer.sweep.context`, `.space`,
`.store`.
"""

from __future__ import annotations

import functools
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from explorer.errors import ExplorerError
from explorer.kernels.select import MAX_TIMING_ROWS
from explorer.measure.latency import measure_callable, timing_lock, timing_model
from explorer.measure.metrics import sqnr_db
from explorer.measure.readrate import call_macs, layer_bytes, read_rate, tensor_bytes
from explorer.measure.size import size_report
from explorer.nn.capture import capture_outputs
from explorer.nn.convert import (
    QuantReport,
    as_linear,
    quant_modules,
    quantize_model,
    select_kernels,
)
from explorer.nn.qat import QAT_SCHEDULE, train_qat
from explorer.quant.config import QuantConfig
from explorer.sweep.context import (
    ModelContext,
    ModelSource,
    Progress,
    environment,
    open_context,
)
from explorer.sweep.space import PlanEntry
from explorer.sweep.store import ResultStore, finite_or_none, row_key
from explorer.sweep.version import code_version

LAYER_PROFILE_RUNS = 5
OUTPUT_SQNR_SAMPLES = 64
SQNR_CHUNK_ELEMENTS = 1 << 24
"""Weights larger than this (16 M entries) get their SQNR in row blocks (`_weight_sqnr`)."""
PER_LAYER_LOGITS_BYTES = 1 << 26
"""Language models compare per-layer outputs on up to 4 calibration sequences whose float32
logits fit in this many bytes (64 MiB: one sequence of a 150k vocabulary)."""


@dataclass(frozen=True)
class RunSettings:
    """Everything besides the plan that changes a row's numbers (all part of its key)."""

    calibration_samples: int = 128
    seed: int = 0
    n_boot: int = 1000
    warmup: int = 3
    repeats: int = 20
    qat_batch: int | None = None  # None: the model's default (`ModelContext.qat_batch`)
    per_layer: bool = True
    # tokens (language models) or samples scored; None: the task's own (`ModelContext.budgeted`)
    eval_budget: int | None = None
    target: str = "native"  # where rows run (explorer.targets): native or onnxruntime

    def __post_init__(self) -> None:
        for name in ("calibration_samples", "n_boot", "repeats", "qat_batch", "eval_budget"):
            value = getattr(self, name)
            if name in ("qat_batch", "eval_budget") and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ExplorerError(f"{name} must be a positive integer, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def kernel_policy() -> dict[str, Any]:
    """Which kernels a row could have chosen from: the choice among them is by timing."""
    from explorer.kernels.select import KERNELS

    return {"choice": "fastest-measured", "registry": sorted(KERNELS)}


def qat_settings(
    ctx: ModelContext, entry: PlanEntry, settings: RunSettings
) -> dict[str, Any] | None:
    """How ``entry`` trains, with the model's defaults filled in (None for PTQ)."""
    if entry.qat_steps is None:
        return None
    return {
        "steps": entry.qat_steps,
        "lr": entry.qat_lr if entry.qat_lr is not None else ctx.qat_lr,
        "batch": settings.qat_batch if settings.qat_batch is not None else ctx.qat_batch,
        "schedule": QAT_SCHEDULE,
    }


def row_parts(
    ctx: ModelContext, entry: PlanEntry, settings: RunSettings, env: dict[str, Any]
) -> dict[str, Any]:
    """The key parts of a row: a row is reused only if every one of them matches (an evaluation
    budget adds ``eval_budget``, and its smaller split its own ``data_fingerprint``)."""
    budget = {} if settings.eval_budget is None else {"eval_budget": settings.eval_budget}
    if settings.eval_budget is not None:
        ctx = ctx.budgeted(settings.eval_budget)
    return {
        "model": ctx.name,
        "model_fingerprint": ctx.fingerprint,
        "data_fingerprint": ctx.data_fingerprint,
        "plan": entry.plan.to_json(),
        "qat": qat_settings(ctx, entry, settings),
        "seeds": {"bootstrap": settings.seed, "qat": settings.seed},
        "calibration_samples": settings.calibration_samples,
        "n_boot": settings.n_boot,
        "timing": {"warmup": settings.warmup, "repeats": settings.repeats},
        "kernels": kernel_policy(),
        "env": env,
        "code": code_version(),  # source hash + native build and ISA (explorer.sweep.version)
        **budget,
        **_target_part(settings),
    }


def _target_part(settings: RunSettings) -> dict[str, Any]:
    """The target's name, runtime version and settings; absent for native, so native rows keep
    the keys they had before targets existed."""
    if settings.target == "native":
        return {}
    from explorer.targets import describe, get_target

    return {"target": describe(get_target(settings.target))}


def entry_key(
    ctx: ModelContext, entry: PlanEntry, settings: RunSettings, env: dict[str, Any]
) -> str:
    return row_key(row_parts(ctx, entry, settings, env))


# --- one row -------------------------------------------------------------------------------


def build_quantized(
    ctx: ModelContext, entry: PlanEntry, settings: RunSettings, progress: Progress | None = None
) -> nn.Module:
    """The quantized model of ``entry``: PTQ, or QAT for its step budget from the PTQ point;
    ``progress(step, steps, stage="qat")`` after each QAT step (see `Progress`)."""
    calibration = ctx.calibration_inputs(settings.calibration_samples)
    qat = qat_settings(ctx, entry, settings)
    if qat is None:
        return quantize_model(
            ctx.model, entry.plan, calibration_data=calibration, act_cache=ctx.act_cache
        )
    torch.manual_seed(settings.seed)
    return train_qat(
        ctx.model,
        entry.plan,
        ctx.qat_batches(qat["batch"], settings.seed),
        qat["steps"],
        lr=qat["lr"],
        loss_fn=ctx.loss,
        calibration_data=calibration,
        progress=None if progress is None else functools.partial(progress, stage="qat"),
    ).eval()


def _qat_fields(qat: dict[str, Any] | None) -> dict[str, Any]:
    """A row's ``qat_lr``, ``qat_batch`` and ``qat_schedule``: what training used (None: PTQ)."""
    qat = qat or {}
    return {f"qat_{k}": qat.get(k) for k in ("lr", "batch", "schedule")}


def _float_weight(module: nn.Module) -> torch.Tensor:
    layer = as_linear(module)
    return layer.weight.detach().reshape(layer.weight.shape[0], -1)


@dataclass
class LayerTimes:
    """`profile_layers`: seconds per layer and in all over `LAYER_PROFILE_RUNS` runs (the shares),
    each layer's milliseconds per call (median over the runs), and per call the bytes of its
    activations in and out and its multiply-adds, at the workload's shapes."""

    total: float
    spent: dict[str, float]
    call_ms: dict[str, float]
    activation_bytes: dict[str, int]
    macs: dict[str, int | None]


def profile_layers(
    model: nn.Module,
    names: Sequence[str],
    run: Callable[[], Any],
    clock: Callable[[], float] = time.perf_counter,
) -> LayerTimes:
    """Wall time per layer over `LAYER_PROFILE_RUNS` calls of ``run`` (see `LayerTimes`); the
    shapes are read on the warm-up call, so that the timed calls carry only the clock.
    ``clock`` may be ``time.thread_time`` with one thread: CPU time, which other jobs on a loaded
    machine do not inflate."""
    spent = dict.fromkeys(names, 0.0)
    calls = dict.fromkeys(names, 0)
    starts: dict[str, float] = {}
    shapes: dict[str, tuple[int, int | None]] = {}
    modules = dict(model.named_modules())

    def finished(module: nn.Module, args: tuple[Any, ...], out: Any, n: str) -> None:
        spent[n] += clock() - starts[n]
        calls[n] += 1
        if n not in shapes:
            shapes[n] = (tensor_bytes(args) + tensor_bytes((out,)), call_macs(module, out))

    hooks = []
    for n in names:
        m = modules[n]
        hooks.append(
            m.register_forward_pre_hook(lambda _m, _a, n=n: starts.__setitem__(n, clock()))
        )
        hooks.append(m.register_forward_hook(lambda m, a, o, n=n: finished(m, a, o, n)))
    per_run: dict[str, list[float]] = {n: [] for n in names}
    try:
        with torch.inference_mode(), timing_lock():
            run()  # warm-up
            for n in names:
                spent[n], calls[n] = 0.0, 0
            t0 = clock()
            for _ in range(LAYER_PROFILE_RUNS):
                before = dict(spent)
                run()
                for n in names:
                    per_run[n].append(spent[n] - before[n])
            total = clock() - t0
    finally:
        for h in hooks:
            h.remove()
    call_ms = {
        n: statistics.median(per_run[n]) * LAYER_PROFILE_RUNS / calls[n] * 1e3
        for n in names
        if calls[n]
    }
    return LayerTimes(
        total,
        spent,
        call_ms,
        {n: shapes[n][0] for n in shapes},
        {n: shapes[n][1] for n in shapes},
    )


def per_layer(
    ctx: ModelContext, qmodel: nn.Module, primary: Callable[[], Any] | None
) -> list[dict[str, Any]]:
    """Each quantized layer's config, kernel, weight SQNR, output SQNR (on calibration inputs,
    with every other layer quantized as the plan says) and share of the primary workload; with
    ``primary``, also per call of the layer in it: ``latency_ms`` (median of the profiled runs),
    ``read_bytes`` (its stored tensors), ``activation_bytes`` (in and out) and ``macs``, which
    `explorer.measure.readrate.byte_time` sets against the row's ``read_rate``."""
    report = getattr(qmodel, "quant_report", None)
    layers = report.layers if report is not None else {}
    mods = quant_modules(qmodel)
    float_modules = dict(ctx.folded.named_modules())
    names = [n for n in layers if n in float_modules]
    x = ctx.calibration_inputs(OUTPUT_SQNR_SAMPLES)
    if ctx.task == "lm":
        # every layer's output is kept, float and quantized, and its SQNR taken in float64: a
        # 151,936-token vocabulary's logits are 78 MB per 128-token sequence (x 2, x 3 in
        # float64), so wide vocabularies compare fewer sequences (at least one)
        vocab = getattr(getattr(ctx.model, "config", None), "vocab_size", None)
        per_sequence = x.shape[-1] * (vocab if isinstance(vocab, int) else 0) * 4
        x = x[: max(1, min(4, PER_LAYER_LOGITS_BYTES // max(1, per_sequence)))]
    f_out = capture_outputs(ctx.folded, names, x)
    q_out = capture_outputs(qmodel, names, x)
    times = profile_layers(qmodel, names, primary) if primary is not None else None
    held = dict(qmodel.named_modules())
    out = []
    for name in names:
        a = layers[name]
        module = mods.get(name)
        weight_sqnr = None
        if module is not None:
            w = _float_weight(float_modules[name])
            weight_sqnr = _weight_sqnr(w, module.effective_weight())
        output_sqnr = None
        if name in f_out and name in q_out and f_out[name].shape == q_out[name].shape:
            output_sqnr = sqnr_db(f_out[name], q_out[name])
        out.append(
            {
                "name": name,
                "type": a.kind,
                "config": None if a.config is None else a.config.name,
                "weight_bits": None if a.config is None else a.config.weight_bits,
                "algorithm": _algorithm(a.config),
                "fallback": a.fallback,
                "kernel": module.kernel_name if module is not None else None,
                "simulated": bool(module.simulated) if module is not None else False,
                "weight_sqnr_db": finite_or_none(weight_sqnr),
                "output_sqnr_db": finite_or_none(output_sqnr),
                "latency_share": (times.spent[name] / times.total)
                if times and times.total
                else None,
                "bytes": module.qweight_view().nbytes if module is not None else None,
                **_byte_fields(name, held.get(name), times),
            }
        )
    return out


def _byte_fields(name: str, module: nn.Module | None, times: LayerTimes | None) -> dict[str, Any]:
    """A layer's per-call time, bytes and multiply-adds (see `per_layer`); none unprofiled."""
    if times is None or module is None or name not in times.call_ms:
        return {}
    return {
        "latency_ms": times.call_ms[name],
        "read_bytes": layer_bytes(module),
        "activation_bytes": times.activation_bytes.get(name),
        "macs": times.macs.get(name),
    }


def _weight_sqnr(w: torch.Tensor, q: torch.Tensor) -> float:
    """`sqnr_db` of a weight, in float64 row blocks beyond `SQNR_CHUNK_ELEMENTS` entries
    (`sqnr_db` holds three float64 copies: 3.3 GB for a 151,936 x 896 output layer)."""
    if w.numel() <= SQNR_CHUNK_ELEMENTS:
        return sqnr_db(w, q)
    signal = noise = 0.0
    for a, b in zip(
        w.split(SQNR_CHUNK_ELEMENTS // w.shape[1]),
        q.split(SQNR_CHUNK_ELEMENTS // w.shape[1]),
        strict=True,
    ):
        a64 = a.double()
        signal += float(a64.square().sum())
        noise += float((a64 - b.double()).square().sum())
    if noise == 0.0:
        return math.inf
    return -math.inf if signal == 0.0 else 10.0 * math.log10(signal / noise)


def _algorithm(config: QuantConfig | None) -> str | None:
    return None if config is None or config.is_float else config.algorithm


def algorithm_counts(report: QuantReport | None) -> dict[str, int]:
    """How many quantized layers each PTQ algorithm produced, as resolved (a layer the planned
    algorithm cannot apply to counts under its fallback's, e.g. a convolution under ``rtn``)."""
    counts: dict[str, int] = {}
    for assignment in report.layers.values() if report is not None else ():
        algorithm = _algorithm(assignment.config)
        if algorithm is not None:
            counts[algorithm] = counts.get(algorithm, 0) + 1
    return counts


def _kernel_counts(model: nn.Module) -> dict[str, int]:
    counts: dict[str, int] = {}
    for module in quant_modules(model).values():
        counts[module.kernel_name] = counts.get(module.kernel_name, 0) + 1
    return counts


def peak_rss_bytes() -> int:
    """The most resident memory this process has held so far: the peak of the process doing
    the work, whatever part of it a row caused. On Linux ``VmHWM`` of ``/proc/self/status``:
    ``ru_maxrss`` also keeps the parent's resident size from the fork a worker process started
    from (a child of a 1.8 GB test runner reported 1.8 GB after 0.4 GB of work); elsewhere
    ``ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _module_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def evaluate_entry(
    ctx: ModelContext,
    entry: PlanEntry,
    settings: RunSettings,
    env: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """One result row for ``entry`` (see the module docstring). ``progress(done, total)`` is
    called after each evaluation batch: the float reference's (the context's first row only),
    then the quantized model's."""
    ctx = ctx.budgeted(settings.eval_budget)
    env = env or environment()
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    qmodel = build_quantized(ctx, entry, settings, progress)
    seconds["qat" if entry.qat_steps else "quantize"] = time.perf_counter() - t0
    report = getattr(qmodel, "quant_report", None)
    if report is not None and "calibrate" in report.seconds:
        # statistics, algorithm and activation ranges; of them GPTQ/AWQ/SmoothQuant alone; and
        # what the input statistics this plan took from the sweep's cache cost the plan that
        # collected them
        for name in ("calibrate", "algorithm", "statistics_reused"):
            if name in report.seconds:
                seconds[name] = report.seconds[name]

    workloads = list(ctx.workloads.items())
    primary_name, primary_make = workloads[0]
    quantized = bool(quant_modules(qmodel))
    batches = ctx.compute_reference(progress).batches
    t0 = time.perf_counter()
    if quantized:  # real runtimes dispatch by shape: the kernels for the evaluation batches
        task, first = ctx.task_spec, batches[0][0]
        assert task is not None
        if ctx.task == "lm" and first.dim() == 2 and first.shape[1] >= MAX_TIMING_ROWS:
            # one window already reaches the rows a choice is timed on (at most
            # MAX_TIMING_ROWS): the same choices without a forward pass over the whole batch
            first = first[:1]
        select_kernels(qmodel, run=lambda: task.outputs(qmodel, first))
    seconds["kernel_choice"] = time.perf_counter() - t0

    target_layers: dict[str, Any] = {}
    target = None
    artifact_source = qmodel
    artifact = None
    if settings.target != "native":
        # another runtime: it builds its artifact from this quantized model and is evaluated
        # against the same float reference and timed on the same workloads, as a module
        from explorer.targets import TargetModule, get_target

        t0 = time.perf_counter()
        target = get_target(settings.target)
        calibration = ctx.calibration_inputs(settings.calibration_samples)
        artifact = target.build(qmodel, batches[0][0], calibration)
        target_layers = artifact.layers
        qmodel = TargetModule(artifact)
        quantized = False
        seconds["target_build"] = time.perf_counter() - t0
        # workloads the runtime cannot run (a KV cache ORT cannot export: no decode step)
        untimed = getattr(artifact, "untimed", {})
        workloads = [w for w in workloads if w[0] not in untimed]
        primary_name, primary_make = workloads[0]

    t0 = time.perf_counter()
    evaluation = ctx.reference.evaluate(
        qmodel, n_boot=settings.n_boot, seed=settings.seed, progress=progress
    )
    seconds["evaluate"] = time.perf_counter() - t0
    seconds["bootstrap"] = ctx.reference.bootstrap_seconds  # part of evaluate

    # Each workload is timed with the kernels chosen for its own row counts; the primary one
    # goes last, so the model is left with (and the row reports) the primary workload's kernels.
    t0 = time.perf_counter()
    timed, simulated = timing_model(qmodel)
    latency: dict[str, dict[str, Any]] = {}
    target_runs = getattr(artifact, "workloads", {})  # a runtime that times its own calls
    for name, make in reversed(workloads):
        run = target_runs[name] if name in target_runs else make(timed)
        if quant_modules(timed):
            select_kernels(timed, run=run)
        result = measure_callable(run, settings.warmup, settings.repeats)
        latency[name] = {
            **result.to_dict(),
            "kind": "simulated" if simulated else "measured",
            "kernels": _kernel_counts(timed),
        }
        audio_seconds = getattr(run, "audio_seconds", None)
        if audio_seconds:  # a transcription workload: its real-time factor (< 1: faster)
            latency[name]["rtf"] = result.median_ms / 1000.0 / audio_seconds
    latency = dict(reversed(latency.items()))
    if quantized and timed is not qmodel:
        select_kernels(qmodel, run=primary_make(qmodel))
    seconds["latency"] = time.perf_counter() - t0

    layers: list[dict[str, Any]] = []
    rate: dict[str, Any] | None = None
    if settings.per_layer and settings.target == "native":
        t0 = time.perf_counter()
        layers = per_layer(ctx, qmodel, primary_make(timed) if not simulated else None)
        if not simulated:  # the rate these layer times are set against (once per process)
            rate = read_rate().to_dict()
        seconds["per_layer"] = time.perf_counter() - t0
    elif settings.per_layer and hasattr(target, "layer_report"):
        # the runtime's own view: each layer's kernels and profiled time, next to the settings
        # and SQNRs of the quantized model it was built from (the weights are the same)
        t0 = time.perf_counter()
        runs = getattr(artifact, "workloads", {})
        run = runs.get(primary_name) or primary_make(qmodel)
        report = target.layer_report(artifact, run)  # type: ignore[union-attr]
        layers = per_layer(ctx, artifact_source, None)
        for lay in layers:
            lay.update(report.get(lay["name"], {}))
        seconds["per_layer"] = time.perf_counter() - t0

    size = size_report(artifact_source)
    report = getattr(artifact_source, "quant_report", None)
    kernels = {n: m.kernel_name for n, m in quant_modules(qmodel).items()}
    if settings.target != "native":
        kernels = {n: " / ".join(v.get("kernels", [])) for n, v in target_layers.items()}
    metrics = evaluation.to_dict()
    parent = entry.ptq_parent()
    return {
        "model": ctx.name,
        "task": ctx.task,
        "metric_name": ctx.metric,
        "label": entry.label,
        "kind": entry.kind,
        "config": entry.plan.to_dict(),
        **entry.flat,
        "qat_steps": entry.qat_steps,
        **_qat_fields(qat_settings(ctx, entry, settings)),
        "qat_data": None
        if entry.qat_steps is None
        else ("train" if ctx.train_split is not None else "calibration"),
        "parent": None if parent is None else entry_key(ctx, parent, settings, env),
        # a target's artifact may store the weights itself (a GGUF file's tensor bytes)
        "size_bytes": getattr(artifact, "size_bytes", size.total_bytes),
        "bits_per_weight": getattr(artifact, "bits_per_weight", size.bits_per_quantized_weight),
        "quantized_share": size.quantized_share,
        "latency_ms": latency[primary_name]["median_ms"],
        "latency_kind": "simulated" if simulated else "measured",
        "latency_workload": primary_name,
        "latency": latency,
        # workloads a target could not time, each with why (ORT: a cache it cannot export)
        "untimed": dict(getattr(artifact, "untimed", {})),
        "simulated_layers": simulated,
        "kernels": kernels,
        "fallbacks": dict(report.fallbacks) if report is not None else {},
        "algorithms": algorithm_counts(report),
        "metrics": metrics["metrics"],
        "metrics_ci": metrics["metrics_ci"],
        "n_samples": metrics["n_samples"],
        "tokens_evaluated": ctx.tokens_evaluated,
        "evaluation_data": None if ctx.data is None else ctx.data.description,
        "layers": layers,
        # this process's streaming read rate, which the layers' times are set against
        "read_rate": rate,
        "seconds": seconds,
        # memory: the process's peak so far, and the float and quantized models as held
        "peak_rss_bytes": peak_rss_bytes(),
        "model_bytes": {"float": _module_bytes(ctx.model), "quantized": _module_bytes(qmodel)},
        "env": env,
        # which code path of our C kernels ran, and which build (also in the row's key)
        "isa": (code_version()["native"] or {}).get("isa"),
        "native_build": (code_version()["native"] or {}).get("build"),
        "conv_isa": (code_version()["native"] or {}).get("conv_isa"),
        "target": settings.target.partition(":")[0],  # llamacpp:q4_k runs format q4_k
        **({"format": settings.target.partition(":")[2]} if ":" in settings.target else {}),
    }


# --- executors -----------------------------------------------------------------------------


class Executor(Protocol):
    """Runs entries and yields ``(entry, row or the exception it raised)`` as each finishes."""

    def run(
        self,
        source: ModelSource,
        settings: RunSettings,
        entries: Sequence[PlanEntry],
        cancelled: Callable[[], bool],
    ) -> Iterator[tuple[PlanEntry, dict[str, Any] | BaseException]]: ...


class LocalExecutor:
    """In this process, one entry at a time, so a timing never overlaps other work."""

    def __init__(self, ctx: ModelContext | None = None, progress: Progress | None = None) -> None:
        self.ctx = ctx
        self.progress = progress  # per evaluation batch, for a bar with the time left

    def run(
        self,
        source: ModelSource,
        settings: RunSettings,
        entries: Sequence[PlanEntry],
        cancelled: Callable[[], bool],
    ) -> Iterator[tuple[PlanEntry, dict[str, Any] | BaseException]]:
        ctx = self.ctx or open_context(source)
        env = environment()
        for entry in entries:
            if cancelled():
                return
            try:
                yield entry, evaluate_entry(ctx, entry, settings, env, self.progress)
            except ExplorerError as exc:
                yield entry, exc


# --- the sweep -----------------------------------------------------------------------------


class NothingEvaluatedError(ExplorerError):
    """Every configuration of a sweep failed, baselines included: there is no row to show."""


@dataclass
class SweepEvent:
    """``kind``: ``row`` (evaluated and stored), ``cached`` (found in the store), ``failed``
    (its error, nothing stored), ``skipped`` (cannot apply), ``cancelled``, ``done`` (its
    ``extra`` counts the entries ``evaluated``, ``cached`` and ``failed``)."""

    kind: str
    label: str = ""
    key: str = ""
    row: dict[str, Any] | None = None
    reason: str = ""
    done: int = 0
    total: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_sweep(
    ctx: ModelContext,
    entries: Sequence[PlanEntry],
    store: ResultStore,
    *,
    settings: RunSettings | None = None,
    executor: Executor | None = None,
    owner: str = "",
    sweep_id: str = "",
    cancelled: Callable[[], bool] = lambda: False,
) -> Iterator[SweepEvent]:
    """Evaluate the entries missing from ``store`` and yield an event per entry as it finishes
    (cached ones first). Rows are stored one transaction each as they finish."""
    settings = settings or RunSettings()
    executor = executor or LocalExecutor(ctx)
    store.check_writable()  # a read-only store must fail now, not after the first evaluation
    # the environment the rows are measured in (a Ray actor's, for the Ray executor)
    env = executor.environment() if hasattr(executor, "environment") else environment()
    total = len(entries)
    done = 0
    counts = {"evaluated": 0, "cached": 0, "failed": 0}
    todo: list[PlanEntry] = []
    keys: dict[int, str] = {}
    for entry in entries:
        parts = row_parts(ctx, entry, settings, env)
        key = row_key(parts)
        keys[id(entry)] = key
        cached = store.get(key)
        if cached is not None:
            done += 1
            counts["cached"] += 1
            yield SweepEvent(
                "cached", entry.label, key, {**cached, "key": key}, done=done, total=total
            )
        else:
            todo.append(entry)
    by_id = {id(e): e for e in todo}
    for entry, result in executor.run(ctx.source, settings, todo, cancelled):
        entry = by_id.get(id(entry), entry)
        key = keys.get(id(entry)) or entry_key(ctx, entry, settings, env)
        done += 1
        if isinstance(result, BaseException):
            counts["failed"] += 1
            yield SweepEvent("failed", entry.label, key, reason=str(result), done=done, total=total)
            continue
        store.put(
            key, result, parts=row_parts(ctx, entry, settings, env), owner=owner, sweep=sweep_id
        )
        counts["evaluated"] += 1
        yield SweepEvent("row", entry.label, key, {**result, "key": key}, done=done, total=total)
    if done < total:
        yield SweepEvent("cancelled", done=done, total=total)
    yield SweepEvent("done", done=done, total=total, extra=dict(counts))
