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

Imports from ``explorer.nn``, ``explorer.kernels``, ``explorer.measure`` and ``explorer.models``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import torch
from torch import nn

import explorer
from explorer.errors import ExplorerError, ModelLoadError, QuantConfigError
from explorer.kernels.base import ActQParams
from explorer.kernels.select import get_kernel
from explorer.measure.size import export_safetensors, size_bytes
from explorer.models.registry import builtin_models
from explorer.models.safe_load import (
    DEFAULT_MAX_BYTES,
    fill_tied,
    load_tensors,
    validate_state_dict,
)
from explorer.nn.convert import (
    QuantReport,
    in_features,
    is_conv1d,
    quant_modules,
    quantizable_layers,
    quantize_layer,
    resolve_plan,
    select_kernels,
    set_submodule,
)
from explorer.nn.fold import fold_batch_norm
from explorer.nn.modules import Bf16Conv2d, Bf16Linear, QuantModule
from explorer.quant.config import METHODS, Plan, QuantConfig
from explorer.quant.primitives import block_size

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
                f"layer `{name}` was quantized as {_label(a.config)} but the plan gives "
                f"{_label(planned)}; export the plan the model was quantized with"
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
                f"{_label(config)}"
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
            f"layer `{name}` is a {type(module).__name__} but its report says {_label(config)}"
        )
    return kernel


def _label(config: QuantConfig | None) -> str:
    return "fp32 (unquantized)" if config is None else config.name


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


# --- reading -----------------------------------------------------------------------------------


