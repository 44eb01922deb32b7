"""The ``explorer`` command: a thin shell over the library.

Every subcommand takes ``--json`` and then prints exactly one JSON document as the last line of
stdout; progress goes to stderr. Errors exit non-zero with a one-line message on stderr, never a
traceback: 2 for anything the user can fix (a bad value, an unknown model, a foreign store file),
1 for an internal error, 130 when interrupted.

``sweep``, ``sensitivity``, ``search`` and ``export`` share the model options of
`explorer.sweep.context.ModelSource` (``--model``, ``--weights``, ``--model-factory``, ``--data``);
``sweep`` and ``search`` write their rows to the results store (``--store``, default
``$EXPLORER_STORE`` or `DEFAULT_STORE`), so running the same command again reuses them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from explorer.errors import ExplorerError

if TYPE_CHECKING:
    from tqdm import tqdm

    from explorer.quant.config import Plan
    from explorer.sweep.context import ModelContext, ModelSource
    from explorer.sweep.runner import Executor, RunSettings, SweepEvent
    from explorer.sweep.sensitivity import Sensitivity
    from explorer.sweep.space import PlanEntry, SweepSpec
    from explorer.sweep.store import ResultStore

DEFAULT_STORE = Path("~/.cache/quant-explorer/results.sqlite")
STORE_ENV = "EXPLORER_STORE"
INTERRUPTED_EXIT = 130

SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
LATENCY_UNITS = {"": 1.0, "ms": 1.0, "us": 1e-3, "s": 1000.0}
_QUANTITY = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (the contract), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _finite_or_none(value: Any) -> Any:
    """``value`` with NaN and infinities as None: JSON has no form for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from tqdm import tqdm

    from explorer.measure.bench import format_table, run_bench

    if args.threads:
        torch.set_num_threads(args.threads)
    bar = tqdm(
        total=len(args.m) + (0 if args.no_conv else 1),
        file=sys.stderr,
        unit="step",
        desc="bench: preparing weights",
    )

    def progress(msg: str) -> None:
        if bar.desc != "bench: preparing weights":
            bar.update()
        bar.set_description(f"bench: {msg}")

    try:
        result = run_bench(
            ms=args.m,
            n=args.n,
            k=args.k,
            repeats=args.repeats,
            conv=not args.no_conv,
            include_slow=args.include_slow,
            progress=progress,
        )
        bar.update()
    finally:
        bar.close()
    if not args.json:
        print(format_table(result))
    return result


def cmd_models(args: argparse.Namespace) -> dict[str, Any]:
    from explorer.models.registry import builtin_models

    rows = []
    for model in builtin_models().values():
        try:
            value = model.card().get("float")
        except ExplorerError:
            value = None
        rows.append(
            {
                "name": model.name,
                "task": model.task,
                "params": model.params(),
                "metric": {"name": model.metric, "value": value},
                "default": model.default,
                "description": model.description,
            }
        )
    if not args.json:
        for r in rows:
            star = "*" if r["default"] else " "
            value = r["metric"]["value"]
            shown = "n/a" if value is None else f"{value:.4g}"
            print(
                f"{star} {r['name']:12} {r['task']:15} {r['params']:>10,} params  "
                f"{r['metric']['name']} {shown}  {r['description']}"
            )
    return {"models": rows}


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    from explorer.models.registry import get_builtin

    model = get_builtin(args.name)
    out = Path(args.out) if args.out else model.asset_dir
    out.mkdir(parents=True, exist_ok=True)
    print(f"train: {model.name} → {out} (seed {args.seed})", file=sys.stderr)
    metrics = model.train(out, args.seed)
    if not args.json:
        print(json.dumps(metrics, indent=2))
    return {"model": model.name, "out": str(out), "seed": args.seed, "metrics": metrics}


# --- shared by sweep, sensitivity, search and export ------------------------------------------


def _names(text: str | None) -> list[str]:
    return [] if text is None else [v.strip() for v in text.split(",") if v.strip()]


