"""Models by name, without loading any: the built-in models' names (and which one is the
default) and `ModelSource`, the plain-data description of where a model comes from.

Nothing here imports torch. The app draws its model picker from these names before torch is
imported (a first page interactive within seconds of ``streamlit run``), and a worker process
receives its `ModelSource` as plain JSON. `explorer.models.registry` imports the modules named
here to build the models themselves; ``tests/models/test_catalog.py`` keeps the two in step.

Imports: nothing from `explorer` (and no torch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

BUILTIN_MODULES: dict[str, str] = {
    "digits-cnn": "explorer.models.digits",
    "mobile-cnn": "explorer.models.mobile",
    "tiny-lm": "explorer.models.tinylm",
    "whisper-tiny-en": "explorer.models.whisper",
}
"""Each built-in model's name and the module that registers it, in the registry's order."""

BUILTIN_NAMES: tuple[str, ...] = tuple(BUILTIN_MODULES)
DEFAULT_MODEL = "mobile-cnn"
"""The built-in model a new run starts with (its `BuiltinModel` says ``default=True``): the one
whose default sweep (`explorer.sweep.default`) shows the bit-width cliff, per-tensor against
per-channel scales and a QAT recovery with intervals that separate them (2,000 evaluation images
against digits-cnn's 540)."""


@dataclass(frozen=True)
class ModelSource:
    """How to load the model: the command line's ``--model``/``--weights``/``--model-factory``,
    ``--data`` and ``--task``. Plain data (JSON round trip), so another process can load the same
    model. ``task`` (``lm``, ``embedding``, ``classification``, ``fidelity``) overrides the task
    recognised from a Hugging Face directory's architecture; None recognises it."""

    model: str | None = None
    weights: str | None = None
    factory: str | None = None
    data: str | None = None
    task: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSource:
        return cls(**data)