def read_export_plan(folder: str | Path) -> tuple[Plan, dict[str, Any]]:
    """The plan and the whole plan.json document of an export folder.

    ``folder`` may also be the export's ``model.safetensors`` alone: its metadata holds the same
    document. In a folder, plan.json and the weights' metadata must agree.
    """
    path = Path(folder)
    if path.is_file():
        doc = _metadata_doc(path)
        return _checked_doc(doc, f"{path} metadata"), doc
    if not path.is_dir():
        raise ModelLoadError(f"{path}: no such export folder")
    plan_path = path / PLAN_FILE
    try:
        size = plan_path.stat().st_size
    except FileNotFoundError:
        raise ModelLoadError(
            f"{plan_path}: no such file; {path} is not a complete export"
        ) from None
    if size > MAX_PLAN_BYTES:
        raise ModelLoadError(f"{plan_path}: {size} bytes, over the limit of {MAX_PLAN_BYTES}")
    try:
        doc = json.loads(plan_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{plan_path}: not valid JSON ({exc})") from None
    return _checked_doc(doc, str(plan_path)), doc


def _metadata_doc(weights_path: Path) -> dict[str, Any]:
    try:
        with safetensors.safe_open(str(weights_path), framework="pt") as f:
            metadata = f.metadata() or {}
    except FileNotFoundError:
        raise ModelLoadError(f"{weights_path}: no such file") from None
    except Exception as exc:  # the safetensors parser reports crafted headers as it likes
        raise ModelLoadError(f"{weights_path}: not a readable safetensors file ({exc})") from None
    if METADATA_KEY not in metadata:
        raise ModelLoadError(
            f"{weights_path}: its metadata holds no {METADATA_KEY!r} entry; it is not an export "
            "written by `explorer export`"
        )
    try:
        return json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ModelLoadError(
            f"{weights_path}: metadata {METADATA_KEY!r} is not JSON ({exc})"
        ) from None


def _checked_doc(doc: Any, source: str) -> Plan:
    if not isinstance(doc, dict):
        raise ModelLoadError(f"{source}: expected a JSON object, got {type(doc).__name__}")
    if doc.get("version") != EXPORT_VERSION:
        raise ModelLoadError(
            f"{source}: export version {doc.get('version')!r} is not supported "
            f"(this build reads {EXPORT_VERSION})"
        )
    required = ("plan", "model", "method", "layers", "folded_batch_norms", "size_bytes")
    missing = [k for k in required if k not in doc]
    if missing:
        raise ModelLoadError(f"{source}: missing field(s) {missing}")
    try:
        plan = Plan.from_dict(doc["plan"])
        layers = doc["layers"]
        if not isinstance(layers, dict):
            raise ModelLoadError(f"{source}: 'layers' must be an object")
        for name, rec in layers.items():
            if not (isinstance(rec, dict) and {"config", "kernel", "fallback"} <= set(rec)):
                raise ModelLoadError(
                    f"{source}: layer `{name}` needs 'config', 'kernel' and 'fallback'"
                )
            if rec["config"] is not None:
                QuantConfig.from_dict(rec["config"])
    except QuantConfigError as exc:
        raise ModelLoadError(f"{source}: {exc}") from None
    if not isinstance(doc["folded_batch_norms"], list):
        raise ModelLoadError(f"{source}: 'folded_batch_norms' must be a list of layer names")
    if doc["method"] not in METHODS:
        raise ModelLoadError(f"{source}: method must be one of {list(METHODS)}")
    return plan


def load_export(
    float_model: nn.Module,
    folder: str | Path,
    *,
    example_input: torch.Tensor | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> nn.Module:
    """Rebuild the exported quantized model on the architecture of ``float_model`` (not mutated).

    Only the architecture comes from ``float_model``: the stored plan is resolved on a copy (batch
    norms folded as `quantize_model` does), each layer is built from placeholder codes, and every
    stored tensor then comes from the file through the safe loader, after names, shapes and dtypes
    are checked against the rebuilt model (`ModelLoadError` names any that differ). Each layer's
    kernel from plan.json is restored where this machine has it; otherwise the default is kept and
    the reason noted in the model's ``export_notes`` (``{layer: note}``). With ``example_input``,
    kernels are then chosen by timing (`select_kernels`). Returns the model in eval mode with
    ``quant_report`` set.
    """
    path = Path(folder)
    plan, doc = read_export_plan(path)
    if path.is_dir():
        weights_path = path / WEIGHTS_FILE
        if weights_path.is_file() and _metadata_doc(weights_path) != doc:
            raise ModelLoadError(
                f"{path}: {PLAN_FILE} and the metadata of {WEIGHTS_FILE} disagree; the export was "
                "edited or mixed with another one"
            )
    else:
        weights_path = path
    source = str(weights_path)

    model = copy.deepcopy(float_model).eval()
    folded: list[str] = []
    if doc["folded_batch_norms"]:  # empty: nothing to fold, or quantized with fold_bn=False
        model, folded = fold_batch_norm(model)
    if folded != doc["folded_batch_norms"]:
        raise ModelLoadError(
            f"{path}: the export folded batch norms into {doc['folded_batch_norms']}, but this "
            f"model folds into {folded}; was it made for another model?"
        )
    stored_layers: dict[str, dict[str, Any]] = doc["layers"]
    _check_layer_names(model, stored_layers, source=str(path))
    try:
        assignments = resolve_plan(model, plan)
    except QuantConfigError as exc:
        raise ModelLoadError(f"{path}: {exc}; was this export made for another model?") from None
    for name, a in assignments.items():
        stored = stored_layers[name]["config"]
        resolved = None if a.config is None else a.config.to_dict()
        if stored != resolved:
            raise ModelLoadError(
                f"{path}: layer `{name}` is stored as {_label(_config(stored))} but the plan "
                f"resolves to {_label(a.config)} on this model; was it made for another model?"
            )
        module = model.get_submodule(name)
        new = _skeleton_layer(module, a.config, name)
        if new is not module:
            set_submodule(model, name, new)

    _load_stored(model, weights_path, max_bytes, source)
    model.quant_report = QuantReport(assignments, folded)
    model.export_notes = _restore_kernels(model, stored_layers)
    if example_input is not None:
        select_kernels(model, example_input)
    return model.eval()


def _config(data: dict[str, Any] | None) -> QuantConfig | None:
    return None if data is None else QuantConfig.from_dict(data)


def _check_layer_names(model: nn.Module, stored: Mapping[str, Any], *, source: str) -> None:
    have = list(quantizable_layers(model))
    absent = [n for n in stored if n not in have]
    extra = [n for n in have if n not in stored]
    if absent or extra:
        parts = []
        if absent:
            parts.append(f"layer(s) {absent[:10]} in {PLAN_FILE} are not in the model")
        if extra:
            parts.append(f"model layer(s) {extra[:10]} are not in {PLAN_FILE}")
        raise ModelLoadError(
            f"{source}: the export does not fit this model's architecture: {'; '.join(parts)}; "
            "load it with the float model it was exported from"
        )


def _skeleton_layer(module: nn.Module, config: QuantConfig | None, name: str) -> nn.Module:
    """The layer ``quantize_layer`` would build, with every stored tensor a placeholder.

    The float weights are zeroed first and quantized with unit scales (no calibration), so
    nothing of their values survives; the real codes come from the file. Static activations get
    placeholder qparams so that their ``act_scale``/``act_zero`` buffers exist to load into, and
    layers of an input-scaling algorithm (AWQ, SmoothQuant) a placeholder ``input_scale``.
    """
    if config is None or config.is_float:
        return quantize_layer(module, config, name)
    with torch.no_grad():
        module.weight.zero_()
    if is_conv1d(module):
        shape = (module.weight.shape[1], module.weight.shape[0])
    else:
        shape = (module.weight.shape[0], in_features(module))
    block = block_size(config, shape)
    blocks = (shape[0] // block[0], shape[1] // block[1])
    qparams = (torch.ones(blocks), torch.zeros(blocks, dtype=torch.int32))
    act = (
        ActQParams(1.0, 0) if config.act_bits is not None and config.act_mode == "static" else None
    )
    input_scale = torch.ones(shape[1]) if config.scales_inputs else None
    return quantize_layer(module, config, name, act, qparams, input_scale=input_scale)


def _load_stored(model: nn.Module, weights_path: Path, max_bytes: int, source: str) -> None:
    tensors = load_tensors(weights_path, max_bytes=max_bytes)
    reference = model.state_dict()
    tensors = fill_tied(reference, tensors)
    validate_state_dict({n: t.shape for n, t in reference.items()}, tensors, source=source)
    wrong_dtype = [
        f"{n}: expected {reference[n].dtype}, got {t.dtype}".replace("torch.", "")
        for n, t in tensors.items()
        if t.dtype != reference[n].dtype
    ]
    if wrong_dtype:
        raise ModelLoadError(
            f"{source}: weights do not match the model. Dtype mismatches ({len(wrong_dtype)}): "
            + "; ".join(wrong_dtype[:10])
        )
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{source}: {str(exc).splitlines()[0]}") from exc
    for module in quant_modules(model).values():
        module._state = None  # kernel state packed from the placeholders must not survive


def _restore_kernels(model: nn.Module, stored: Mapping[str, dict[str, Any]]) -> dict[str, str]:
    notes = {}
    for name, module in quant_modules(model).items():
        wanted = stored[name]["kernel"]
        if wanted == module.kernel_name:
            continue
        try:
            get_kernel(wanted)
            module.use_kernel(wanted)
        except (KeyError, ValueError) as exc:
            reason = exc.args[0] if exc.args else type(exc).__name__
            notes[name] = (
                f"exported with kernel {wanted!r}, which is not available here ({reason}); "
                f"using {module.kernel_name!r}"
            )
    return notes


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
    default = _label(plan.default)
    return (
        f"Quantization Explorer export: {kind} plan (default {default}), method {method}, "
        f"model {ref}.\n"
        f"{WEIGHTS_FILE}: the quantized model's stored tensors, {stored} bytes; its metadata "
        f"holds {PLAN_FILE}.\n"
        f"{PLAN_FILE}: the plan, each layer's config, kernel and fallback, versions.\n"
        f"{SNIPPET_FILE}: run it to load the export and to reapply the plan to the float model.\n"
    )
