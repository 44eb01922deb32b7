"""Where a model comes from: ``--model`` (a built-in name or a local Hugging Face directory),
optionally ``--weights`` (the user's safetensors for a built-in architecture or a factory's), or
``--model-factory package.module:function`` (trusted local code that the operator names on the
command line; it returns an ``nn.Module`` whose weights then come from ``--weights``).

Untrusted bytes are only ever *data*: weights pass through `explorer.models.safe_load`.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from explorer.errors import ModelLoadError
from explorer.models.hf import DEFAULT_MAX_PARAMS, is_hf_directory, load_hf
from explorer.models.registry import BuiltinModel, builtin_models, get_builtin
from explorer.models.safe_load import DEFAULT_MAX_BYTES, load_into


@dataclass
class LoadedModel:
    """A float model in eval mode and where it came from.

    For a Hugging Face directory: ``path`` (the directory, where the tokenizer and config live),
    ``architecture`` (the transformers class), ``stored_dtype`` (of the weight files, e.g.
    ``bfloat16``; the model itself is float32) and ``warnings`` (e.g. weights initialised at
    random because the checkpoint lacks them), which the CLI and the app show."""

    model: nn.Module
    name: str
    task: str  # "classification" | "lm" | "unknown"
    builtin: BuiltinModel | None = None
    path: str | None = None
    architecture: str | None = None
    stored_dtype: str | None = None
    warnings: tuple[str, ...] = ()


def _factory(spec: str) -> nn.Module:
    module_name, sep, func_name = spec.partition(":")
    if not sep or not module_name or not func_name.isidentifier():
        raise ModelLoadError(
            f"--model-factory must look like package.module:function, got {spec!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f"cannot import factory module {module_name!r}: {exc}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ModelLoadError(f"{module_name} has no callable {func_name!r}")
    model = func()
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{spec} returned {type(model).__name__}, not a torch nn.Module")
    return model


def load_model(
    model: str | None = None,
    *,
    weights: str | os.PathLike[str] | None = None,
    factory: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_params: int = DEFAULT_MAX_PARAMS,
) -> LoadedModel:
    """Resolve the command line's model options to a float model in eval mode.

    ``max_bytes`` bounds weight files; ``max_params`` a Hugging Face model's parameter count,
    checked on the meta device before anything is allocated."""
    if factory is not None:
        if model is not None:
            raise ModelLoadError("give either --model or --model-factory, not both")
        if weights is None:
            raise ModelLoadError("--model-factory needs --weights (a safetensors file)")
        built = load_into(_factory(factory), weights, max_bytes=max_bytes)
        return LoadedModel(built.eval(), factory, "unknown")
    if model is None:
        raise ModelLoadError("no model given: pass --model NAME or --model-factory")
    if model in builtin_models():
        spec = get_builtin(model)
        if weights is None:
            return LoadedModel(spec.load(), spec.name, spec.task, spec)
        custom = load_into(spec.build(), weights, max_bytes=max_bytes).eval()
        return LoadedModel(custom, f"{spec.name}+{Path(weights).name}", spec.task, spec)
    if Path(model).exists():
        if weights is not None:
            raise ModelLoadError("--weights applies to built-in models and factories only")
        if not is_hf_directory(model):
            raise ModelLoadError(
                f"{model} is not a Hugging Face model directory (no config.json); "
                "for weights of a built-in architecture use --model NAME --weights FILE"
            )
        hf = load_hf(model, max_bytes=max_bytes, max_params=max_params)
        return LoadedModel(
            hf.model,
            model,
            "unknown",
            path=str(model),
            architecture=hf.architecture,
            stored_dtype=hf.stored_dtype,
            warnings=hf.warnings,
        )
    names = ", ".join(sorted(builtin_models()))
    raise ModelLoadError(
        f"--model {model!r} is neither a built-in model ({names}) nor an existing directory"
    )
