"""``export``: one quantized model written with its plan, from a plan file (a plan, a sweep row
or an earlier export's plan.json) or from one value per config option."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorer.cli.runs import context_from_args
from explorer.cli.sweep import build_spec, dimension_options
from explorer.errors import ExplorerError

if TYPE_CHECKING:
    from explorer.quant.config import Plan
    from explorer.sweep.context import ModelContext
    from explorer.sweep.space import PlanEntry, SweepSpec


def read_plan_file(path: str) -> tuple[Plan, int | None, float | None]:
    """The plan in ``path``: a Plan dict, a sweep row (its ``config``, with its QAT budget) or
    an export's plan.json (its ``plan``). Returns (plan, qat steps, qat lr)."""
    from explorer.quant.config import Plan

    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ExplorerError(f"--plan {path}: cannot read it ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExplorerError(f"--plan {path}: not a JSON file ({exc})") from None
    steps = lr = None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):  # a sweep row
        steps, lr = data.get("qat_steps"), data.get("qat_lr")
        data = data["config"]
    elif isinstance(data, dict) and isinstance(data.get("plan"), dict):  # an export's plan.json
        data = data["plan"]
    try:
        return Plan.from_dict(data), steps, lr
    except (ExplorerError, TypeError, ValueError) as exc:
        raise ExplorerError(f"--plan {path}: not a plan ({exc})") from None


def _export_request(args: argparse.Namespace) -> PlanEntry | SweepSpec:
    """What to export, checked before the model loads: the entry of a ``--plan`` file, or the
    one-config spec of the config options (resolved against the model by `_export_entry`)."""
    from explorer.sweep.space import DEFAULT_QAT_STEPS, DIMENSIONS, entry_for_plan

    given = [
        d for d in (*dimension_options(), "layers", "fallback") if getattr(args, d) is not None
    ]
    if args.plan is not None:
        if given:
            options = ", ".join("--" + d.replace("_", "-") for d in given)
            raise ExplorerError(f"--plan carries its own configs; drop {options}")
        plan, steps, lr = read_plan_file(args.plan)
        return entry_for_plan(
            plan, qat_steps=args.qat_steps or steps or DEFAULT_QAT_STEPS, qat_lr=args.qat_lr or lr
        )
    if args.bits is None:
        raise ExplorerError("give --plan PLAN.json, or a config starting with --bits")
    spec = build_spec(args)
    several = [name for name in DIMENSIONS if len(getattr(spec, name)) > 1]
    if several:
        raise ExplorerError(f"export takes one value per option; several given for {several}")
    return spec


def _export_entry(request: PlanEntry | SweepSpec, ctx: ModelContext) -> PlanEntry:
    from explorer.sweep.space import PlanEntry, expand

    if isinstance(request, PlanEntry):
        return request
    entries, skipped = expand(request, ctx.model)
    if skipped:
        raise ExplorerError(f"{skipped[0].label}: {skipped[0].reason}")
    return entries[-1]  # after the two baselines


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from explorer.nn.convert import quant_modules, quantize_model, select_kernels
    from explorer.sweep.export import export_quantized, snippet
    from explorer.sweep.runner import RunSettings, build_quantized

    request = _export_request(args)
    out = Path(args.out)
    if not args.overwrite and out.is_dir() and any(out.iterdir()):
        raise ExplorerError(
            f"{out} already exists and is not empty; choose another folder or pass --overwrite "
            "to replace an earlier export"
        )
    ctx = context_from_args(args)
    entry = _export_entry(request, ctx)
    print(f"export: quantizing {ctx.name} with {entry.label}", file=sys.stderr)
    if entry.qat_steps is None:
        calibration = ctx.calibration_inputs(args.calibration_samples)
        quantized = quantize_model(ctx.model, entry.plan, calibration_data=calibration)
    else:
        settings = RunSettings(calibration_samples=args.calibration_samples, seed=args.seed)
        quantized = build_quantized(ctx, entry, settings)
    if quant_modules(quantized):
        select_kernels(quantized, run=next(iter(ctx.workloads.values()))(quantized))
    ref = {k: v for k, v in ctx.source.to_dict().items() if k != "data"}
    result = export_quantized(
        quantized,
        entry.plan,
        args.out,
        model_ref=ref,
        method=entry.method,
        overwrite=args.overwrite,
    )
    runtime: dict[str, str] = {}
    if args.target != "native":
        from explorer.bundle import target_files

        print(f"export: building the {args.target} model", file=sys.stderr)
        written = target_files(ctx, quantized, args.target, result.folder, args.calibration_samples)
        runtime = {path.name: str(path) for path in written.values()}
    if not args.json:
        print(f"exported {entry.label} ({result.size_bytes:,} bytes) to {result.folder}")
        for path in runtime.values():
            print(f"  {args.target}: {path}")
        print(snippet(entry.plan, ref, str(result.folder), method=entry.method))
    return {
        "target": args.target,
        "target_files": runtime,
        "folder": str(result.folder),
        "plan": str(result.plan_path),
        "weights": str(result.weights_path),
        "snippet": str(result.snippet_path),
        "size_bytes": result.size_bytes,
        "layers": len(quantized.quant_report.layers),
        "method": entry.method,
        "config": entry.plan.to_dict(),
    }
