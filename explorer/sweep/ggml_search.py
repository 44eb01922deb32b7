"""Mixed precision over llama.cpp's ggml types at a bits-per-weight budget, as
``llama-quantize --target-bpw`` chooses them, verified by running the chosen mix in llama.cpp.

Every matrix that ships in the GGUF file (each block's projections, the token embedding and,
untied, the output head) gets one ggml type from the candidate formats (by default Q8_0, Q6_K,
Q5_K, Q4_K, Q3_K, Q2_K). A tensor whose rows are not a multiple of 256 cannot take a k-quant and
is written in llama.cpp's fallback (`explorer.quant.ggml.FALLBACK`: Q4_K -> Q5_0, ...), so its
candidates are the *written* types, each once. A type's cost is its bytes as stored, from the
block layout (`GgmlFormat.row_bytes`); the budget in bits per weight counts every shipped matrix
weight, so ``4.5`` allows ``4.5 / 8`` bytes per weight over all of them, block scales included.

Sensitivity is the damage of one tensor changed to one type, every other tensor float:

- ``measured``: KL divergence from the float model's next-token distribution, averaged over the
  tokens of a few calibration windows, with that tensor replaced by the weights ggml itself
  writes and dequantizes (`explorer.quant.ggml.round_trip`: the weights llama.cpp runs; the
  activations stay float here, while ggml's dot products round them to 8 bits, which the
  verification in llama.cpp includes);
- ``proxy`` (``auto`` takes it above `PROXY_LAYERS` tensors): the layer's output error energy
  ``sum_j E[x_j^2] ||W[:, j] - Q(W)[:, j]||^2`` from one float pass (the diagonal of GPTQ's
  Hessian; `explorer.sweep.sensitivity.input_energy`), and for the token embedding the squared
  error of each row weighted by how often its token occurs, the same quantity for a lookup.

Damage is assumed additive across tensors, and the choice is the exact multiple-choice knapsack
of `explorer.sweep.search.allocate` (least summed damage within the byte budget). The chosen mix
is then written as GGUF and run in llama.cpp (`explorer.targets.llamacpp`): its perplexity and KL
come from the runtime's logits on the evaluation windows, its bits per weight from the file's
tensor bytes, and the uniform types are run the same way for comparison.

Imports: `explorer.quant.ggml`, `explorer.export.gguf`, `explorer.targets`,
`explorer.sweep.search`, `explorer.sweep.sensitivity`, torch.
"""

from __future__ import annotations

import copy
import math
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from explorer.errors import ExplorerError
from explorer.export.gguf import GgufPlan, architecture, gguf_name
from explorer.quant import ggml
from explorer.quant.ggml import FORMATS, GgmlFormat, format_of
from explorer.sweep.search import SensitivityTable, allocate
from explorer.sweep.sensitivity import PROXY_LAYERS, input_energy, weighted_error

if TYPE_CHECKING:
    from explorer.sweep.context import ModelContext

DEFAULT_FORMATS = ("q8_0", "q6_k", "q5_k", "q4_k", "q3_k", "q2_k")
DEFAULT_WINDOWS = 8
"""Calibration windows the measured sensitivity runs (each tensor and type: one float pass)."""
WINDOWS_PER_PASS = 4
"""Windows per forward pass of the measured sensitivity (bounds the float logits held)."""
UNIFORM_CHOICES = ("all", "closest", "none")


class GgmlSearchError(ExplorerError, ValueError):
    """A bits-per-weight search cannot run: a bad budget or format list, an unsupported model."""


@dataclass(frozen=True)
class GgmlTensor:
    """A matrix that ships in the GGUF file: llama.cpp's name (``blk.0.attn_q.weight``), our
    module's name, and its shape as ggml quantizes it (rows, row length)."""

    name: str
    module: str
    rows: int
    row_length: int

    @property
    def weights(self) -> int:
        return self.rows * self.row_length

    def written(self, fmt: GgmlFormat) -> GgmlFormat:
        """The type llama.cpp writes when asked for ``fmt`` (a fallback for short rows)."""
        return ggml.resolve(fmt, (self.rows, self.row_length))

    def nbytes(self, fmt: GgmlFormat) -> int:
        return self.rows * self.written(fmt).row_bytes(self.row_length)


