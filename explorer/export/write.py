"""Writing an export folder: plan.json, model.safetensors (with the plan in its metadata),
the reapply snippet and a README; written in a temporary folder and moved into place."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import explorer
from explorer.errors import QuantConfigError
from explorer.export.files import (
    EXPORT_VERSION,
    METADATA_KEY,
    MODEL_REF_KEYS,
    PLAN_FILE,
    README_FILE,
    SNIPPET_FILE,
    WEIGHTS_FILE,
    ExportError,
    config_label,
)
from explorer.measure.size import export_safetensors, size_bytes
from explorer.models.registry import builtin_models
from explorer.nn.convert import (
    QuantReport,
)
from explorer.nn.modules import Bf16Conv2d, Bf16Linear, QuantModule
from explorer.quant.config import METHODS, Plan, QuantConfig


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    plan_path: Path
    weights_path: Path
    snippet_path: Path
    size_bytes: int


# --- writing -----------------------------------------------------------------------------------


def export_quantized(
    quantized: nn.Module,
    plan: Plan,
    folder: str | Path,
    *,
    model_ref: Mapping[str, Any],
    method: str = "ptq",
    overwrite: bool = False,
) -> ExportResult:
    """Write ``quantized`` (from `quantize_model` or `qat.convert` under ``plan``) to ``folder``.

    Refuses a non-empty existing folder unless ``overwrite``, and even then only one that is empty
    or holds an earlier export (a ``plan.json``), so a typo cannot wipe an unrelated directory.
    Everything is written to a temporary folder next to the target and renamed into place, so a
    failed export leaves nothing half-written.
    """
    folder = Path(folder)
    ref = _checked_model_ref(model_ref)
    if method not in METHODS:
        raise ExportError(f"method must be one of {list(METHODS)}, got {method!r}")
    _check_target(folder, overwrite)
    layers = _layer_records(quantized, plan)
    stored = size_bytes(quantized)
    doc = {
        "version": EXPORT_VERSION,
        "plan": plan.to_dict(),
        "model": ref,
        "method": method,
        "layers": layers,
        "folded_batch_norms": list(quantized.quant_report.folded),
        "size_bytes": stored,
        "torch": torch.__version__,
        "explorer": _explorer_version(),
    }
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        (tmp / PLAN_FILE).write_text(text)
        export_safetensors(quantized, tmp / WEIGHTS_FILE)
        _add_metadata(tmp / WEIGHTS_FILE, {METADATA_KEY: text})
        (tmp / SNIPPET_FILE).write_text(snippet(plan, ref, None, method=method))
        (tmp / README_FILE).write_text(_readme(plan, ref, method, stored))
        _move_into_place(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(
        folder=folder,
        plan_path=folder / PLAN_FILE,
        weights_path=folder / WEIGHTS_FILE,
        snippet_path=folder / SNIPPET_FILE,
        size_bytes=stored,
    )


def _checked_model_ref(model_ref: Mapping[str, Any]) -> dict[str, str]:
    if not isinstance(model_ref, Mapping):
        raise ExportError(
            f"model_ref must be a mapping such as {{'model': NAME}}, got {model_ref!r}"
        )
    unknown = sorted(set(model_ref) - set(MODEL_REF_KEYS))
    if unknown:
        raise ExportError(f"model_ref has unknown key(s) {unknown}; known: {list(MODEL_REF_KEYS)}")
    if "model" not in model_ref and "factory" not in model_ref:
        raise ExportError("model_ref needs 'model' (a built-in name or directory) or 'factory'")
    bad = [k for k, v in model_ref.items() if not isinstance(v, str | os.PathLike)]
    if bad:
        raise ExportError(f"model_ref values must be strings or paths; not so for {bad}")
    return {k: os.fspath(v) for k, v in model_ref.items()}


def _check_target(folder: Path, overwrite: bool) -> None:
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ExportError(f"{folder} exists and is not a folder; choose another export folder")
    entries = list(folder.iterdir())
    if not entries:
        return
    if not overwrite:
        raise ExportError(
            f"{folder} already exists and is not empty; choose another folder or pass overwrite "
            "(--overwrite) to replace an earlier export"
        )
    if not (folder / PLAN_FILE).is_file():
        raise ExportError(
            f"{folder} is not empty and holds no {PLAN_FILE}, so it is not an earlier export; "
            "refusing to overwrite it"
        )


def _move_into_place(tmp: Path, folder: Path) -> None:
    old = None
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
        os.rename(folder, old / "export")
    try:
        os.rename(tmp, folder)
    except BaseException:
        if old is not None:
            os.rename(old / "export", folder)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _layer_records(quantized: nn.Module, plan: Plan) -> dict[str, dict[str, Any]]:
    """Each layer's resolved config, kernel and fallback, after checking that ``quantized`` really
    was made with ``plan`` (plan.json must describe the tensors it ships with)."""
    report = getattr(quantized, "quant_report", None)
    if not isinstance(report, QuantReport):
        raise QuantConfigError(
            "the model carries no quant_report; export a model returned by quantize_model or "
            "qat.convert"
        )
    records = {}
    for name, a in report.layers.items():
        planned, _ = plan.match(name)
        if a.fallback is None and planned != a.config:
            raise QuantConfigError(
                f"layer `{name}` was quantized as {config_label(a.config)} but the plan gives "
                f"{config_label(planned)}; export the plan the model was quantized with"
            )
        try:
            module = quantized.get_submodule(name)
        except AttributeError:
            raise QuantConfigError(f"the model has no layer `{name}` named in its report") from None
        records[name] = {
            "config": None if a.config is None else a.config.to_dict(),
            "kernel": _kernel_of(name, module, a.config),
            "fallback": a.fallback,
        }
    return records


def _kernel_of(name: str, module: nn.Module, config: QuantConfig | None) -> str:
    if isinstance(module, QuantModule):
        if config is None or module.config != config:
            raise QuantConfigError(
                f"layer `{name}` is stored as {module.config.name} but its report says "
                f"{config_label(config)}"
            )
        return module.kernel_name
    if isinstance(module, Bf16Linear | Bf16Conv2d):
        expected = config is not None and config.is_float and config.float_dtype == "bf16"
        kernel = "bf16"
    else:
        expected = config is None or (config.is_float and config.float_dtype == "fp32")
        kernel = "fp32"
    if not expected:
        raise QuantConfigError(
            f"layer `{name}` is a {type(module).__name__} but its report says "
            f"{config_label(config)}"
        )
    return kernel


def _explorer_version() -> str | None:
    return getattr(explorer, "__version__", None)


def _add_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Put ``metadata`` into a safetensors file's ``__metadata__`` without touching its tensors.

    The header is ``u64 length + JSON``; tensor offsets count from the end of the header, so a new
    header (space-padded to 8 bytes, as safetensors writes it) in front of the same data bytes is
    the same file plus metadata.
    """
    with path.open("rb") as src:
        (length,) = struct.unpack("<Q", src.read(8))
        header = json.loads(src.read(length))
        header["__metadata__"] = {**header.get("__metadata__", {}), **metadata}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        out_path = path.with_name(path.name + ".tmp")
        with out_path.open("wb") as out:
            out.write(struct.pack("<Q", len(raw)))
            out.write(raw)
            shutil.copyfileobj(src, out)
    os.replace(out_path, path)


