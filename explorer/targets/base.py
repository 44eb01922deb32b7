"""A `Target` is where a quantized configuration runs: the explorer's own engine (``native``) or
another runtime (``onnxruntime``). The plan, the quantized codes and the float reference are the
same for every target; a target turns the quantized model into its own artifact, evaluates it on
the same batches (so the same metrics compare it with the same float reference) and times it.

Import direction: ``quant ← kernels ← nn ← models/tasks ← measure ← targets ← sweep``; a target
imports the quantized model's modules and the latency tools, never the sweep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from explorer.errors import ExplorerError
from explorer.measure.latency import LatencyResult, measure_callable, timing_model
from explorer.quant.config import QuantConfig


class TargetError(ExplorerError, ValueError):
    """A target cannot run a configuration (unsupported format, missing runtime)."""


@dataclass
class Artifact:
    """What a target built: ``runner`` maps one input batch to outputs; ``layers`` describes
    each quantized layer as the target runs it (e.g. the fused node kinds)."""

    target: str
    runner: Callable[[torch.Tensor], torch.Tensor]
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    payload: Any = None


class Target:
    """The interface every target implements (see the module docstring)."""

    name: str = ""

    def version(self) -> str:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """What goes into a row's key besides the version (threads, provider, optimisation)."""
        raise NotImplementedError

    def support(self, config: QuantConfig, module: nn.Module | None = None) -> str | None:
        """``None`` when this target runs ``config`` with real kernels, else the reason why not."""
        raise NotImplementedError

    def build(
        self,
        qmodel: nn.Module,
        example_input: torch.Tensor,
        calibration: Iterable[torch.Tensor] | None = None,
    ) -> Artifact:
        raise NotImplementedError

    def evaluate(self, artifact: Artifact, batches: Iterable[torch.Tensor]) -> list[torch.Tensor]:
        return [artifact.runner(b) for b in batches]

    def time(
        self,
        artifact: Artifact,
        workloads: Sequence[torch.Tensor],
        warmup: int = 3,
        repeats: int = 20,
    ) -> list[LatencyResult]:
        """Median latency per workload under the machine-wide timing lock."""
        return [
            measure_callable(lambda x=x: artifact.runner(x), warmup, repeats) for x in workloads
        ]

    def export(self, artifact: Artifact, path: str) -> None:
        raise NotImplementedError


class NativeTarget(Target):
    """Today's engine, thinly wrapped: the artifact is the quantized model itself, timed with its
    simulated layers replaced by their timing twins (as `measure_model_latency` does)."""

    name = "native"

    def version(self) -> str:
        return torch.__version__

    def settings(self) -> dict[str, Any]:
        return {"threads": torch.get_num_threads()}

    def support(self, config: QuantConfig, module: nn.Module | None = None) -> str | None:
        return None

    def build(
        self,
        qmodel: nn.Module,
        example_input: torch.Tensor,
        calibration: Iterable[torch.Tensor] | None = None,
    ) -> Artifact:
        timed, simulated = timing_model(qmodel)

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return qmodel(x)

        art = Artifact(self.name, run, payload=qmodel)
        art.layers = {n: {"simulated": True} for n in simulated}
        art.timed = timed  # type: ignore[attr-defined]
        return art

    def time(
        self,
        artifact: Artifact,
        workloads: Sequence[torch.Tensor],
        warmup: int = 3,
        repeats: int = 20,
    ) -> list[LatencyResult]:
        timed = artifact.timed  # type: ignore[attr-defined]
        return [measure_callable(lambda x=x: timed(x), warmup, repeats) for x in workloads]

    def export(self, artifact: Artifact, path: str) -> None:
        torch.save(artifact.payload.state_dict(), path)


def target_names() -> tuple[str, ...]:
    return ("native", "onnxruntime", "llamacpp")


def get_target(name: str, **options: Any) -> Target:
    """The target called ``name``; ``onnxruntime`` needs the ``onnx`` extra, ``llamacpp`` the
    ``llamacpp`` extra and takes its ggml format after a colon (``llamacpp:q4_k``)."""
    if name == "llamacpp" or name.startswith("llamacpp:"):
        from explorer.targets.llamacpp import LlamaCppTarget, check_runtime

        fmt = name.partition(":")[2] or options.pop("format", None)
        check_runtime()
        return LlamaCppTarget(format=fmt, **options)
    if name == "native":
        return NativeTarget()
    if name == "onnxruntime":
        try:
            from explorer.targets.onnxruntime import OnnxRuntimeTarget
        except ImportError as e:
            raise TargetError(
                f"target onnxruntime needs onnx and onnxruntime ({e.name} is missing): "
                "pip install -e '.[onnx]'"
            ) from None
        return OnnxRuntimeTarget(**options)
    raise TargetError(f"unknown target {name!r}; choose from {', '.join(target_names())}")


LLAMACPP_SWEEP_FORMATS = ("q8_0", "q6_k", "q4_k", "q4_0", "q3_k", "q2_k")
"""The llama.cpp formats the Sweep page offers (any ggml format runs from the command line)."""


def target_choices(model: nn.Module | None = None) -> dict[str, str | None]:
    """Every target a sweep of ``model`` could run on, each with None when it can run here or
    the reason it cannot (a missing extra; llama.cpp also needs a Llama-architecture language
    model). llama.cpp appears once per format of `LLAMACPP_SWEEP_FORMATS`."""
    out: dict[str, str | None] = {"native": None}
    try:
        get_target("onnxruntime")
        out["onnxruntime"] = None
    except TargetError as exc:
        out["onnxruntime"] = str(exc)
    try:
        get_target("llamacpp")
        reason = None
    except (TargetError, ExplorerError) as exc:
        reason = str(exc)
    config = getattr(model, "config", None)
    architectures = getattr(config, "architectures", None) or []
    if reason is None and not any(
        a in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM") for a in architectures
    ):
        reason = "llama.cpp runs Llama, Mistral and Qwen2 causal language models"
    for fmt in LLAMACPP_SWEEP_FORMATS:
        out[f"llamacpp:{fmt}"] = reason
    return out


class TargetModule(nn.Module):
    """An artifact as a module, so the float reference, the metrics and the workloads that call
    ``model(x)`` evaluate and time a target's artifact exactly as they do the native model."""

    def __init__(self, artifact: Artifact) -> None:
        super().__init__()
        self.artifact = artifact

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        # keyword calls too: the text tasks call model(input_ids=..., attention_mask=...)
        return self.artifact.runner(*args, **kwargs)


def describe(target: Target) -> dict[str, Any]:
    """What a row records (and keys on) about its target."""
    return {"name": target.name, "version": target.version(), "settings": target.settings()}