def _parse_quantity(text: str, units: dict[str, float], what: str, example: str) -> float:
    match = _QUANTITY.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in units:
        known = ", ".join(u for u in units if u)
        raise ExplorerError(
            f"{what} {text!r} is not a number with a unit ({known}), e.g. {example}"
        )
    return float(match.group(1)) * units[unit]


def parse_size(text: str) -> int:
    """``"3.5MB"`` → 3500000, ``"64KiB"`` → 65536, ``"1200"`` → 1200 (bytes)."""
    return round(_parse_quantity(text, SIZE_UNITS, "size", "3.5MB, 512KiB or 200000"))


def parse_latency(text: str) -> float:
    """``"2.5ms"`` or ``"2.5"`` → 2.5, ``"0.5s"`` → 500.0, ``"800us"`` → 0.8 (milliseconds)."""
    return _parse_quantity(text, LATENCY_UNITS, "latency", "2.5ms")


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="end with one JSON line on stdout")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        metavar="NAME|DIR",
        default=None,
        help="built-in model name or local Hugging Face directory (default: the default built-in)",
    )
    group.add_argument(
        "--weights", metavar="FILE", default=None, help="safetensors weights for the architecture"
    )
    group.add_argument(
        "--model-factory",
        metavar="PKG.MOD:FN",
        default=None,
        help="pkg.module:function returning the float model",
    )
    group.add_argument(
        "--data", metavar="PATH", default=None, help="evaluation and calibration data file"
    )
    group.add_argument("--threads", metavar="N", type=_positive, default=None, help="torch threads")


def _add_run_options(parser: argparse.ArgumentParser, *, sweep: bool) -> None:
    group = parser.add_argument_group("run settings")
    group.add_argument(
        "--calibration-samples",
        metavar="N",
        type=_positive,
        default=128,
        help="calibration inputs for static activation ranges (default 128)",
    )
    group.add_argument(
        "--seed", metavar="N", type=int, default=0, help="bootstrap and QAT seed (default 0)"
    )
    if not sweep:
        return
    group.add_argument(
        "--repeats", metavar="N", type=_positive, default=20, help="timed calls (default 20)"
    )
    group.add_argument(
        "--n-boot",
        metavar="N",
        type=_positive,
        default=1000,
        help="bootstrap resamples (default 1000)",
    )
    group.add_argument(
        "--store",
        metavar="PATH",
        default=None,
        help=f"results store (default ${STORE_ENV} or {DEFAULT_STORE})",
    )
    group.add_argument(
        "--executor", choices=("local", "ray"), default="local", help="where rows are evaluated"
    )
    group.add_argument(
        "--ray-address", metavar="ADDR", default=None, help="Ray cluster address (--executor ray)"
    )


def _model_source(args: argparse.Namespace) -> ModelSource:
    from explorer.models.registry import default_model
    from explorer.sweep.context import ModelSource

    model = args.model
    if model is None and args.model_factory is None:
        model = default_model().name
    return ModelSource(
        model=model, weights=args.weights, factory=args.model_factory, data=args.data
    )


def _open_context(args: argparse.Namespace) -> ModelContext:
    from explorer.sweep.context import open_context

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return open_context(_model_source(args))


def _store_path(args: argparse.Namespace) -> Path:
    return Path(args.store or os.environ.get(STORE_ENV) or DEFAULT_STORE).expanduser()


def _open_store(args: argparse.Namespace) -> ResultStore:
    from explorer.sweep.store import ResultStore

    return ResultStore(_store_path(args))


def _run_settings(args: argparse.Namespace) -> RunSettings:
    from explorer.sweep.runner import RunSettings

    return RunSettings(
        calibration_samples=args.calibration_samples,
        seed=args.seed,
        n_boot=args.n_boot,
        repeats=args.repeats,
    )


def _executor(args: argparse.Namespace, ctx: ModelContext) -> Executor:
    """``--executor``: local evaluates in this process on the open context, ray on actors (a
    Ray instance this command starts is shut down when the command exits)."""
    import atexit

    from explorer.sweep.executors import make_executor

    if args.executor == "local":
        return make_executor("local", ctx=ctx, address=args.ray_address)
    executor = make_executor(args.executor, address=args.ray_address)
    close = getattr(executor, "close", None)
    if close is not None:
        atexit.register(close)
    return executor


