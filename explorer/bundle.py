"""What the Export page offers for one result row, as bytes ready to download.

A row of the results store carries its plan (``config``), its QAT budget and the kernels each layer
ran on. `export_bundle` rebuilds that quantized model the way the sweep built it
(`explorer.sweep.runner.build_quantized`: PTQ, or QAT from the PTQ point for the row's step budget),
puts each layer back on the kernel the row measured, writes it with
`explorer.export.export_quantized` and returns the files: ``plan.json``,
``model.safetensors`` (reloads with `explorer.sweep.export.load_export` to identical outputs),
``reapply.py`` and ``README.txt``. `plan_document` is the plan alone, in the form
``explorer export --plan`` reads (a sweep row's ``config`` with its QAT budget).

Imports: `explorer.quant`, `explorer.nn`, `explorer.sweep`.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from explorer.errors import ExplorerError
from explorer.export import (
    PLAN_FILE,
    README_FILE,
    SNIPPET_FILE,
    WEIGHTS_FILE,
    export_quantized,
    snippet,
)
from explorer.nn.convert import quant_modules
from explorer.quant.config import Plan
from explorer.sweep.context import ModelContext
from explorer.sweep.runner import RunSettings, build_quantized
from explorer.sweep.space import PlanEntry, entry_for_plan

BUNDLE_FILES = (PLAN_FILE, WEIGHTS_FILE, SNIPPET_FILE, README_FILE)


class BundleError(ExplorerError, ValueError):
    """A row cannot be exported (no plan in it, a plan this model cannot take, ...)."""


def row_entry(row: Mapping[str, Any]) -> PlanEntry:
    """The `PlanEntry` a stored row was evaluated from (its plan and QAT budget)."""
    config = row.get("config")
    if not isinstance(config, dict):
        raise BundleError("this row has no plan (`config`) to export")
    return entry_for_plan(
        Plan.from_dict(config), qat_steps=row.get("qat_steps"), qat_lr=row.get("qat_lr")
    )


def model_ref(ctx: ModelContext) -> dict[str, str]:
    """How the export names its model: as the command line would, without the data."""
    return {k: v for k, v in ctx.source.to_dict().items() if k != "data"}


def plan_document(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row's plan with what it takes to rebuild it (``explorer export --plan`` reads it)."""
    entry = row_entry(row)
    return {
        "config": entry.plan.to_dict(),
        "qat_steps": entry.qat_steps,
        "qat_lr": entry.qat_lr,
        "label": row.get("label", entry.label),
        "model": row.get("model"),
    }


def plan_json(row: Mapping[str, Any]) -> bytes:
    return (json.dumps(plan_document(row), indent=2, sort_keys=True) + "\n").encode()


def row_snippet(ctx: ModelContext, row: Mapping[str, Any]) -> str:
    """Python that loads the export from the folder it sits in and reapplies the plan."""
    entry = row_entry(row)
    return snippet(entry.plan, model_ref(ctx), None, method=entry.method)


def use_row_kernels(model: nn.Module, kernels: Mapping[str, str]) -> dict[str, str]:
    """Put each quantized layer on the kernel the row measured, where this machine has it.
    Returns ``{layer: kernel}`` as set (a layer keeps its default if the row's is unavailable)."""
    out = {}
    for name, module in quant_modules(model).items():
        wanted = kernels.get(name)
        if wanted and wanted != module.kernel_name:
            try:
                module.use_kernel(wanted)
            except (KeyError, ValueError):
                pass
        out[name] = module.kernel_name
    return out


def build_row_model(
    ctx: ModelContext, row: Mapping[str, Any], settings: RunSettings | None = None
) -> nn.Module:
    """The quantized model of ``row``, on the kernels the row measured."""
    settings = settings or RunSettings(qat_batch=row.get("qat_batch"))
    quantized = build_quantized(ctx, row_entry(row), settings)
    use_row_kernels(quantized, row.get("kernels") or {})
    return quantized


def export_bundle(
    ctx: ModelContext,
    row: Mapping[str, Any],
    folder: str | Path,
    settings: RunSettings | None = None,
) -> dict[str, bytes]:
    """Export ``row``'s quantized model into ``folder`` (replacing an earlier export there) and
    return its files by name: ``plan.json``, ``model.safetensors``, ``reapply.py``,
    ``README.txt``."""
    entry = row_entry(row)
    quantized = build_row_model(ctx, row, settings)
    result = export_quantized(
        quantized,
        entry.plan,
        folder,
        model_ref=model_ref(ctx),
        method=entry.method,
        overwrite=True,
    )
    return {name: (result.folder / name).read_bytes() for name in BUNDLE_FILES}


def target_files(
    ctx: ModelContext,
    quantized: nn.Module,
    target_name: str,
    folder: str | Path,
    calibration_samples: int = RunSettings.calibration_samples,
) -> dict[str, Path]:
    """Build ``quantized`` in the target ``target_name`` as the sweep does (the first evaluation
    batch as the example input, the same calibration inputs) and write the target's recipe into
    ``folder`` (ONNX Runtime: ``model.onnx`` and ``run_onnx.py``); empty for ``native`` or a
    target without a recipe."""
    from explorer.targets import get_target

    if target_name == "native":
        return {}
    target = get_target(target_name)
    if not hasattr(target, "export_recipe"):
        return {}
    example = ctx.eval_batches()[0][0]
    calibration = ctx.calibration_inputs(calibration_samples)
    artifact = target.build(quantized, example, calibration)
    artifact.task = ctx.task_spec  # type: ignore[attr-defined]  # an encoder's script pools as it
    return target.export_recipe(artifact, folder)


def target_bundle(
    ctx: ModelContext,
    row: Mapping[str, Any],
    folder: str | Path,
    settings: RunSettings | None = None,
) -> dict[str, bytes]:
    """`target_files` of a row measured in another target than ``native``, by file name."""
    name = row.get("target") or "native"
    if name == "native":
        return {}
    if row.get("format"):
        name = f"{name}:{row['format']}"
    settings = settings or RunSettings(qat_batch=row.get("qat_batch"))
    quantized = build_row_model(ctx, row, settings)
    files = target_files(ctx, quantized, name, folder, settings.calibration_samples)
    return {path.name: path.read_bytes() for path in files.values()}


def zip_bundle(files: Mapping[str, bytes], folder: str = "export") -> bytes:
    """The bundle as one zip holding ``folder/<file>`` (unzips to a folder `load_export` reads)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(f"{folder}/{name}", data)
    return buffer.getvalue()
