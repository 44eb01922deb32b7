"""``sensitivity`` and ``search``: per-layer sensitivity, and the mixed-precision search that
builds on it under one kind of budget (size, latency, metric drop, or points along the front)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
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


def _bar_progress(bar: Any) -> Callable[[int, int, str], None]:
    """``progress(done, total, message)`` drawing on ``bar`` (a tqdm bar)."""

    def progress(done: int, total: int, message: str) -> None:
        bar.total = total
        bar.n = done
        bar.set_description(message)
        bar.refresh()

    return progress


def _measure(
    args: argparse.Namespace, ctx: ModelContext, *, full_metric: bool, latency: bool
) -> Sensitivity:
    from explorer.sweep.sensitivity import measure_sensitivity

    settings = _settings_list(args)
    bar = progress_bar(0, f"sensitivity {ctx.name}")
    progress = _bar_progress(bar)
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


def _bpw_budgets(args: argparse.Namespace) -> list[float]:
    """``--target-bpw``: bits-per-weight budgets, checked before the model loads."""
    texts = name_list(args.target_bpw)
    try:
        budgets = [float(v) for v in texts]
    except ValueError:
        raise ExplorerError(f"--target-bpw takes numbers, got {args.target_bpw!r}") from None
    bad = [v for v in budgets if not v > 0 or v == float("inf")]
    if not budgets or bad:
        raise ExplorerError(f"--target-bpw takes positive bits per weight (4.5), got {texts}")
    return budgets


def cmd_search_llamacpp(args: argparse.Namespace) -> dict[str, Any]:
    """``search --target llamacpp --target-bpw 4.5``: a ggml type per tensor within the budget
    (`explorer.sweep.ggml_search`), each mix run in llama.cpp next to the uniform types."""
    from explorer.sweep.ggml_search import parse_formats, search_bpw
    from explorer.sweep.store import finite_or_none
    from explorer.targets.llamacpp import check_runtime

    others = [
        option
        for option, value in (
            ("--budget-size", args.budget_size),
            ("--budget-latency", args.budget_latency),
            ("--max-drop", args.max_drop),
            ("--points", args.points),
            ("--settings", args.settings),
        )
        if value is not None
    ]
    if others:
        raise ExplorerError(
            f"--target llamacpp searches ggml types (--formats) at --target-bpw; drop "
            f"{', '.join(others)}"
        )
    if args.target_bpw is None:
        raise ExplorerError("--target llamacpp needs a bits-per-weight budget: --target-bpw 4.5")
    budgets = _bpw_budgets(args)
    formats = parse_formats(args.formats)
    check_runtime()
    ctx = context_from_args(args)
    bar = progress_bar(0, f"ggml sensitivity {ctx.name}")
    progress = _bar_progress(bar)
    try:
        outcome = search_bpw(
            ctx,
            budgets,
            formats,
            mode=args.sensitivity_mode,
            windows=args.samples or 8,
            uniform="none" if args.no_uniform else args.uniform,
            threads=args.threads,
            eval_budget=getattr(args, "eval_tokens", None),
            n_boot=args.n_boot,
            seed=args.seed,
            repeats=args.repeats,
            progress=progress,
        )
    finally:
        bar.close()
    rows = [finite_or_none(r) for r in outcome.rows]
    axis = flag_fronts(rows, ctx.metric)
    if not args.json:
        print_rows(rows, axis[0])
        for row in rows:
            if row["kind"] == "mixed":
                counts = ", ".join(f"{n} {t}" for t, n in row["type_counts"].items())
                print(
                    f"{row['label']}: {row['bits_per_weight_file']:.4f} bits per weight in the "
                    f"GGUF file ({counts}); closest uniform: {row['closest_uniform']}"
                )
    return {
        "model": ctx.name,
        "target": "llamacpp",
        "target_bpw": budgets,
        "formats": list(formats),
        "sensitivity": finite_or_none(outcome.sensitivity.to_dict()),
        "sensitivity_seconds": outcome.sensitivity.seconds,
        "rows": rows,
    }


def cmd_search(args: argparse.Namespace) -> dict[str, Any]:
    from explorer.sweep.mixed import search_and_verify
    from explorer.sweep.pareto import flag_pareto, front_order
    from explorer.sweep.store import finite_or_none

    target = getattr(args, "target", "native")
    if target == "llamacpp":
        return cmd_search_llamacpp(args)
    if target != "native":
        raise ExplorerError(f"search runs on the native or llamacpp target, not {target!r}")
    for option in ("target_bpw", "formats"):
        if getattr(args, option, None) is not None:
            raise ExplorerError(f"--{option.replace('_', '-')} needs --target llamacpp")
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
