"""The reliability tests' CLI driver: run `explorer.cli.main` in process and check the one-line
error contract; a stand-in row for sweeps that need not measure anything."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest

from explorer import cli
from explorer.sweep import runner
from explorer.sweep.context import ModelContext
from explorer.sweep.space import PlanEntry

FAST = ("--repeats", "3", "--n-boot", "200", "--threads", "1")
REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `explorer.cli.main` run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(
    code: int, out: str, err: str, *fragments: str, progress: bool = False
) -> str:
    """Exit 2, nothing on stdout, exactly one line on stderr holding every fragment (besides
    the progress bar's updates when ``progress``); that line is returned."""
    assert code == 2, err
    assert out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    if progress:
        lines = [line for line in lines if "row/s" not in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def stand_in_row(
    ctx: ModelContext, entry: PlanEntry, settings: Any, env: Any = None, progress: Any = None
) -> dict[str, Any]:
    """A row with the fields the CLI reads, without quantizing or timing anything."""
    return {
        "model": ctx.name,
        "label": entry.label,
        "kind": entry.kind,
        "config": entry.plan.to_dict(),
        **entry.flat,
        "qat_steps": entry.qat_steps,
        "size_bytes": 1000,
        "bits_per_weight": None,
        "latency_ms": 1.0,
        "latency_kind": "measured",
        "metrics": {"accuracy": 0.5},
        "metrics_ci": {},
    }


def count_evaluations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace `evaluate_entry` by stand-in rows; the list it returns fills with the labels."""
    calls: list[str] = []

    def evaluate(ctx: ModelContext, entry: PlanEntry, *args: Any) -> dict[str, Any]:
        calls.append(entry.label)
        return stand_in_row(ctx, entry, *args)

    monkeypatch.setattr(runner, "evaluate_entry", evaluate)
    return calls
