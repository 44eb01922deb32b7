"""What the subcommands share: the one-line-error parser, option types and quantities
(``3.5MB``, ``2.5ms``), the model and run option groups, opening the model context, the results
store and the executor from those options, and the progress bar with its tally of rows.

Imports from the library only lazily, inside the functions, so that ``explorer --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from explorer import paths
from explorer.errors import ExplorerError

if TYPE_CHECKING:
    from tqdm import tqdm

    from explorer.sweep.context import ModelContext, ModelSource
    from explorer.sweep.runner import Executor, RunSettings, SweepEvent
    from explorer.sweep.store import ResultStore


DEFAULT_STORE = paths.DEFAULT_STORE
STORE_ENV = paths.STORE_ENV
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


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (what a container or ``taskset``
    grants), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _threads(text: str) -> int:
    """``--threads``: 1 to the usable CPUs. More threads than CPUs only slow a run down, and tens
    of thousands make OpenMP fail to create them or crash the process without a word."""
    value = _positive(text)
    cpus = usable_cpus()
    if value > cpus:
        raise argparse.ArgumentTypeError(
            f"{value} is more than the {cpus} CPU(s) this process may use; give 1 to {cpus}"
        )
    return value


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
    group.add_argument(
        "--task",
        choices=("lm", "causal-lm", "embedding", "classification", "fidelity"),
        default=None,
        help="what a Hugging Face model does (default: recognised from its architecture)",
    )
    group.add_argument(
        "--threads",
        metavar="N",
        type=_threads,
        default=None,
        help="torch threads (at most the CPUs)",
    )


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
    budget = group.add_mutually_exclusive_group()
    budget.add_argument(
        "--eval-tokens",
        metavar="N",
        type=_positive,
        default=None,
        help="evaluation budget of a language model: tokens scored (default: the task's, 16384)",
    )
    budget.add_argument(
        "--eval-samples",
        metavar="N",
        type=_positive,
        default=None,
        help="evaluation budget of other tasks: samples scored (default: the whole split)",
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
        model=model,
        weights=args.weights,
        factory=args.model_factory,
        data=args.data,
        task=getattr(args, "task", None),
    )


def _open_context(args: argparse.Namespace) -> ModelContext:
    from explorer.sweep.context import open_context

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    ctx = open_context(_model_source(args))
    for warning in getattr(ctx, "warnings", ()):  # e.g. a head initialised at random
        print(f"explorer {args.command}: warning: {warning}", file=sys.stderr)
    return ctx


def _store_path(args: argparse.Namespace) -> Path:
    return Path(args.store).expanduser() if args.store else paths.store_path()


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
        eval_budget=getattr(args, "eval_tokens", None) or getattr(args, "eval_samples", None),
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