def _interrupted(stored: int) -> KeyboardInterrupt:
    """What main prints on Ctrl-C: every finished row is already committed to the store."""
    return KeyboardInterrupt(
        f"interrupted: {stored} rows stored; run the same command again to resume"
    )


def _bar(total: int, desc: str) -> tqdm:
    from tqdm import tqdm

    return tqdm(total=total, file=sys.stderr, unit="row", desc=desc, dynamic_ncols=True)


class _Tally:
    """The progress bar of a sweep or search on stderr, and what its events came to: the rows
    (evaluated or from the store), how many of each, and the failures. Call it with each event."""

    def __init__(self, total: int, desc: str) -> None:
        self.bar = _bar(total, desc)
        self.rows: list[dict[str, Any]] = []
        self.failed: list[dict[str, str]] = []
        self.counts = {"cached": 0, "evaluated": 0}

    def __call__(self, event: SweepEvent) -> None:
        if event.kind == "failed":
            self.failed.append({"config": event.label, "reason": event.reason})
        elif event.kind in ("row", "cached"):
            assert event.row is not None
            self.rows.append(event.row)
            self.counts["evaluated" if event.kind == "row" else "cached"] += 1
        else:
            return
        self.bar.total = event.total
        self.bar.update()
        self.bar.set_description(event.label)
        self.bar.set_postfix(cached=self.counts["cached"], failed=len(self.failed))


def _flag_fronts(rows: list[dict[str, Any]], metric: str | None) -> tuple[str, str]:
    """Set ``pareto`` (size vs metric) and ``pareto_latency`` (latency vs metric) on each row."""
    from explorer.inspect import quality_axis
    from explorer.sweep.pareto import flag_pareto

    axis = quality_axis(rows, metric)
    by_size = flag_pareto(rows, [("size_bytes", "min"), axis])
    by_latency = flag_pareto(rows, [("latency_ms", "min"), axis])
    for row, size_flag, latency_flag in zip(rows, by_size, by_latency, strict=True):
        row["pareto"] = size_flag
        row["pareto_latency"] = latency_flag
    return axis


def _in_entry_order(entries: Sequence[PlanEntry], rows: Sequence[dict[str, Any]]) -> list[dict]:
    """The rows in the order of their entries, matched by plan and QAT budget (labels need not
    be unique), each plan once."""

    def identity(plan: dict[str, Any], qat_steps: Any) -> tuple[str, Any]:
        return json.dumps(plan, sort_keys=True, separators=(",", ":")), qat_steps

    by_plan = {identity(r["config"], r.get("qat_steps")): r for r in rows}
    ordered = []
    for key in dict.fromkeys(identity(e.plan.to_dict(), e.qat_steps) for e in entries):
        if key in by_plan:
            ordered.append(_finite_or_none(by_plan[key]))
    return ordered


def _print_rows(rows: Sequence[dict[str, Any]], metric_path: str) -> None:
    name = metric_path.split(".", 1)[1]
    width = max([len("config"), *(len(str(r.get("label", ""))) for r in rows)])
    print(f"  {'config':{width}}  {'size KB':>9}  {'bits/w':>6}  {'latency ms':>16}  {name}")
    for r in rows:
        star = "*" if r.get("pareto") else " "
        size = r.get("size_bytes")
        bits = r.get("bits_per_weight")
        latency = r.get("latency_ms")
        shown_latency = "n/a" if latency is None else f"{latency:.3f}"
        if r.get("latency_kind") == "simulated":
            shown_latency += " (sim)"
        value = (r.get("metrics") or {}).get(name)
        ci = (r.get("metrics_ci") or {}).get(name)
        shown = "n/a" if value is None else f"{value:.4f}"
        if value is not None and ci and None not in ci:
            shown += f"  Δ95% [{ci[0]:+.4f}, {ci[1]:+.4f}]"
        print(
            f"{star} {str(r.get('label', '')):{width}}  "
            f"{'n/a' if size is None else f'{size / 1000:.1f}':>9}  "
            f"{'-' if bits is None else f'{bits:.2f}':>6}  {shown_latency:>16}  {shown}"
        )
    print("* on the size/metric Pareto front; Δ: 95 % interval of the change against fp32")


