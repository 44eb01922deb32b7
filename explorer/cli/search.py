"""``sensitivity`` and ``search``: per-layer sensitivity, and the mixed-precision search that
builds on it under one kind of budget (size, latency, metric drop, or points along the front)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from explorer.cli.options import name_list, parse_latency, parse_size, positive_int
from explorer.cli.runs import (
    Tally,
    context_from_args,
    executor_from_args,
    interrupted_error,
    progress_bar,
    settings_from_args,
    store_from_args,
)
from explorer.cli.sweep import flag_fronts, in_entry_order, print_rows, report_failures
from explorer.errors import ExplorerError

if TYPE_CHECKING:
    from explorer.sweep.context import ModelContext
    from explorer.sweep.sensitivity import Sensitivity


# --- sensitivity --------------------------------------------------------------------------------


def _settings_list(args: argparse.Namespace) -> list[str]:
    from explorer.sweep.sensitivity import DEFAULT_SETTINGS, setting_config

    names = name_list(args.settings) if args.settings is not None else list(DEFAULT_SETTINGS)
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
    bar = progress_bar(0, f"sensitivity {ctx.name}")

    def progress(done: int, total: int, message: str) -> None:
        bar.total = total
        bar.n = done
        bar.set_description(message)
        bar.refresh()

    try:
        return measure_sensitivity(
            ctx,
            settings,
            layers=name_list(getattr(args, "layers", None)) or None,
            full_metric=full_metric,
            latency=latency,
            samples=args.samples,
            calibration_samples=args.calibration_samples,
            progress=progress,
            mode=getattr(args, "sensitivity_mode", "auto"),
        )
    finally:
        bar.close()


def cmd_sensitivity(args: argparse.Namespace) -> dict[str, Any]:
    from explorer.sweep.store import finite_or_none

    _settings_list(args)
    ctx = context_from_args(args)
    result = _measure(args, ctx, full_metric=not args.weight_only, latency=not args.no_latency)
    doc = finite_or_none(result.to_dict())
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
    texts = name_list(getattr(args, option[2:].replace("-", "_")))
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
    from explorer.sweep.store import finite_or_none

    kind, budgets, points = _budgets(args)
    _settings_list(args)
    settings = settings_from_args(args)
    store = store_from_args(args)
    try:
        store.check_writable()  # before the model loads and any row is evaluated
        ctx = context_from_args(args)
        executor = executor_from_args(args, ctx)
        sensitivity = _measure(args, ctx, full_metric=True, latency=kind == "latency")
        tally = Tally(0, "verify")
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
            raise interrupted_error(tally.counts["evaluated"]) from None
        finally:
            tally.bar.close()
    finally:
        store.close()
    counts, failed = tally.counts, tally.failed
    report_failures("search", failed, len(tally.rows))
    rows = in_entry_order(outcome.entries, outcome.rows)
    axis = flag_fronts(rows, ctx.metric)
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
        print_rows(rows, axis[0])
        print(f"front, uniform plans only: {', '.join(fronts['uniform']) or 'none'}")
        print(f"front, with mixed plans:   {', '.join(fronts['all']) or 'none'}")
    return {
        "model": ctx.name,
        "sensitivity_seconds": sensitivity.seconds,
        "allocations": [finite_or_none(a.to_dict()) for a in outcome.allocations],
        "rows": rows,
        "fronts": fronts,
        "failed": failed,
        "store": str(store.path),
        "cached": counts["cached"],
        "evaluated": counts["evaluated"],
    }


def add_sensitivity_options(parser: argparse.ArgumentParser) -> None:
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
        type=positive_int,
        default=None,
        help="calibration-split samples to measure the metric on",
    )
    parser.add_argument(
        "--sensitivity-mode",
        choices=("auto", "measured", "proxy"),
        default="auto",
        help="measured: each layer quantized alone and the metric measured; proxy: its weight "
        "error weighted by its input's energy, from one calibration pass (round-to-nearest "
        "weight-only settings); auto (default): the proxy for models of more than 100 layers",
    )
