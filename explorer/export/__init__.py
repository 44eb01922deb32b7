"""Export a chosen plan: the quantized model as it ships, plus what it takes to rebuild it.

An export is a folder of four files:

- ``plan.json`` — the plan, the model reference (``{"model": "digits-cnn"}``, a Hugging Face
  directory, or ``{"factory": ..., "weights": ...}``), the method (``ptq``/``qat``), each layer's
  resolved config, kernel and fallback, the stored size, and the torch and explorer versions;
- ``model.safetensors`` — exactly the tensors `explorer.measure.size.size_bytes` counts (packed
  codes, scales, zero points, activation qparams, everything left in float), with the plan.json
  document in the safetensors ``__metadata__`` so the one file describes itself;
- ``reapply.py`` — a runnable snippet that (a) loads the export and (b) applies the plan afresh;
- ``README.txt`` — a few lines saying the above.

Loading rebuilds the architecture from the float model (the file is data, never code; see
DESIGN.md): it resolves the stored plan on a copy, builds each quantized layer from placeholder
codes, and then takes every code, scale, zero point, bias and activation qparam from the file. So a
QAT export, whose trained codes differ from PTQ of the float weights, reloads bit for bit.

The package: `files` (names, version, limits, `ExportError`), `write` (`export_quantized`,
`snippet`) and `load` (`read_export_plan`, `load_export`). It imports ``explorer.nn``,
``explorer.kernels``, ``explorer.measure`` and ``explorer.models``, nothing from the sweep.
``explorer.sweep.export`` re-exports the same names and stays the documented, stable path.
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
