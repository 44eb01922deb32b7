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

EXPORT_REPEATS = 5
EXPORT_BOOTSTRAP = 200
"""Timed calls and bootstrap resamples of the llama.cpp export's measurement."""

if TYPE_CHECKING:
    from explorer.export.gguf import GgufPlan
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


def _check_out(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    if not args.overwrite and out.is_dir() and any(out.iterdir()):
        raise ExplorerError(
            f"{out} already exists and is not empty; choose another folder or pass --overwrite "
            "to replace an earlier export"
        )
    return out


def read_gguf_plan(path: str) -> GgufPlan:
    """The llama.cpp plan in ``path``: a `GgufPlan` dict, a ``search --target llamacpp`` row
    (its ``config``) or a llama.cpp export's plan.json (its ``plan``)."""
    from explorer.export.gguf import GgufPlan

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExplorerError(f"--plan {path}: cannot read it as JSON ({exc})") from None
    for key in ("config", "plan"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or "default" not in data:
        raise ExplorerError(
            f"--plan {path}: not a llama.cpp plan (a GgufPlan with 'default' and 'tensors', a "
            "search --target llamacpp row, or a llama.cpp export's plan.json)"
        )
    try:
        return GgufPlan.from_dict(data)
    except (ExplorerError, KeyError, TypeError) as exc:
        raise ExplorerError(f"--plan {path}: not a llama.cpp plan ({exc})") from None


def _llamacpp_plan(args: argparse.Namespace) -> GgufPlan:
    """The ggml plan of ``export --target llamacpp[:TYPE]``: --plan, or one type."""
    from explorer.export.gguf import GgufPlan
    from explorer.quant.ggml import format_of

    given = [
        d for d in (*dimension_options(), "layers", "fallback") if getattr(args, d) is not None
    ]
    if given:
        options = ", ".join("--" + d.replace("_", "-") for d in given)
        raise ExplorerError(
            f"--target llamacpp quantizes in ggml types (--formats TYPE or --plan FILE); "
            f"drop {options}"
        )
    fmt = args.target.partition(":")[2] or args.formats
    if args.plan is not None:
        if fmt:
            raise ExplorerError("--plan carries its own ggml types; drop --formats")
        return read_gguf_plan(args.plan)
    if not fmt:
        raise ExplorerError("--target llamacpp needs --formats TYPE (q4_k) or --plan FILE")
    if "," in fmt:
        raise ExplorerError(f"export writes one plan; give one ggml type, not {fmt!r}")
    return GgufPlan(default=format_of(fmt).name)


def cmd_export_llamacpp(args: argparse.Namespace) -> dict[str, Any]:
    """``export --target llamacpp``: the GGUF file of a ggml plan, run in llama.cpp on the
    evaluation windows (perplexity, KL, times), written with its ``llama-quantize`` command and
    plan.json (which also records what was measured)."""
    from explorer.sweep.ggml_search import verify
    from explorer.sweep.store import finite_or_none
    from explorer.targets.llamacpp import check_runtime

    plan = _llamacpp_plan(args)
    out = _check_out(args)
    check_runtime()
    ctx = context_from_args(args).budgeted(args.eval_tokens)
    print(f"export: writing {ctx.name} as GGUF and running it in llama.cpp", file=sys.stderr)
    row = verify(
        ctx,
        plan,
        threads=args.threads,
        n_boot=EXPORT_BOOTSTRAP,
        seed=args.seed,
        repeats=EXPORT_REPEATS,
        export_to=out,
    )
    measured = {
        k: row[k]
        for k in ("metrics", "metrics_ci", "tokens_evaluated", "latency", "bits_per_weight_file")
    }
    plan_file = Path(row["files"]["plan"])
    document = json.loads(plan_file.read_text())
    document["measured"] = finite_or_none(measured)
    plan_file.write_text(json.dumps(document, indent=2))
    if not args.json:
        print(
            f"exported {row['format']} ({row['bits_per_weight_file']:.4f} bits per weight, "
            f"{ctx.metric} {row['metrics'].get(ctx.metric or '', float('nan')):.4f}, KL "
            f"{row['metrics'].get('kl', float('nan')):.4f}) to {out}"
        )
        for path in row["files"].values():
            print(f"  llamacpp: {path}")
    return finite_or_none(
        {
            "target": "llamacpp",
            "folder": str(out),
            "target_files": {Path(p).name: p for p in row["files"].values()},
            **{k: row[k] for k in ("format", "config", "tensor_types", "fallbacks")},
            **{k: row[k] for k in ("bits_per_weight", "bits_per_weight_file", "size_bytes")},
            **measured,
        }
    )


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from explorer.nn.convert import quant_modules, quantize_model, select_kernels
    from explorer.sweep.export import export_quantized, snippet
    from explorer.sweep.runner import RunSettings, build_quantized

    if args.target == "llamacpp" or args.target.startswith("llamacpp:"):
        return cmd_export_llamacpp(args)
    if args.formats is not None:
        raise ExplorerError("--formats needs --target llamacpp")
    request = _export_request(args)
    _check_out(args)
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