# --- the reapply snippet -----------------------------------------------------------------------


def snippet(
    plan: Plan,
    model_ref: Mapping[str, Any],
    folder: str | None,
    *,
    method: str = "ptq",
) -> str:
    """Python source that (a) loads the export and (b) applies ``plan`` afresh to the float model.

    ``folder`` is the export folder as the snippet should name it; None makes the snippet find the
    export in its own folder (``reapply.py`` inside a folder that may be moved or shipped).
    """
    ref = _checked_model_ref(model_ref)
    if folder is None:
        export_line = "EXPORT = Path(__file__).resolve().parent  # the folder this file is in"
    else:
        export_line = f"EXPORT = Path({folder!r})"
    plan_lines = json.dumps(plan.to_dict(), indent=2, sort_keys=True).splitlines()
    plan_literal = "\n".join(f"    {line + chr(10)!r}" for line in plan_lines)
    static = _needs_calibration(plan)
    builtin = _builtin_name(ref)
    if not static:
        part_b = _reapply_call("", calibrated=False)
    elif builtin is not None:
        part_b = (
            "# calibration (static activation ranges, GPTQ/AWQ/SmoothQuant statistics) runs\n"
            "# afresh on the model's calibration split\n"
            f'calibration_data = get_builtin({builtin!r}).load_split("calibration")[0]\n'
            + _reapply_call("", calibrated=True)
        )
    else:
        part_b = (
            "# calibration (static activation ranges, GPTQ/AWQ/SmoothQuant) needs real inputs:\n"
            "# set this to a batch of them\n"
            "calibration_data = None\n"
            "reapplied = None\n"
            "if calibration_data is not None:\n" + _reapply_call("    ", calibrated=True)
        )
    if method == "qat":
        part_b = (
            "# this is PTQ of the float weights: the QAT-trained codes are only in (a)\n" + part_b
        )
    imports = ["from pathlib import Path", "", "from explorer.measure.size import size_bytes"]
    if static and builtin is not None:
        imports.append("from explorer.models.registry import get_builtin")
    imports += [
        "from explorer.models.source import load_model",
        "from explorer.nn.convert import quantize_model",
        "from explorer.quant.config import Plan",
        "from explorer.sweep.export import load_export",
    ]
    report_b = 'print(f"(b) plan reapplied: {size_bytes(reapplied)} bytes stored")'
    if static and builtin is None:
        report_b = "if reapplied is not None:\n    " + report_b
    return f'''"""Reapply a quantization plan exported by Quantization Explorer.

(a) loads the exported model exactly as it was measured (codes, scales and kernels from the file);
(b) quantizes the float model afresh with the same plan.
"""

{chr(10).join(imports)}

MODEL_REF = {ref!r}
{export_line}
PLAN_JSON = (
{plan_literal}
)

float_model = load_model(**MODEL_REF).model

# (a) the exported model, bit for bit
qmodel = load_export(float_model, EXPORT)

# (b) the same plan applied to the float model
{part_b}

print(f"(a) exported model: {{size_bytes(qmodel)}} bytes stored")
{report_b}
'''


