"""`quantize_model(model, plan)`: a new model with every planned layer quantized; the input model is
never touched (the app shares one cached float model between sessions).

The steps: copy → fold batch norms → resolve the plan per layer (explicit misfits are errors,
pattern/default misfits fall back by the plan's policy and are recorded) → for layers whose
config names an error-compensating algorithm (GPTQ, AWQ, SmoothQuant), collect statistics of
their float inputs on the calibration batches and run the algorithm → calibrate static
activation ranges (of the rescaled inputs, where an algorithm rescales them) → replace layers
with `QuantLinear` / `QuantConv2d` (or bf16 baselines) → optionally pick each layer's fastest
real kernel on an example input. The seconds spent calibrating (statistics, algorithms,
activation ranges) are on ``quant_report.seconds``. QAT's `convert` goes through
`quantize_layer`, the same function PTQ uses.

Every statistic is taken on the float model (batch norms folded), so it depends only on the
layer and the calibration data: the caller's ``act_cache`` (one per calibration set; a sweep's
`ModelContext` keeps one) holds both the static activation qparams and the input statistics, so
that a sweep collects each once.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from explorer.errors import QuantConfigError
from explorer.kernels.base import ActQParams
from explorer.nn.fold import fold_batch_norm
from explorer.nn.modules import (
    Bf16Conv2d,
    Bf16Linear,
    QuantConv2d,
    QuantLinear,
    QuantModule,
    conv_out_hw,
)
from explorer.quant.awq import awq_quantize
from explorer.quant.config import Plan, QuantConfig, why_not_applicable
from explorer.quant.gptq import gptq_quantize
from explorer.quant.observers import ActivationObserver, InputStatistics
from explorer.quant.primitives import choose_qparams
from explorer.quant.qtensor import QuantizedWeight, round_to_nearest
from explorer.quant.smoothquant import smoothquant_quantize

QUANTIZABLE = (nn.Linear, nn.Conv2d)
MIN_CALIBRATION_SAMPLES = 8


@dataclass
class LayerAssignment:
    name: str
    kind: str
    config: QuantConfig | None  # None: left in fp32
    source: str  # explicit | pattern:P | default
    fallback: str | None = None  # why the planned config was replaced, if it was
    algorithm_info: dict[str, float] = field(default_factory=dict)
    """What an error-compensating algorithm reports for the layer: ``error`` and ``rtn_error``
    (mean squared output error per calibration row, of this layer's weight and of
    round-to-nearest's, where the Gram matrix was collected), AWQ's ``alpha``, ..."""


@dataclass
class QuantReport:
    layers: dict[str, LayerAssignment] = field(default_factory=dict)
    folded: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    """Calibration cost: ``statistics`` (input statistics for the algorithms), ``algorithm``
    (GPTQ/AWQ/SmoothQuant), ``activations`` (static ranges) and their sum ``calibrate``; cached
    statistics cost nothing here, and ``statistics_reused`` is what collecting them cost the
    plan that did."""

    @property
    def fallbacks(self) -> dict[str, str]:
        return {n: a.fallback for n, a in self.layers.items() if a.fallback}


def is_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2): a linear layer whose weight is stored ``[in, out]``.
    Recognised by shape, so the engine does not import transformers."""
    return (
        type(module).__name__ == "Conv1D"
        and hasattr(module, "nf")
        and isinstance(getattr(module, "weight", None), torch.Tensor)
        and module.weight.dim() == 2
    )


def as_linear(module: nn.Module) -> nn.Module:
    """A ``Conv1D`` as the ``nn.Linear`` computing the same function; anything else unchanged."""
    if not is_conv1d(module):
        return module
    n_in, n_out = module.weight.shape
    linear = nn.Linear(n_in, n_out, bias=module.bias is not None)
    with torch.no_grad():
        linear.weight.copy_(module.weight.t())
        if module.bias is not None:
            linear.bias.copy_(module.bias)
    return linear


def in_features(module: nn.Module) -> int:
    if is_conv1d(module):
        return module.weight.shape[0]
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return module.in_channels // module.groups * kh * kw
    return module.in_features


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {
        n: m for n, m in model.named_modules() if n and (isinstance(m, QUANTIZABLE) or is_conv1d(m))
    }


def linear_parameter_count(model: nn.Module) -> int:
    """Weights of every layer `quantize_model` could quantize (linear, Conv1D, conv)."""
    return sum(m.weight.numel() for m in quantizable_layers(model).values())


def resolve_plan(model: nn.Module, plan: Plan) -> dict[str, LayerAssignment]:
    layers = quantizable_layers(model)
    missing = [name for name in plan.explicit_layers() if name not in layers]
    if missing:
        raise QuantConfigError(
            f"the plan names layer(s) {missing} that the model does not have; "
            f"quantizable layers: {list(layers)[:20]}{' …' if len(layers) > 20 else ''}"
        )
    out = {}
    for name, module in layers.items():
        config, source = plan.match(name)
        kind = type(module).__name__
        assignment = LayerAssignment(name, kind, config, source)
        if config is not None:
            k, conv = in_features(module), isinstance(module, nn.Conv2d)
            why = why_not_applicable(config, k, conv)
            if why is not None:
                message = f"{why} of layer `{name}`"
                if source == "explicit" or plan.fallback == "error":
                    raise QuantConfigError(message + f" (config from {source})")
                if plan.fallback == "channel":
                    assignment.config, instead = _nearest_applicable(config, k, conv)
                    assignment.fallback = f"{message}: {instead} instead"
                else:
                    assignment.config = None
                    assignment.fallback = f"{message}: kept in fp32"
        out[name] = assignment
    return out


def _nearest_applicable(config: QuantConfig, k: int, conv: bool) -> tuple[QuantConfig, str]:
    """The ``channel`` fallback: round-to-nearest where the algorithm does not apply, then
    per-channel where the group size does not divide the layer."""
    changes = []
    if why_not_applicable(config, k, conv) is not None and config.algorithm != "rtn":
        config = config.as_rtn()
        changes.append("round-to-nearest")
    if why_not_applicable(config, k, conv) is not None:
        config = config.with_(granularity="channel", group_size=None)
        changes.append("per-channel")
    return config, " and ".join(changes)


def _as_batches(data: torch.Tensor | Iterable[torch.Tensor] | None) -> list[torch.Tensor]:
    if data is None:
        return []
    if isinstance(data, torch.Tensor):
        return [data]
    return [b[0] if isinstance(b, tuple | list) else b for b in data]


def calibrate_activations(
    model: nn.Module,
    assignments: dict[str, LayerAssignment],
    calibration_data: torch.Tensor | Iterable[torch.Tensor] | None,
    cache: dict[tuple[Any, ...], Any] | None = None,
    input_scales: dict[str, torch.Tensor] | None = None,
) -> dict[str, ActQParams]:
    """Static per-tensor activation qparams for every layer whose config asks for them.

    The observers watch the float model, so a layer's qparams depend only on the layer, the
    calibration data and the activation settings: ``cache`` (keyed by layer and settings; the
    caller keeps one per calibration set) lets a sweep calibrate each combination once. A layer
    with an entry in ``input_scales`` (AWQ, SmoothQuant) is calibrated on its input times that
    scale, which is what its kernel quantizes."""
    input_scales = input_scales or {}
    wanted = {
        n: a.config
        for n, a in assignments.items()
        if a.config is not None and a.config.act_bits is not None and a.config.act_mode == "static"
    }

    def key(name: str, c: QuantConfig) -> tuple[Any, ...]:
        base = (name, c.calibration, c.percentile, c.act_bits, c.act_symmetric)
        scale = input_scales.get(name)
        return base if scale is None else (*base, "input_scale", _digest(scale))

    out: dict[str, ActQParams] = {}
    if cache is not None:
        out = {n: cache[key(n, c)] for n, c in wanted.items() if key(n, c) in cache}
        wanted = {n: c for n, c in wanted.items() if n not in out}
    if not wanted:
        return out
    batches = _as_batches(calibration_data)
    samples = sum(int(b.shape[0]) for b in batches)
    if samples < MIN_CALIBRATION_SAMPLES:
        raise QuantConfigError(
            f"static activation quantization needs at least {MIN_CALIBRATION_SAMPLES} calibration "
            f"samples, got {samples}; pass calibration data or use dynamic activations"
        )
    modules = dict(model.named_modules())
    observers = {
        n: ActivationObserver(c.calibration, c.percentile, c.act_bits, c.act_symmetric)
        for n, c in wanted.items()
    }

    def observe(name: str, x: torch.Tensor) -> None:
        scale = input_scales.get(name)
        observers[name].update(x if scale is None else x * scale)

    hooks = [
        modules[n].register_forward_pre_hook(lambda _m, args, n=n: observe(n, args[0]))
        for n in observers
    ]
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for h in hooks:
            h.remove()
    for name, obs in observers.items():
        lo, hi = obs.range()
        config = wanted[name]
        scale, zero = choose_qparams(
            torch.tensor([lo]), torch.tensor([hi]), config.act_bits, config.act_symmetric
        )
        out[name] = ActQParams(float(scale[0]), int(zero[0]))
        if cache is not None:
            cache[key(name, config)] = out[name]
    return out


def _digest(t: torch.Tensor) -> str:
    data = t.detach().float().contiguous().reshape(-1)
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()[:16]


def _needs_statistics(config: QuantConfig | None) -> bool:
    return config is not None and not config.is_float and config.algorithm != "rtn"


def collect_input_statistics(
    model: nn.Module,
    assignments: dict[str, LayerAssignment],
    calibration_data: torch.Tensor | Iterable[torch.Tensor] | None,
    cache: dict[tuple[Any, ...], Any] | None = None,
) -> dict[str, InputStatistics]:
    """`InputStatistics` of the inputs of every layer whose config names an algorithm, from one
    pass of the float ``model`` over the calibration batches (hooks on those layers). The Gram
    matrix is collected for GPTQ and AWQ, not for SmoothQuant (it reads channel maxima only).

    ``cache`` is the caller's, one per calibration set (see the module docstring); entries are
    keyed by layer, whether they hold the Gram matrix, and the shapes of the batches."""
    return _input_statistics(model, assignments, calibration_data, cache)[0]


def _input_statistics(
    model: nn.Module,
    assignments: dict[str, LayerAssignment],
    calibration_data: torch.Tensor | Iterable[torch.Tensor] | None,
    cache: dict[tuple[Any, ...], Any] | None,
) -> tuple[dict[str, InputStatistics], float]:
    """`collect_input_statistics`, and the seconds that the statistics taken from ``cache`` cost
    the plan that collected them: each cached entry keeps its share of its pass (the pass's
    seconds over the layers it served), so a plan can report its calibration cost as if it had
    run alone, whatever an earlier plan of the sweep collected."""
    wanted = {n: a.config for n, a in assignments.items() if _needs_statistics(a.config)}
    if not wanted:
        return {}, 0.0
    batches = _as_batches(calibration_data)
    samples = sum(int(b.shape[0]) for b in batches)
    if samples < MIN_CALIBRATION_SAMPLES:
        algorithms = sorted({c.algorithm for c in wanted.values()})
        raise QuantConfigError(
            f"algorithm {', '.join(algorithms)} needs at least {MIN_CALIBRATION_SAMPLES} "
            f"calibration samples, got {samples}; pass calibration data or use algorithm 'rtn'"
        )
    shapes = tuple(tuple(b.shape) for b in batches)

    def key(name: str, gram: bool) -> tuple[Any, ...]:
        return ("input_statistics", name, gram, shapes)

    out: dict[str, InputStatistics] = {}
    reused = 0.0
    need_gram = {n: c.algorithm in ("gptq", "awq") for n, c in wanted.items()}
    if cache is not None:
        for name, gram in need_gram.items():
            for k in (key(name, True), *(() if gram else (key(name, False),))):
                if k in cache:
                    out[name] = cache[k]
                    reused += cache.get(("seconds", *k), 0.0)
                    break
    todo = {n: g for n, g in need_gram.items() if n not in out}
    if not todo:
        return out, reused
    t0 = time.perf_counter()
    modules = dict(model.named_modules())
    stats = {n: InputStatistics.empty(in_features(modules[n]), gram=g) for n, g in todo.items()}
    hooks = [
        modules[n].register_forward_pre_hook(lambda _m, args, st=st: st.update(args[0]))
        for n, st in stats.items()
    ]
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for h in hooks:
            h.remove()
    share = (time.perf_counter() - t0) / len(stats)
    for name, st in stats.items():
        out[name] = st
        if cache is not None:
            cache[key(name, todo[name])] = st
            cache[("seconds", *key(name, todo[name]))] = share
    return out, reused


ALGORITHM_FUNCTIONS = {
    "gptq": gptq_quantize,
    "awq": awq_quantize,
    "smoothquant": smoothquant_quantize,
}


@dataclass
class AlgorithmResult:
    """A layer's weight as an algorithm stored it, its input scale (AWQ, SmoothQuant) and what
    the algorithm reports (`LayerAssignment.algorithm_info`)."""

    qweight: QuantizedWeight
    input_scale: torch.Tensor | None
    info: dict[str, float]


def run_algorithm(
    module: nn.Module, config: QuantConfig, stats: InputStatistics, name: str
) -> AlgorithmResult:
    """GPTQ, AWQ or SmoothQuant of one linear layer (or Conv1D) from its input statistics."""
    linear = as_linear(module)
    if isinstance(linear, nn.Conv2d):
        raise QuantConfigError(
            f"algorithm {config.algorithm} applies to linear layers only, not convolution `{name}`"
        )
    if stats.rows == 0:
        raise QuantConfigError(
            f"layer `{name}` saw no calibration inputs (the model's forward on the calibration "
            f"data never called it), so {config.algorithm} has nothing to work from; use "
            "algorithm 'rtn' for it"
        )
    w = linear.weight.detach().float()  # (N, K)
    qw, input_scale, info = ALGORITHM_FUNCTIONS[config.algorithm](
        w, stats, config, f"weight of layer `{name}`"
    )
    info = dict(info)
    if stats.gram is not None:
        effective = qw.dequantize()
        if input_scale is not None:
            effective = effective * input_scale[None, :]
        info["error"] = stats.output_error(w - effective)
        info["rtn_error"] = stats.output_error(w - round_to_nearest(w, config))
    return AlgorithmResult(qw, input_scale, info)


def quantize_layer(
    module: nn.Module,
    config: QuantConfig | None,
    name: str,
    act: ActQParams | None = None,
    qparams: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    prepared: AlgorithmResult | None = None,
    input_scale: torch.Tensor | None = None,
) -> nn.Module:
    """One float layer → its quantized (or bf16, or unchanged fp32) replacement.

    Round-to-nearest by default, or of the given ``qparams`` (QAT). ``prepared``: the weight an
    algorithm made (`run_algorithm`), required when the config names one. ``input_scale``: with
    ``qparams``, the input scale of a layer rebuilt from stored tensors (export)."""
    if not _replaced(config):
        return module
    assert config is not None
    module = as_linear(module)
    if config.is_float:
        return Bf16Conv2d(module) if isinstance(module, nn.Conv2d) else Bf16Linear(module)
    if prepared is not None:
        return QuantLinear(
            prepared.qweight, module.bias, config, act, input_scale=prepared.input_scale
        )
    if config.algorithm != "rtn" and qparams is None:
        raise QuantConfigError(
            f"layer `{name}`: algorithm {config.algorithm} needs calibration statistics; "
            "quantize the model with quantize_model(..., calibration_data=...)"
        )
    if isinstance(module, nn.Conv2d):
        return QuantConv2d.from_float(
            module, config, act, name=f"weight of layer `{name}`", qparams=qparams
        )
    return QuantLinear.from_float(
        module,
        config,
        act,
        name=f"weight of layer `{name}`",
        qparams=qparams,
        input_scale=input_scale,
    )


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _replaced(config: QuantConfig | None) -> bool:
    """Whether `quantize_layer` replaces a layer under ``config`` (fp32 keeps the float one)."""
    return config is not None and not (config.is_float and config.float_dtype == "fp32")


def _working_copy(
    model: nn.Module, plan: Plan, fold_bn: bool
) -> tuple[nn.Module, list[str], dict[str, LayerAssignment]]:
    """The copy `quantize_model` rewrites, batch norms folded, and its plan resolved.

    The float weights and biases of the layers about to be replaced are shared with ``model``
    rather than copied: they are read (statistics, quantization) and then dropped with the
    float layer, so copying them would only hold a second float copy of most of the model for
    the length of the quantization (0.5 B parameters: 1.8 GB). A parameter tied to one of them
    (a tied embedding) stays shared in the quantized model; nothing writes to its parameters.
    A model with batch norm is copied whole, since folding rewrites the convolutions' weights."""
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if fold_bn and has_bn:
        qmodel, folded = fold_batch_norm(copy.deepcopy(model).eval())
        return qmodel, folded, resolve_plan(qmodel, plan)
    assignments = resolve_plan(model, plan)
    memo: dict[int, Any] = {}
    for name, assignment in assignments.items():
        if _replaced(assignment.config):
            for tensor in model.get_submodule(name).parameters(recurse=False):
                memo[id(tensor)] = tensor  # deepcopy returns memo entries as they are
    return copy.deepcopy(model, memo).eval(), [], assignments


def quantize_model(
    model: nn.Module,
    plan: Plan,
    calibration_data: torch.Tensor | Iterable[torch.Tensor] | None = None,
    example_input: torch.Tensor | None = None,
    fold_bn: bool = True,
    act_cache: dict[tuple[Any, ...], Any] | None = None,
) -> nn.Module:
    """A quantized copy of ``model`` under ``plan`` (the input is not modified).

    ``calibration_data``: a tensor or iterable of input batches, needed for static activations
    and for the algorithms (GPTQ, AWQ, SmoothQuant). ``act_cache``: the caller's cache of
    calibration results for this calibration data (see the module docstring).
    ``example_input``: if given, each layer's kernel is chosen by timing the candidates on that
    layer's real input rows. The result carries ``quant_report`` (`QuantReport`).
    """
    qmodel, folded, assignments = _working_copy(model, plan, fold_bn)
    t0 = time.perf_counter()
    stats, reused = _input_statistics(qmodel, assignments, calibration_data, act_cache)
    t1 = time.perf_counter()
    prepared = {
        name: run_algorithm(qmodel.get_submodule(name), assignments[name].config, st, name)
        for name, st in stats.items()
    }
    t2 = time.perf_counter()
    input_scales = {n: r.input_scale for n, r in prepared.items() if r.input_scale is not None}
    acts = calibrate_activations(qmodel, assignments, calibration_data, act_cache, input_scales)
    t3 = time.perf_counter()
    for name, assignment in assignments.items():
        module = qmodel.get_submodule(name)
        new = quantize_layer(
            module, assignment.config, name, acts.get(name), prepared=prepared.get(name)
        )
        if name in prepared:
            assignment.algorithm_info = prepared[name].info
        if new is not module:
            set_submodule(qmodel, name, new)
    seconds = {"statistics": t1 - t0, "algorithm": t2 - t1, "activations": t3 - t2}
    seconds["calibrate"] = t3 - t0
    seconds["statistics_reused"] = reused  # not in "calibrate": spent by an earlier plan
    qmodel.quant_report = QuantReport(assignments, folded, seconds)
    if example_input is not None:
        select_kernels(qmodel, example_input)
    return qmodel


def quant_modules(model: nn.Module) -> dict[str, QuantModule]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantModule)}


def select_kernels(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    *,
    run: Callable[[], object] | None = None,
) -> dict[str, str]:
    """Time every candidate kernel of every quantized layer on its real input rows; keep the
    fastest. The rows come from one call of ``model(example_input)`` or of ``run()`` (a workload
    that drives the model itself, such as a KV-cache decode step). Returns ``{layer: kernel}``."""
    if (example_input is None) == (run is None):
        raise ValueError("select_kernels needs exactly one of example_input and run")
    rows: dict[str, int] = {}
    mods = quant_modules(model)

    def record(name: str, module: QuantModule, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0]
        if isinstance(module, QuantConv2d):
            ho, wo = conv_out_hw(*x.shape[-2:], module.conv)
            rows[name] = x.shape[0] * ho * wo
        else:
            rows[name] = x.numel() // x.shape[-1]

    hooks = [
        m.register_forward_pre_hook(lambda mod, args, n=n: record(n, mod, args))
        for n, m in mods.items()
    ]
    try:
        with torch.no_grad():
            if run is not None:
                run()
            else:
                model(example_input)
    finally:
        for h in hooks:
            h.remove()
    return {n: m.select_kernel(rows.get(n, 1)) for n, m in mods.items()}