# --- sweep ------------------------------------------------------------------------------------

_DIMENSIONS = (
    "bits",
    "act_bits",
    "act_mode",
    "act_granularity",
    "granularity",
    "symmetric",
    "calibration",
    "method",
    "algorithm",
)


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "1", "sym", "symmetric"):
        return True
    if value in ("false", "no", "0", "asym", "asymmetric"):
        return False
    raise ExplorerError(f"--symmetric takes true or false values, got {text!r}")


def _spec_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The SweepSpec fields the command line sets, parsed (unset options are left out)."""
    from explorer.sweep.space import SweepSpecError, parse_list

    def ints(text: str, option: str) -> list[int | None]:
        try:
            return parse_list(text, int)
        except ValueError:
            raise SweepSpecError(
                f"{option} takes comma-separated integers (or none), got {text!r}"
            ) from None

    changes: dict[str, Any] = {}
    if args.bits is not None:
        changes["weight_bits"] = tuple(ints(args.bits, "--bits"))
    if args.act_bits is not None:
        changes["act_bits"] = tuple(ints(args.act_bits, "--act-bits"))
    for option, field in (
        ("granularity", "granularity"),
        ("calibration", "calibration"),
        ("act_mode", "act_mode"),
        ("act_granularity", "act_granularity"),
        ("method", "method"),
        ("algorithm", "algorithm"),
    ):
        text = getattr(args, option)
        if text is not None:
            changes[field] = tuple(v.lower() for v in parse_list(text))
    if args.symmetric is not None:
        changes["symmetric"] = tuple(_bool(v) for v in args.symmetric.split(",") if v.strip())
    if args.qat_steps is not None:
        changes["qat_steps"] = args.qat_steps
    if args.qat_lr is not None:
        changes["qat_lr"] = args.qat_lr
    if args.layers is not None:
        changes["layers"] = tuple(_names(args.layers))
    if args.fallback is not None:
        changes["fallback"] = args.fallback
    return changes


def build_spec(args: argparse.Namespace) -> SweepSpec:
    """``--default``, or no dimension option at all, starts from `DEFAULT_SPEC`; any option given
    replaces that dimension."""
    from explorer.sweep.space import DEFAULT_SPEC, SweepSpec

    changes = _spec_changes(args)
    given = any(getattr(args, d) is not None for d in _DIMENSIONS)
    base = DEFAULT_SPEC if getattr(args, "default", False) or not given else SweepSpec()
    return dataclasses.replace(base, **changes)


def _add_config_options(parser: argparse.ArgumentParser, *, single: bool) -> None:
    """The quantization options: lists to sweep, or one value each (``single``, for export)."""
    value = "VALUE" if single else "LIST"
    title = "quantization config" + ("" if single else " (comma-separated values to sweep)")
    group = parser.add_argument_group(title)
    for option, help_text in (
        ("--bits", "weight bits, 2 to 8: 8,4,2"),
        ("--act-bits", "activation bits: 8, 4 or none (float)"),
        ("--act-mode", "activation ranges: dynamic or static"),
        ("--act-granularity", "activation scales: token or tensor"),
        ("--granularity", "weight scales: tensor, channel, group32, ..."),
        ("--symmetric", "symmetric weights: true or false"),
        ("--calibration", "weight ranges: minmax, percentile or mse"),
        ("--method", "ptq or qat"),
        ("--algorithm", "PTQ algorithm: rtn, gptq, awq or smoothquant (W8A8)"),
    ):
        group.add_argument(option, metavar=value, default=None, help=help_text)
    group.add_argument(
        "--qat-steps", metavar="N", type=_positive, default=None, help="QAT steps (default 200)"
    )
    group.add_argument(
        "--qat-lr",
        metavar="LR",
        type=float,
        default=None,
        help="QAT peak learning rate (default: the model's, 0.001 for users' models)",
    )
    group.add_argument(
        "--layers",
        metavar="GLOBS",
        default=None,
        help="layer name patterns the config applies to; other layers stay fp32 (default: all)",
    )
    group.add_argument(
        "--fallback",
        choices=("channel", "float", "error"),
        default=None,
        help="for a layer the config does not fit (default channel)",
    )


def cmd_sweep(args: argparse.Namespace) -> dict[str, Any]:
    from explorer.sweep.runner import run_sweep
    from explorer.sweep.space import expand

    spec = build_spec(args)
    settings = _run_settings(args)
    store = _open_store(args)
    try:
        ctx = _open_context(args)
        executor = _executor(args, ctx)
        entries, skipped = expand(spec, ctx.model)
        tally = _Tally(len(entries), f"sweep {ctx.name}")
        try:
            for event in run_sweep(ctx, entries, store, settings=settings, executor=executor):
                tally(event)
        except KeyboardInterrupt:
            raise _interrupted(tally.counts["evaluated"]) from None
        finally:
            tally.bar.close()
    finally:
        store.close()
    counts, failed = tally.counts, tally.failed
    ordered = _in_entry_order(entries, tally.rows)
    axis = _flag_fronts(ordered, ctx.metric)
    baseline = {
        r["label"]: {**r["metrics"], "size_bytes": r["size_bytes"], "latency_ms": r["latency_ms"]}
        for r in ordered
        if r.get("kind") == "baseline"
    }
    if not args.json:
        _print_rows(ordered, axis[0])
        for s in skipped:
            print(f"skipped {s.label}: {s.reason}")
        for f in failed:
            print(f"failed {f['config']}: {f['reason']}")
        print(
            f"{len(ordered)} rows ({counts['cached']} from the store, {counts['evaluated']} "
            f"evaluated) in {store.path}"
        )
    return {
        "model": ctx.name,
        "baseline": baseline,
        "rows": ordered,
        "skipped": [s.to_dict() for s in skipped],
        "failed": failed,
        "store": str(store.path),
        "cached": counts["cached"],
        "evaluated": counts["evaluated"],
        "spec": spec.to_dict(),
        "settings": settings.to_dict(),
    }


# --- sensitivity --------------------------------------------------------------------------------


def _settings_list(args: argparse.Namespace) -> list[str]:
    from explorer.sweep.sensitivity import DEFAULT_SETTINGS, setting_config

    names = _names(args.settings) if args.settings is not None else list(DEFAULT_SETTINGS)
    if not names:
        raise ExplorerError("--settings needs at least one setting such as 'W4 g32'")
    for name in names:
        setting_config(name)  # a bad name fails here, before any model is loaded
    return names


def _measure(
    args: argparse.Namespace, ctx: ModelContext, *, full_metric: bool, latency: bool
) -> Sensitivity:
    from explorer.sweep.sensitivity import measure_sensitivity

    settings = _settings_list(args)
    bar = _bar(0, f"sensitivity {ctx.name}")

    def progress(done: int, total: int, message: str) -> None:
        bar.total = total
        bar.n = done
        bar.set_description(message)
        bar.refresh()

    try:
        return measure_sensitivity(
            ctx,
            settings,
            layers=_names(getattr(args, "layers", None)) or None,
            full_metric=full_metric,
            latency=latency,
            samples=args.samples,
            calibration_samples=args.calibration_samples,
            progress=progress,
        )
    finally:
        bar.close()


def cmd_sensitivity(args: argparse.Namespace) -> dict[str, Any]:
    _settings_list(args)
    ctx = _open_context(args)
    result = _measure(args, ctx, full_metric=not args.weight_only, latency=not args.no_latency)
    doc = _finite_or_none(result.to_dict())
    if not args.json:
        what = "weight_sqnr_db" if args.weight_only else "metric_drop"
        title = "weight SQNR (dB)" if args.weight_only else f"{result.metric or 'metric'} drop"
        width = max(len("layer"), *(len(n) for n in result.layers))
        print(f"{title} per layer (rows) and setting (columns); n/a: does not apply")
        print(f"{'layer':{width}}  " + "  ".join(f"{s:>12}" for s in result.settings))
        for layer in result.layers:
            cells = []
            for s in result.settings:
                cell = result.cell(layer, s)
                value = getattr(cell, what)
                cells.append("n/a" if cell.applicable or value is None else f"{value:.4f}")
            print(f"{layer:{width}}  " + "  ".join(f"{c:>12}" for c in cells))
    return doc


# --- search -------------------------------------------------------------------------------------


def _budgets(args: argparse.Namespace) -> tuple[str, list[float], int]:
    """(budget kind, budgets, points along the front) from the one budget option given."""
    given = [
        option
        for option, value in (
            ("--budget-size", args.budget_size),
            ("--budget-latency", args.budget_latency),
            ("--max-drop", args.max_drop),
            ("--points", args.points),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise ExplorerError(
            "give one budget kind (--budget-size, --budget-latency, --max-drop or --points), "
            f"not {' and '.join(given)}"
        )
    if not given or given == ["--points"]:
        points = 6 if args.points is None else args.points
        if points < 2:
            raise ExplorerError(
                f"--points must be at least 2 (both ends of the front), not {points}"
            )
        return "size", [], points
    option = given[0]
    texts = _names(getattr(args, option[2:].replace("-", "_")))
    if not texts:
        raise ExplorerError(f"{option} needs at least one value")
    if option == "--budget-size":
        return "size", [parse_size(v) for v in texts], 0
    if option == "--budget-latency":
        return "latency", [parse_latency(v) for v in texts], 0
    try:
        return "damage", [float(v) for v in texts], 0
    except ValueError:
        raise ExplorerError(f"--max-drop takes numbers, got {args.max_drop!r}") from None


def cmd_search(args: argparse.Namespace) -> dict[str, Any]:
    from explorer.sweep.mixed import search_and_verify
    from explorer.sweep.pareto import flag_pareto, front_order

    kind, budgets, points = _budgets(args)
    _settings_list(args)
    settings = _run_settings(args)
    store = _open_store(args)
    try:
        ctx = _open_context(args)
        executor = _executor(args, ctx)
        sensitivity = _measure(args, ctx, full_metric=True, latency=kind == "latency")
        tally = _Tally(0, "verify")
        try:
            outcome = search_and_verify(
                ctx,
                sensitivity,
                store,
                budgets=budgets,
                kind=kind,
                points=points or 6,
                damage=args.damage,
                settings=settings,
                executor=executor,
                with_uniform=not args.no_uniform,
                on_event=tally,
            )
        except KeyboardInterrupt:
            raise _interrupted(tally.counts["evaluated"]) from None
        finally:
            tally.bar.close()
    finally:
        store.close()
    counts, failed = tally.counts, tally.failed
    rows = _in_entry_order(outcome.entries, outcome.rows)
    axis = _flag_fronts(rows, ctx.metric)
    compared = [r for r in rows if r.get("kind") in ("baseline", "uniform")]
    uniform_flags = flag_pareto(compared, [("size_bytes", "min"), axis])
    fronts = {
        "uniform": [
            compared[i]["label"] for i in front_order(compared, "size_bytes", uniform_flags)
        ],
        "all": [
            rows[i]["label"] for i in front_order(rows, "size_bytes", [r["pareto"] for r in rows])
        ],
    }
    if not args.json:
        _print_rows(rows, axis[0])
        for f in failed:
            print(f"failed {f['config']}: {f['reason']}")
        print(f"front, uniform plans only: {', '.join(fronts['uniform']) or 'none'}")
        print(f"front, with mixed plans:   {', '.join(fronts['all']) or 'none'}")
    return {
        "model": ctx.name,
        "sensitivity_seconds": sensitivity.seconds,
        "allocations": [_finite_or_none(a.to_dict()) for a in outcome.allocations],
        "rows": rows,
        "fronts": fronts,
        "failed": failed,
        "store": str(store.path),
        "cached": counts["cached"],
        "evaluated": counts["evaluated"],
    }


# --- export -------------------------------------------------------------------------------------


def _read_plan_file(path: str) -> tuple[Plan, int | None, float | None]:
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


_SPEC_DIMENSIONS = (
    "weight_bits",
    "granularity",
    "symmetric",
    "calibration",
    "act_bits",
    "act_mode",
    "act_granularity",
    "method",
    "algorithm",
)


def _export_request(args: argparse.Namespace) -> PlanEntry | SweepSpec:
    """What to export, checked before the model loads: the entry of a ``--plan`` file, or the
    one-config spec of the config options (resolved against the model by `_export_entry`)."""
    from explorer.sweep.space import DEFAULT_QAT_STEPS, entry_for_plan

    given = [d for d in (*_DIMENSIONS, "layers", "fallback") if getattr(args, d) is not None]
    if args.plan is not None:
        if given:
            options = ", ".join("--" + d.replace("_", "-") for d in given)
            raise ExplorerError(f"--plan carries its own configs; drop {options}")
        plan, steps, lr = _read_plan_file(args.plan)
        return entry_for_plan(
            plan, qat_steps=args.qat_steps or steps or DEFAULT_QAT_STEPS, qat_lr=args.qat_lr or lr
        )
    if args.bits is None:
        raise ExplorerError("give --plan PLAN.json, or a config starting with --bits")
    spec = build_spec(args)
    several = [name for name in _SPEC_DIMENSIONS if len(getattr(spec, name)) > 1]
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
    ctx = _open_context(args)
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
    if not args.json:
        print(f"exported {entry.label} ({result.size_bytes:,} bytes) to {result.folder}")
        print(snippet(entry.plan, ref, str(result.folder), method=entry.method))
    return {
        "folder": str(result.folder),
        "plan": str(result.plan_path),
        "weights": str(result.weights_path),
        "snippet": str(result.snippet_path),
        "size_bytes": result.size_bytes,
        "layers": len(quantized.quant_report.layers),
        "method": entry.method,
        "config": entry.plan.to_dict(),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="explorer",
        description="Quantization Explorer: quantize models per layer and measure size, latency "
        "and accuracy on real int8/int4 kernels.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = sub.add_parser(
        "bench",
        help="time fp32, bf16 and every real int8/int4 kernel on linear layers and a convolution",
    )
    bench.add_argument("--m", type=_int_list, default=(1, 8, 32), help="rows M (default 1,8,32)")
    bench.add_argument("--k", type=_positive, default=4096, help="in features K (default 4096)")
    bench.add_argument("--n", type=_positive, default=4096, help="out features N (default 4096)")
    bench.add_argument("--repeats", type=_positive, default=30, help="timed calls per kernel")
    bench.add_argument("--threads", type=_positive, default=None, help="torch threads")
    bench.add_argument("--no-conv", action="store_true", help="skip the convolution benchmark")
    bench.add_argument(
        "--include-slow", action="store_true", help="also time kernels known to be slow here"
    )
    _add_json(bench)
    bench.set_defaults(func=cmd_bench)

    models = sub.add_parser("models", help="list the built-in models with their float metric")
    _add_json(models)
    models.set_defaults(func=cmd_models)

    train = sub.add_parser("train", help="retrain a built-in model from scratch (reproducible)")
    train.add_argument("name", help="built-in model name (see `explorer models`)")
    train.add_argument("--out", default=None, help="output folder (default: its assets folder)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _add_json(train)
    train.set_defaults(func=cmd_train)

    sweep = sub.add_parser(
        "sweep",
        help="evaluate every combination of the given configs; rows go to the results store",
        description="Evaluate the cross product of the given values (plus fp32 and bf16 "
        "baselines) and flag the Pareto fronts. Rows already in the store are reused, so an "
        "interrupted sweep resumes. Without dimension options, or with --default, the app's "
        "default sweep runs; options given replace its dimensions.",
    )
    _add_model_options(sweep)
    _add_config_options(sweep, single=False)
    sweep.add_argument("--default", action="store_true", help="start from the default sweep")
    _add_run_options(sweep, sweep=True)
    _add_json(sweep)
    sweep.set_defaults(func=cmd_sweep)

    sensitivity = sub.add_parser(
        "sensitivity",
        help="quantize each layer alone at each setting and measure the damage",
        description="Per-layer sensitivity on the calibration split: each layer quantized "
        "alone, every other layer float.",
    )
    _add_model_options(sensitivity)
    _add_sensitivity_options(sensitivity)
    sensitivity.add_argument(
        "--layers", metavar="NAMES", default=None, help="layer names (default: every layer)"
    )
    sensitivity.add_argument(
        "--no-latency", action="store_true", help="skip timing each layer at each setting"
    )
    sensitivity.add_argument(
        "--weight-only",
        action="store_true",
        help="weight SQNR only: no forward passes, no metric drop",
    )
    _add_run_options(sensitivity, sweep=False)
    _add_json(sensitivity)
    sensitivity.set_defaults(func=cmd_sensitivity)

    search = sub.add_parser(
        "search",
        help="mixed precision: choose a setting per layer for a budget, then verify it",
        description="Measure per-layer sensitivity, choose one setting per layer with the least "
        "predicted damage for each budget (or points along the whole front), and evaluate the "
        "chosen plans, the baselines and the uniform plans like sweep rows. Give one budget kind; "
        "several comma-separated budgets of that kind are allowed.",
    )
    _add_model_options(search)
    budget = search.add_argument_group("budget (one kind)")
    budget.add_argument(
        "--budget-size", metavar="SIZES", default=None, help="bytes stored: 3.5MB, 512KiB, 200000"
    )
    budget.add_argument(
        "--budget-latency", metavar="MS", default=None, help="primary workload latency: 2.5ms"
    )
    budget.add_argument(
        "--max-drop",
        metavar="DROPS",
        default=None,
        help="largest predicted metric drop: 0.01 (accuracy points)",
    )
    budget.add_argument(
        "--points",
        metavar="N",
        type=int,
        default=None,
        help="plans spread along the front (default 6)",
    )
    _add_sensitivity_options(search)
    search.add_argument(
        "--damage",
        choices=("metric_drop", "kl"),
        default="metric_drop",
        help="what the search minimizes (default metric_drop)",
    )
    search.add_argument(
        "--no-uniform", action="store_true", help="do not evaluate the uniform plans alongside"
    )
    _add_run_options(search, sweep=True)
    _add_json(search)
    search.set_defaults(func=cmd_search)

    export = sub.add_parser(
        "export",
        help="write one quantized model with its plan and a snippet to reapply it",
        description="Quantize the model with one plan (a plan JSON file, or one value per config "
        "option) and write plan.json, model.safetensors, reapply.py and README.txt to --out.",
    )
    _add_model_options(export)
    export.add_argument(
        "--plan",
        metavar="FILE",
        default=None,
        help="plan JSON: a plan, a sweep row, or an export's plan.json",
    )
    _add_config_options(export, single=True)
    export.add_argument("--out", metavar="FOLDER", required=True, help="export folder")
    export.add_argument(
        "--overwrite", action="store_true", help="replace an earlier export in --out"
    )
    _add_run_options(export, sweep=False)
    _add_json(export)
    export.set_defaults(func=cmd_export)
    return parser


def _add_sensitivity_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--settings",
        metavar="LIST",
        default=None,
        help="candidate settings, comma-separated, e.g. 'W8 channel,W4 g32,W2 g32' (default: the "
        "six standard ones from W8 channel to W2 g32)",
    )
    parser.add_argument(
        "--samples",
        metavar="N",
        type=_positive,
        default=None,
        help="calibration-split samples to measure the metric on",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already reported on one line
        return exc.code if isinstance(exc.code, int) else 2
    func: Callable[[argparse.Namespace], dict[str, Any]] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    try:
        result = func(args)
    except (ExplorerError, ValueError, OSError) as exc:
        message = " ".join(str(exc).split())
        print(f"explorer {args.command}: error: {message}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the contract: one line, never a traceback
        message = " ".join(str(exc).split())
        print(
            f"explorer {args.command}: internal error: {type(exc).__name__}: {message}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt as exc:
        print(f"explorer {args.command}: {exc or 'interrupted'}", file=sys.stderr)
        return INTERRUPTED_EXIT
    if args.json:
        print(json.dumps(_finite_or_none(result), separators=(",", ":"), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
