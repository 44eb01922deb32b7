"""The options the subcommands share: the one-line-error parser, option types and quantities
(``3.5MB``, ``2.5ms``), and the model and run option groups.

Imports nothing heavier than `explorer.paths` at module level, so that ``explorer --help`` stays
fast (`explorer.machine` imports torch, so ``--threads`` reads it only when given).
"""

from __future__ import annotations

import argparse
import re
from typing import NoReturn

from explorer import paths
from explorer.errors import ExplorerError

DEFAULT_STORE = paths.DEFAULT_STORE
STORE_ENV = paths.STORE_ENV

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


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (the contract), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def thread_count(text: str) -> int:
    """``--threads``: 1 to the usable CPUs. More threads than CPUs only slow a run down, and tens
    of thousands make OpenMP fail to create them or crash the process without a word."""
    from explorer.machine import usable_cpus

    value = positive_int(text)
    cpus = usable_cpus()
    if value > cpus:
        raise argparse.ArgumentTypeError(
            f"{value} is more than the {cpus} CPU(s) this process may use; give 1 to {cpus}"
        )
    return value


def name_list(text: str | None) -> list[str]:
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


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="end with one JSON line on stdout")


def add_model_options(parser: argparse.ArgumentParser) -> None:
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
        choices=("lm", "causal-lm", "embedding", "classification", "speech", "fidelity"),
        default=None,
        help="what a Hugging Face model does (default: recognised from its architecture)",
    )
    group.add_argument(
        "--threads",
        metavar="N",
        type=thread_count,
        default=None,
        help="torch threads (at most the CPUs)",
    )


def add_run_options(parser: argparse.ArgumentParser, *, sweep: bool) -> None:
    group = parser.add_argument_group("run settings")
    group.add_argument(
        "--calibration-samples",
        metavar="N",
        type=positive_int,
        default=128,
        help="calibration inputs for static activation ranges (default 128)",
    )
    group.add_argument(
        "--seed", metavar="N", type=int, default=0, help="bootstrap and QAT seed (default 0)"
    )
    if not sweep:
        return
    group.add_argument(
        "--repeats", metavar="N", type=positive_int, default=20, help="timed calls (default 20)"
    )
    group.add_argument(
        "--n-boot",
        metavar="N",
        type=positive_int,
        default=1000,
        help="bootstrap resamples (default 1000)",
    )
    budget = group.add_mutually_exclusive_group()
    budget.add_argument(
        "--eval-tokens",
        metavar="N",
        type=positive_int,
        default=None,
        help="evaluation budget of a language model: tokens scored (default: the task's, 16384)",
    )
    budget.add_argument(
        "--eval-samples",
        metavar="N",
        type=positive_int,
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
