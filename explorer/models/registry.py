"""The built-in model registry: each model ships its weights, data splits and card in
``assets/<name>/`` and is reproduced by ``explorer train <name>``.

A built-in model module (``explorer/models/digits.py`` and friends) defines one `BuiltinModel`:
- ``build()`` — the architecture, randomly initialised (weights come from the asset file);
- ``load_split(split)`` — ``(inputs, targets)`` tensors for ``train``, ``calibration``, ``eval``
  (disjoint; targets are labels for classifiers, next tokens for language models);
- ``train(out_dir, seed)`` — trains from scratch and writes ``model.safetensors`` (and the data
  file, if the model's data is generated) into ``out_dir``; returns the float metric;
- ``workloads()`` — named latency workloads: each maps a model to a zero-argument callable that
  runs one inference exactly as the user would (one image, a batch of 64, one decode step with a
  KV cache of 128 tokens, ...).

Their names, the default and the module of each are listed, torch-free, in
`explorer.models.catalog`.

Assets are read only from the repository's ``assets/`` folder (or ``$EXPLORER_ASSETS``); nothing
is downloaded at run time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from explorer.errors import ModelLoadError
from explorer.models.catalog import BUILTIN_MODULES
from explorer.nn.qat import DEFAULT_QAT_BATCH, DEFAULT_QAT_LR

ASSETS = Path(os.environ.get("EXPLORER_ASSETS", Path(__file__).resolve().parents[2] / "assets"))
SPLITS = ("train", "calibration", "eval")

Workload = Callable[[nn.Module], Callable[[], Any]]


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    task: str  # "classification" | "lm"
    description: str
    build: Callable[[], nn.Module]
    load_split: Callable[[str], tuple[torch.Tensor, torch.Tensor]]
    train: Callable[[Path, int], dict[str, float]]
    workloads: Callable[[], dict[str, Workload]]
    metric: str = "accuracy"  # or "perplexity"
    default: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # QAT fine-tuning defaults (peak rate of `qat_lr_at`'s schedule, samples per step); a sweep
    # or run setting that names its own value overrides them.
    qat_lr: float = DEFAULT_QAT_LR
    qat_batch: int = DEFAULT_QAT_BATCH
    # A model shipped as a Hugging Face directory loads through its own loader (the safe HF
    # loader) instead of ``build()`` + ``model.safetensors``.
    loader: Callable[[], nn.Module] | None = None

    @property
    def asset_dir(self) -> Path:
        return ASSETS / self.name

    @property
    def weights_path(self) -> Path:
        return self.asset_dir / "model.safetensors"

    def card(self) -> dict[str, Any]:
        """``assets/<name>/card.json``: float metric and PTQ metrics, written by training."""
        path = self.asset_dir / "card.json"
        if not path.exists():
            raise ModelLoadError(f"built-in model {self.name!r} has no card at {path}")
        return json.loads(path.read_text())

    def load(self) -> nn.Module:
        """The float model with its shipped weights, in eval mode."""
        from explorer.models.safe_load import load_into

        if self.loader is not None:
            return self.loader().eval()
        if not self.weights_path.exists():
            raise ModelLoadError(
                f"weights of built-in model {self.name!r} are missing at {self.weights_path}; "
                f"run `explorer train {self.name}`"
            )
        return load_into(self.build(), self.weights_path).eval()

    def params(self) -> int:
        """The parameter count: ``extra["params"]`` when the model states it (a model whose
        build needs an optional extra, or a large one), else counted on a fresh build."""
        if "params" in self.extra:
            return int(self.extra["params"])
        return sum(p.numel() for p in self.build().parameters())


_REGISTRY: dict[str, BuiltinModel] = {}


def register(model: BuiltinModel) -> BuiltinModel:
    if model.name in _REGISTRY:
        raise ValueError(f"built-in model {model.name!r} registered twice")
    _REGISTRY[model.name] = model
    return model


def _load_builtins() -> None:
    # Each module registers its model on import; imported lazily so that `import explorer` stays
    # light and a broken model module names itself in the error.
    import importlib

    for module in BUILTIN_MODULES.values():
        importlib.import_module(module)


def builtin_models() -> dict[str, BuiltinModel]:
    """The built-in models in the catalog's order (default first), whichever module was
    imported first; a model registered outside the catalog comes after them."""
    _load_builtins()
    order = {name: i for i, name in enumerate(BUILTIN_MODULES)}
    names = sorted(_REGISTRY, key=lambda name: order.get(name, len(order)))
    return {name: _REGISTRY[name] for name in names}


def get_builtin(name: str) -> BuiltinModel:
    models = builtin_models()
    if name not in models:
        raise ModelLoadError(
            f"unknown built-in model {name!r}; built-in models: {', '.join(sorted(models))}"
        )
    return models[name]


def default_model() -> BuiltinModel:
    models = builtin_models()
    for model in models.values():
        if model.default:
            return model
    raise ModelLoadError("no default built-in model is registered")