def ggml_tensors(model: nn.Module) -> list[GgmlTensor]:
    """The matrices of ``model`` (a Llama/Mistral/Qwen2 ``transformers`` model) as the GGUF
    writer ships them; a tied output head is the embedding and is not listed twice."""
    config = getattr(model, "config", None)
    if config is None:
        raise GgmlSearchError("a ggml search needs a Hugging Face model (it has no config)")
    architecture(config)  # other architectures: GgufError naming the supported ones
    tied = bool(getattr(config, "tie_word_embeddings", False))
    out = []
    for name, module in model.named_modules():
        tensor = gguf_name(name)
        if tensor is None or not isinstance(module, (nn.Linear, nn.Embedding)):
            continue
        if tensor == "output" and tied:
            continue
        rows, length = module.weight.shape
        out.append(GgmlTensor(f"{tensor}.weight", name, int(rows), int(length)))
    return out


def parse_formats(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """Candidate ggml types from ``q8_0,q4_k,...`` (None: `DEFAULT_FORMATS`), widest first."""
    names = text.split(",") if isinstance(text, str) else list(text or DEFAULT_FORMATS)
    formats = [format_of(n).name for n in names if n.strip()]
    if not formats:
        raise GgmlSearchError("--formats needs at least one ggml type, e.g. q8_0,q4_k,q2_k")
    floats = [f for f in formats if FORMATS[f].is_float]
    if floats:
        raise GgmlSearchError(
            f"the bpw search chooses among quantized ggml types; drop {', '.join(floats)}"
        )
    return tuple(sorted(dict.fromkeys(formats), key=lambda f: -FORMATS[f].bits))


def bits_per_weight(tensors: Sequence[GgmlTensor], types: dict[str, str]) -> float:
    """Bits per weight over ``tensors`` with ``types`` (asked; written after fallbacks)."""
    total = sum(t.nbytes(format_of(types[t.name])) for t in tensors)
    return total * 8 / sum(t.weights for t in tensors)


# --- sensitivity ---------------------------------------------------------------------------------


@dataclass
class GgmlSensitivity:
    """Per tensor and candidate type: the written type, its bytes and the damage."""

    tensors: list[GgmlTensor]
    formats: tuple[str, ...]
    mode: str  # measured (KL) or proxy
    table: SensitivityTable
    written: dict[str, dict[str, str]]  # tensor -> asked -> written
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "damage": "kl" if self.mode == "measured" else "proxy",
            "formats": list(self.formats),
            "tensors": {t.name: [t.rows, t.row_length] for t in self.tensors},
            "written": self.written,
            "table": self.table.to_dict(),
            "seconds": self.seconds,
        }


Damage = Callable[[GgmlTensor, nn.Module, torch.Tensor], float]


def _kl_damage(model: nn.Module, task: Any, windows: torch.Tensor) -> Damage:
    """Damage as KL(float || model with one tensor swapped), mean over the windows' tokens.
    ``model`` is a private copy: the swap writes into its weight and puts the float one back."""
    chunks = windows.split(WINDOWS_PER_PASS)
    with torch.inference_mode():
        ref = [task.outputs(model, c).float().log_softmax(-1) for c in chunks]  # (B, T, V)

    def damage(tensor: GgmlTensor, module: nn.Module, q: torch.Tensor) -> float:
        saved = module.weight.data
        module.weight.data = q
        try:
            total, count = 0.0, 0
            with torch.inference_mode():
                for chunk, p_log in zip(chunks, ref, strict=True):
                    q_log = task.outputs(model, chunk).float().log_softmax(-1)
                    kl = (p_log.exp() * (p_log - q_log)).sum(-1)  # (B, T)
                    total += float(kl.double().sum())
                    count += kl.numel()
        finally:
            module.weight.data = saved
        return max(0.0, total / count)

    return damage


def _proxy_damage(
    model: nn.Module, task: Any, windows: torch.Tensor, tensors: Sequence[GgmlTensor]
) -> Damage:
    """Damage as the output error energy (see the module docstring), from one float pass."""
    linear = [t.module for t in tensors if not t.name.startswith("token_embd.")]
    energy = input_energy(model, task, linear, [windows])
    counts = torch.bincount(windows.reshape(-1), minlength=1).double()
    frequency = counts / counts.sum()

    def damage(tensor: GgmlTensor, module: nn.Module, q: torch.Tensor) -> float:
        w = module.weight.detach().float()
        if isinstance(module, nn.Embedding):
            rows = (w - q).double().square().sum(-1)  # (vocab,)
            return float((rows[: len(frequency)] * frequency[: len(rows)]).sum())
        if tensor.module not in energy:
            raise GgmlSearchError(f"the calibration pass never reached {tensor.module}")
        return weighted_error(w, q, energy[tensor.module], module)

    return damage


