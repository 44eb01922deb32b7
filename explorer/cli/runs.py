"""What a command opens from its options and how it reports: the model source and context, the
results store, the run settings and the executor, and the progress bar with its tally of rows.

Imports from the library only lazily, inside the functions, so that ``explorer --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorer import paths

if TYPE_CHECKING:
    from tqdm import tqdm

    from explorer.sweep.context import ModelContext, ModelSource
    from explorer.sweep.runner import Executor, RunSettings, SweepEvent
    from explorer.sweep.store import ResultStore

INTERRUPTED_EXIT = 130


def source_from_args(args: argparse.Namespace) -> ModelSource:
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


def context_from_args(args: argparse.Namespace) -> ModelContext:
    from explorer.sweep.context import open_context

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    ctx = open_context(source_from_args(args))
    for warning in getattr(ctx, "warnings", ()):  # e.g. a head initialised at random
        print(f"explorer {args.command}: warning: {warning}", file=sys.stderr)
    return ctx


def store_path_from_args(args: argparse.Namespace) -> Path:
    return Path(args.store).expanduser() if args.store else paths.store_path()


def store_from_args(args: argparse.Namespace) -> ResultStore:
    from explorer.sweep.store import ResultStore

    return ResultStore(store_path_from_args(args))


def settings_from_args(args: argparse.Namespace) -> RunSettings:
    from explorer.sweep.runner import RunSettings

    return RunSettings(
        calibration_samples=args.calibration_samples,
        seed=args.seed,
        n_boot=args.n_boot,
        repeats=args.repeats,
        eval_budget=getattr(args, "eval_tokens", None) or getattr(args, "eval_samples", None),
    )


def executor_from_args(args: argparse.Namespace, ctx: ModelContext) -> Executor:
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


def interrupted_error(stored: int) -> KeyboardInterrupt:
    """What main prints on Ctrl-C: every finished row is already committed to the store."""
    return KeyboardInterrupt(
        f"interrupted: {stored} rows stored; run the same command again to resume"
    )


def progress_bar(total: int, desc: str) -> tqdm:
    from tqdm import tqdm

    return tqdm(total=total, file=sys.stderr, unit="row", desc=desc, dynamic_ncols=True)


class Tally:
    """The progress bar of a sweep or search on stderr, and what its events came to: the rows
    (evaluated or from the store), how many of each, and the failures. Call it with each event."""

    def __init__(self, total: int, desc: str) -> None:
        self.bar = progress_bar(total, desc)
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
