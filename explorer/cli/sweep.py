"""``sweep``: the sweep spec from the config options (`build_spec`), the run, and the rows it
prints. The row table and the Pareto flags are shared with ``search``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from explorer.cli.options import name_list, positive_int
from explorer.cli.runs import (
    Tally,
    context_from_args,
    executor_from_args,
    interrupted_error,
    settings_from_args,
    store_from_args,
)
from explorer.errors import ExplorerError

if TYPE_CHECKING:
    from explorer.sweep.space import PlanEntry, SweepSpec


def flag_fronts(rows: list[dict[str, Any]], metric: str | None) -> tuple[str, str]:
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


def in_entry_order(entries: Sequence[PlanEntry], rows: Sequence[dict[str, Any]]) -> list[dict]:
    """The rows in the order of their entries, matched by plan and QAT budget (labels need not
    be unique), each plan once, labelled as its entry is now (a row from the store keeps the
    label it was stored with, which may predate a fallback being named in it)."""
    from explorer.sweep.store import finite_or_none

    def identity(plan: dict[str, Any], qat_steps: Any) -> tuple[str, Any]:
        return json.dumps(plan, sort_keys=True, separators=(",", ":")), qat_steps

    by_plan = {identity(r["config"], r.get("qat_steps")): r for r in rows}
    labels: dict[tuple[str, Any], str] = {}
    for e in entries:
        labels.setdefault(identity(e.plan.to_dict(), e.qat_steps), e.label)
    return [
        finite_or_none({**by_plan[key], "label": label})
        for key, label in labels.items()
        if key in by_plan
    ]


def rows_table(rows: Sequence[dict[str, Any]], metric_path: str) -> str:
    """The rows as a text table: each number through `explorer.measure.display.format_metric`
    (the formatter of the app's pages and figures), so a value reads the same everywhere."""
    from explorer.measure.display import MISSING, format_metric, format_metric_delta

    name = metric_path.split(".", 1)[1]
    cells = []
    for r in rows:
        latency = format_metric("latency_ms", r.get("latency_ms"))
        if r.get("latency_kind") == "simulated":
            latency += " (sim)"
        value = (r.get("metrics") or {}).get(name)
        ci = (r.get("metrics_ci") or {}).get(name)
        shown = format_metric(name, value)
        if value is not None and ci and None not in ci:
            lo, hi = (format_metric_delta(name, v) for v in ci)
            shown += f"  Δ95% [{lo}, {hi}]"
        bits = r.get("bits_per_weight")
        cells.append(
            (
                "*" if r.get("pareto") else " ",
                str(r.get("label", "")),
                format_metric("size_bytes", r.get("size_bytes")),
                MISSING if bits is None else f"{bits:.2f}",
                latency,
                shown,
            )
        )
    width = max([len("config"), *(len(c[1]) for c in cells)])
    size_w = max([len("size"), *(len(c[2]) for c in cells)])
    latency_w = max([len("latency"), *(len(c[4]) for c in cells)])
    lines = [
        f"  {'config':{width}}  {'size':>{size_w}}  {'bits/w':>6}  {'latency':>{latency_w}}  {name}"
    ]
    lines += [
        f"{star} {label:{width}}  {size:>{size_w}}  {bits:>6}  {latency:>{latency_w}}  {shown}"
        for star, label, size, bits, latency, shown in cells
    ]
    lines.append("* on the size/metric Pareto front; Δ: 95 % interval of the change against fp32")
    return "\n".join(lines)


def print_rows(rows: Sequence[dict[str, Any]], metric_path: str) -> None:
    print(rows_table(rows, metric_path))


def report_failures(command: str, failed: Sequence[dict[str, str]], rows: int) -> None:
    """Each failed configuration on one stderr line; raise when not one configuration, baselines
    included, gave a row (from the store or evaluated): a sweep that shows nothing has failed."""
    from explorer.sweep.runner import NothingEvaluatedError

    for f in failed:
        reason = " ".join(f["reason"].split())
        print(f"explorer {command}: failed {f['config']}: {reason}", file=sys.stderr)
    if failed and not rows:
        first = failed[0]
        reason = " ".join(first["reason"].split())
        raise NothingEvaluatedError(
            f"none of the {len(failed)} configurations could be evaluated, baselines included "
            f"(first, {first['config']}: {reason})"
        )


def dimension_options() -> tuple[str, ...]:
    """The sweep's axes as this command's option names (``weight_bits`` is ``--bits``)."""
    from explorer.sweep.space import DIMENSIONS

    return tuple("bits" if d == "weight_bits" else d for d in DIMENSIONS)


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
        changes["layers"] = tuple(name_list(args.layers))
    if args.fallback is not None:
        changes["fallback"] = args.fallback
    return changes


def build_spec(args: argparse.Namespace) -> SweepSpec:
    """``--default``, or no dimension option at all, starts from `DEFAULT_SPEC` (the default
    sweep's post-training grid); any option given replaces that dimension."""
    from explorer.sweep.default import DEFAULT_SPEC
    from explorer.sweep.space import SweepSpec

    changes = _spec_changes(args)
    given = any(getattr(args, d) is not None for d in dimension_options())
    base = DEFAULT_SPEC if getattr(args, "default", False) or not given else SweepSpec()
    return dataclasses.replace(base, **changes)


def add_config_options(parser: argparse.ArgumentParser, *, single: bool) -> None:
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
        "--qat-steps", metavar="N", type=positive_int, default=None, help="QAT steps (default 200)"
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


def _targets(args: argparse.Namespace) -> list[str]:
    """``--target``: comma-separated target names, each checked before any row runs."""
    from explorer.targets import get_target

    names = [t.strip() for t in str(getattr(args, "target", "native")).split(",") if t.strip()]
    formats = [f.strip() for f in (getattr(args, "formats", None) or "").split(",") if f.strip()]
    # llama.cpp runs one ggml format per row: llamacpp becomes llamacpp:q8_0, llamacpp:q4_k, ...
    names = [f"{n}:{f}" for n in names for f in (formats if n == "llamacpp" and formats else [""])]
    names = [n.rstrip(":") for n in names]
    for name in names:
        get_target(name)  # an unknown name or a missing runtime fails here, with its reason
    return names or ["native"]


def _evaluation_bar() -> Any:
    """``progress(done, total, stage)`` drawing a tqdm bar on stderr over one evaluation's
    batches or one QAT row's training steps, with tqdm's estimate of the time left (long
    evaluations: a 0.5 B model's 16k tokens; long training: Whisper's seconds a step)."""
    from tqdm import tqdm

    state: dict[str, Any] = {}

    def progress(done: int, total: int, stage: str = "evaluate") -> None:
        bar = state.get("bar")
        if bar is None or done == 1:
            if bar is not None:
                bar.close()
            desc, unit = ("QAT", "step") if stage == "qat" else ("evaluate", "batch")
            bar = state["bar"] = tqdm(
                total=total, file=sys.stderr, unit=unit, desc=desc, leave=False
            )
        bar.update(done - bar.n)
        if done == total:
            state.pop("bar").close()

    return progress


def cmd_sweep(args: argparse.Namespace) -> dict[str, Any]:
    from explorer.sweep.default import default_entries
    from explorer.sweep.runner import run_sweep
    from explorer.sweep.space import expand

    spec = build_spec(args)
    settings = settings_from_args(args)
    store = store_from_args(args)
    try:
        store.check_writable()  # before the model loads and any row is evaluated
        ctx = context_from_args(args)
        executor = executor_from_args(args, ctx)
        if hasattr(executor, "progress"):  # in this process: a bar per evaluation
            executor.progress = _evaluation_bar()
        # Without config options: the app's default sweep, its one QAT row included.
        as_is = not _spec_changes(args)
        entries, skipped = default_entries(ctx.model) if as_is else expand(spec, ctx.model)
        ordered, failed, counts = [], [], {"cached": 0, "evaluated": 0}
        for target in _targets(args):  # the target dimension: every entry on each target
            settings = dataclasses.replace(settings, target=target)
            # llama.cpp quantizes the float model in its own formats: its rows start from fp32
            run = (
                [e for e in entries if e.label == "fp32"]
                if target.startswith("llamacpp")
                else entries
            )
            tally = Tally(len(run), f"sweep {ctx.name} on {target}")
            try:
                for event in run_sweep(ctx, run, store, settings=settings, executor=executor):
                    tally(event)
            except KeyboardInterrupt:
                raise interrupted_error(tally.counts["evaluated"]) from None
            finally:
                tally.bar.close()
            ordered += in_entry_order(run, tally.rows)
            failed += tally.failed
            for name in counts:
                counts[name] += tally.counts[name]
    finally:
        store.close()
    report_failures("sweep", failed, len(ordered))
    axis = flag_fronts(ordered, ctx.metric)
    baseline = {
        r["label"]: {**r["metrics"], "size_bytes": r["size_bytes"], "latency_ms": r["latency_ms"]}
        for r in ordered
        if r.get("kind") == "baseline"
    }
    if not args.json:
        print_rows(ordered, axis[0])
        for s in skipped:
            print(f"skipped {s.label}: {s.reason}")
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