def measure_ggml_sensitivity(
    model: nn.Module,
    task: Any,
    windows: torch.Tensor,
    formats: Sequence[str] = DEFAULT_FORMATS,
    *,
    mode: str = "auto",
    progress: Callable[[int, int, str], None] | None = None,
) -> GgmlSensitivity:
    """The sensitivity table of ``model``'s matrices over ``formats`` (see the module docstring);
    ``windows`` (N, T) token ids of calibration text. The model is not changed."""
    t0 = time.perf_counter()
    tensors = ggml_tensors(model)
    formats = parse_formats(formats)
    if mode == "auto":
        mode = "proxy" if len(tensors) > PROXY_LAYERS else "measured"
    if mode not in ("measured", "proxy"):
        raise GgmlSearchError(f"sensitivity mode must be auto, measured or proxy, not {mode!r}")
    work = copy.deepcopy(model).eval()
    modules = dict(work.named_modules())
    damage_of = (
        _kl_damage(work, task, windows)
        if mode == "measured"
        else _proxy_damage(work, task, windows, tensors)
    )
    damage, size, written = [], [], {}
    total = len(tensors) * len(formats)
    for i, tensor in enumerate(tensors):
        module = modules[tensor.module]
        w = module.weight.detach()
        row_damage: list[float | None] = []
        row_size: list[int | None] = []
        seen: set[str] = set()
        written[tensor.name] = {}
        for j, name in enumerate(formats):
            fmt = tensor.written(format_of(name))
            written[tensor.name][name] = fmt.name
            if fmt.name in seen:  # the same written type as an earlier column: one choice
                row_damage.append(None)
                row_size.append(None)
            else:
                seen.add(fmt.name)
                q = ggml.round_trip(w, fmt) if not fmt.is_float else w.half().to(w.dtype)
                row_damage.append(damage_of(tensor, module, q))
                row_size.append(tensor.nbytes(fmt))
            if progress is not None:
                progress(i * len(formats) + j + 1, total, f"{tensor.name} {name}")
        damage.append(row_damage)
        size.append(row_size)
    table = SensitivityTable(
        layers=tuple(t.name for t in tensors),
        settings=formats,
        damage=damage,
        size_bytes=size,
        metric="kl" if mode == "measured" else "proxy",
    )
    return GgmlSensitivity(tensors, formats, mode, table, written, time.perf_counter() - t0)


# --- the choice ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GgmlMix:
    """The chosen written type per tensor at a budget, as a `GgufPlan`, with its cost."""

    budget_bpw: float
    types: dict[str, str]
    plan: GgufPlan
    bits_per_weight: float
    size_bytes: int
    predicted_damage: float
    counts: dict[str, int] = field(default_factory=dict)


def plan_of(types: dict[str, str]) -> GgufPlan:
    """A `GgufPlan` giving each tensor ``types[name]``: the most common type of the block
    matrices as the default, ``--tensor-type`` lines (``blk\\.3\\.ffn_down=q6_k``) for the
    others, and the token embedding and output types by name."""
    blocks = {n: t for n, t in types.items() if n.startswith("blk.")}
    pool = list(blocks.values()) or list(types.values())
    default = max(dict.fromkeys(pool), key=pool.count)  # ties: the first seen
    overrides = tuple(
        (re.escape(n.removesuffix(".weight")), t) for n, t in blocks.items() if t != default
    )
    return GgufPlan(
        default=default,
        tensors=overrides,
        token_embedding=types.get("token_embd.weight"),
        output=types.get("output.weight"),
    )


