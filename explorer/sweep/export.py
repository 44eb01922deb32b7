"""Stable path of the export API: ``explorer.sweep.export`` re-exports `explorer.export`.

The code lives in `explorer.export` (below the sweep: it imports nothing from it); this path is
the one the README documents and users' scripts import (``from explorer.sweep.export import
load_export``), so it stays. New code may import either.
"""

from __future__ import annotations

from explorer.export.files import (
    EXPORT_VERSION,
    MAX_PLAN_BYTES,
    METADATA_KEY,
    MODEL_REF_KEYS,
    PLAN_FILE,
    README_FILE,
    SNIPPET_FILE,
    WEIGHTS_FILE,
    ExportError,
    config_label,
)
from explorer.export.load import (
    load_export,
    read_export_plan,
)
from explorer.export.write import (
    ExportResult,
    export_quantized,
    snippet,
)

__all__ = [
    "EXPORT_VERSION",
    "ExportError",
    "ExportResult",
    "MAX_PLAN_BYTES",
    "METADATA_KEY",
    "MODEL_REF_KEYS",
    "PLAN_FILE",
    "README_FILE",
    "SNIPPET_FILE",
    "WEIGHTS_FILE",
    "config_label",
    "export_quantized",
    "load_export",
    "read_export_plan",
    "snippet",
]
