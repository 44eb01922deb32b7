"""What an export is: its file names, format version, metadata key and limits, and its error."""

from __future__ import annotations

from explorer.errors import ExplorerError
from explorer.quant.config import QuantConfig

EXPORT_VERSION = 1
PLAN_FILE = "plan.json"
WEIGHTS_FILE = "model.safetensors"
SNIPPET_FILE = "reapply.py"
README_FILE = "README.txt"
METADATA_KEY = "explorer_export"  # safetensors __metadata__ key holding the plan.json document
MODEL_REF_KEYS = ("model", "weights", "factory")  # keyword arguments of `load_model`
MAX_PLAN_BYTES = 64 * 1024**2


class ExportError(ExplorerError, ValueError):
    """An export cannot be written (target folder in the way, bad model reference, ...)."""


def config_label(config: QuantConfig | None) -> str:
    """A layer's config as messages name it (``fp32 (unquantized)`` for a float layer)."""
    return "fp32 (unquantized)" if config is None else config.name