def check_reachable(tensors: Sequence[GgmlTensor], formats: Sequence[str], budget: float) -> None:
    """Raise `GgmlSearchError` when even every tensor at its smallest type exceeds ``budget``
    bits per weight (before any sensitivity is measured)."""
    if not isinstance(budget, int | float) or not math.isfinite(budget) or budget <= 0:
        raise GgmlSearchError(f"--target-bpw must be a positive number, got {budget!r}")
    cheapest = sum(min(t.nbytes(format_of(f)) for f in formats) for t in tensors)
    n_weights = sum(t.weights for t in tensors)
    if cheapest * 8 > budget * n_weights:
        raise GgmlSearchError(
            f"no mix of {', '.join(formats)} fits {budget:g} bits per weight: the smallest is "
            f"{cheapest * 8 / n_weights:.4f} (every tensor at its smallest type, fallbacks for "
            "rows that are not a multiple of 256 included)"
        )


def choose(sensitivity: GgmlSensitivity, budget_bpw: float) -> GgmlMix:
    """The least-damage mix within ``budget_bpw`` bits per weight (over every shipped matrix)."""
    n_weights = sum(t.weights for t in sensitivity.tensors)
    check_reachable(sensitivity.tensors, sensitivity.formats, budget_bpw)
    allocation = allocate(sensitivity.table, max_size_bytes=int(budget_bpw * n_weights / 8))
    types = {
        t.name: sensitivity.written[t.name][allocation.choice[t.name]] for t in sensitivity.tensors
    }
    counts: dict[str, int] = {}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    return GgmlMix(
        budget_bpw=float(budget_bpw),
        types=types,
        plan=plan_of(types),
        bits_per_weight=allocation.size_bytes * 8 / n_weights,
        size_bytes=allocation.size_bytes,
        predicted_damage=allocation.damage,
        counts=counts,
    )


def uniform_bpw(tensors: Sequence[GgmlTensor], fmt: str) -> float:
    """Bits per weight of every tensor asked for ``fmt`` (fallbacks written where rows are
    short)."""
    return bits_per_weight(tensors, dict.fromkeys((t.name for t in tensors), fmt))


def closest_uniform(tensors: Sequence[GgmlTensor], formats: Sequence[str], bpw: float) -> str:
    """The uniform format whose bits per weight are nearest ``bpw`` (the smaller on ties)."""
    return min(formats, key=lambda f: (abs(uniform_bpw(tensors, f) - bpw), uniform_bpw(tensors, f)))


# --- verification in llama.cpp -------------------------------------------------------------------


def file_bits_per_weight(path: Any, names: Sequence[str]) -> tuple[float, int]:
    """(bits per weight, bytes) of the tensors ``names`` as stored in the GGUF file at ``path``."""
    from gguf import GGUFReader

    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    nbytes = sum(int(tensors[n].n_bytes) for n in names)
    weights = sum(int(tensors[n].n_elements) for n in names)
    return nbytes * 8 / weights, nbytes


def verify(
    ctx: ModelContext,
    plan: GgufPlan,
    *,
    threads: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    warmup: int = 3,
    repeats: int = 20,
    export_to: str | Path | None = None,
) -> dict[str, Any]:
    """Write ``plan`` as GGUF, run it in llama.cpp on ``ctx``'s evaluation windows and time its
    decode and prefill: the row fields of the llama.cpp target. ``export_to``: also write the
    target's recipe there (the measured ``model.gguf``, ``quantize.sh``, ``plan.json``; the row's
    ``files``); the temporary GGUF is removed either way."""
    from explorer.targets import TargetModule
    from explorer.targets.llamacpp import LlamaCppTarget, check_runtime

    check_runtime()
    target = LlamaCppTarget(plan=plan, threads=threads)
    t0 = time.perf_counter()
    reference = ctx.compute_reference()
    artifact = target.build(ctx.model, reference.batches[0][0])
    try:
        build_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        module = TargetModule(artifact)
        evaluation = reference.evaluate(module, n_boot=n_boot, seed=seed).to_dict()
        evaluate_seconds = time.perf_counter() - t0
        runs = list(artifact.workloads)  # type: ignore[attr-defined]
        times = target.time(artifact, [], warmup=warmup, repeats=repeats)
        report = artifact.report  # type: ignore[attr-defined]
        file_bpw, nbytes = file_bits_per_weight(artifact.payload, list(report.types))
        files = {} if export_to is None else target.export_recipe(artifact, export_to)
    finally:
        artifact.runtime.llm.close()  # type: ignore[attr-defined]
        shutil.rmtree(Path(artifact.payload).parent, ignore_errors=True)
    latency = {n: {**t.to_dict(), "kind": "measured"} for n, t in zip(runs, times, strict=True)}
    return {
        "model": ctx.name,
        "task": ctx.task,
        "metric_name": ctx.metric,
        "target": "llamacpp",
        "format": target.format,
        "config": plan.to_dict(),
        "tensor_types": dict(report.types),
        "fallbacks": report.fallbacks(),
        "bits_per_weight": report.bits_per_weight,
        "bits_per_weight_file": file_bpw,
        "size_bytes": nbytes,
        "metrics": evaluation["metrics"],
        "metrics_ci": evaluation["metrics_ci"],
        "n_samples": evaluation["n_samples"],
        "tokens_evaluated": ctx.tokens_evaluated,
        "latency_ms": latency[runs[0]]["median_ms"],
        "latency_kind": "measured",
        "latency_workload": runs[0],
        "latency": latency,
        "threads": target.threads,
        "llama_cpp_python": target.version(),
        "seconds": {"build": build_seconds, "evaluate": evaluate_seconds},
        "files": {k: str(v) for k, v in files.items()},
    }