def _reapply_call(indent: str, *, calibrated: bool) -> str:
    args = "float_model, Plan.from_json(PLAN_JSON)"
    if calibrated:
        args += ", calibration_data=calibration_data"
    return f"{indent}reapplied = quantize_model(\n{indent}    {args}\n{indent})"


def _needs_calibration(plan: Plan) -> bool:
    """Static activation ranges and the algorithms (GPTQ, AWQ, SmoothQuant) need real inputs."""
    configs = [c for c in (plan.default, *(c for _, c in plan.rules)) if c is not None]
    return any(
        (c.act_bits is not None and c.act_mode == "static") or c.algorithm != "rtn" for c in configs
    )


def _builtin_name(ref: Mapping[str, str]) -> str | None:
    name = ref.get("model")
    if name is None or "factory" in ref:
        return None
    return name if name in builtin_models() else None


def _readme(plan: Plan, ref: Mapping[str, str], method: str, stored: int) -> str:
    kind = "uniform" if plan.is_uniform else "mixed per-layer"
    default = config_label(plan.default)
    return (
        f"Quantization Explorer export: {kind} plan (default {default}), method {method}, "
        f"model {ref}.\n"
        f"{WEIGHTS_FILE}: the quantized model's stored tensors, {stored} bytes; its metadata "
        f"holds {PLAN_FILE}.\n"
        f"{PLAN_FILE}: the plan, each layer's config, kernel and fallback, versions.\n"
        f"{SNIPPET_FILE}: run it to load the export and to reapply the plan to the float model.\n"
    )
