"""Loading an export: its plan (from plan.json or the weights' metadata, checked to agree) and
the quantized model, rebuilt from the float architecture with every stored tensor from the file
(the file is data, never code)."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import torch
from torch import nn

from explorer.errors import ModelLoadError, QuantConfigError
from explorer.export.files import (
    EXPORT_VERSION,
    MAX_PLAN_BYTES,
    METADATA_KEY,
    PLAN_FILE,
    WEIGHTS_FILE,
    config_label,
)
from explorer.kernels.base import ActQParams
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
from explorer.quant.config import METHODS, Plan, QuantConfig
from explorer.quant.primitives import block_size

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
                f"{path}: layer `{name}` is stored as {config_label(_config(stored))} but the "
                f"plan resolves to {config_label(a.config)} on this model; was it made for "
                "another model?"
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
        try:  # the module knows its own kind's kernels (linear or convolution)
            module.use_kernel(wanted)
        except (KeyError, ValueError) as exc:
            reason = exc.args[0] if exc.args else type(exc).__name__
            notes[name] = (
                f"exported with kernel {wanted!r}, which is not available here ({reason}); "
                f"using {module.kernel_name!r}"
            )
    return notes