@dataclass
class BpwOutcome:
    """What `search_bpw` found and measured: the sensitivity, one mix per budget, and the rows
    (mixed first, then uniform), each run in llama.cpp."""

    sensitivity: GgmlSensitivity
    mixes: list[GgmlMix]
    rows: list[dict[str, Any]]


def search_bpw(
    ctx: ModelContext,
    budgets: Sequence[float],
    formats: Sequence[str] = DEFAULT_FORMATS,
    *,
    mode: str = "auto",
    windows: int = DEFAULT_WINDOWS,
    uniform: str = "all",
    threads: int | None = None,
    eval_budget: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    warmup: int = 3,
    repeats: int = 20,
    progress: Callable[[int, int, str], None] | None = None,
) -> BpwOutcome:
    """Measure sensitivity on ``windows`` calibration windows, choose a mix per budget, and run
    each mix in llama.cpp, with the uniform formats (``uniform``: ``all`` of them, the
    ``closest`` in bits per weight to each mix, or ``none``) on the same evaluation windows
    (the first ``eval_budget`` tokens when given)."""
    if not budgets:
        raise GgmlSearchError("give at least one bits-per-weight budget (--target-bpw 4.5)")
    if uniform not in UNIFORM_CHOICES:
        raise GgmlSearchError(f"uniform must be one of {UNIFORM_CHOICES}, not {uniform!r}")
    if ctx.task != "lm":
        raise GgmlSearchError(f"the llama.cpp search needs a language model, not a {ctx.task}")
    ctx = ctx.budgeted(eval_budget)
    formats = parse_formats(formats)
    for budget in budgets:  # before the sensitivity is measured
        check_reachable(ggml_tensors(ctx.model), formats, budget)
    calibration = ctx.calibration_inputs(windows)
    sensitivity = measure_ggml_sensitivity(
        ctx.model, ctx.task_spec, calibration, formats, mode=mode, progress=progress
    )
    mixes = [choose(sensitivity, b) for b in budgets]
    options: dict[str, Any] = {"threads": threads, "n_boot": n_boot, "seed": seed}
    options |= {"warmup": warmup, "repeats": repeats}
    rows = []
    tensors = sensitivity.tensors
    closest = []
    for mix in mixes:
        row = verify(ctx, mix.plan, **options)
        near = closest_uniform(tensors, sensitivity.formats, mix.bits_per_weight)
        closest.append(near)
        row.update(
            label=f"mixed {mix.budget_bpw:g} bpw",
            kind="mixed",
            format="mixed",
            budget_bpw=mix.budget_bpw,
            predicted_damage=mix.predicted_damage,
            predicted_bits_per_weight=mix.bits_per_weight,
            type_counts=mix.counts,
            closest_uniform=near,
        )
        rows.append(row)
    chosen = {"all": sensitivity.formats, "closest": closest, "none": ()}[uniform]
    for fmt in dict.fromkeys(chosen):
        row = verify(ctx, GgufPlan(default=fmt), **options)
        row.update(label=fmt, kind="uniform", budget_bpw=None)
        rows.append(row)
    return BpwOutcome(sensitivity, mixes, rows)
