"""Wall time of the sweeps the sweep issue sets goals for, each into a fresh results store.

0. the app's default sweep exactly as the Model page starts it (``app-default``): the entries of
   `explorer.sweep.default.default_entries` with its `DEFAULT_RUN` settings, in a spawned
   `SweepProcess` worker, timed from the start of the worker (interpreter, imports, model load)
   to its last row (goal: under 1 minute on a 2-core machine, issue 17);
1. the default sweep of the default model from the command line (``explorer sweep``, the same
   entries with the command line's run settings: more timing repeats and bootstrap resamples;
   goal: under 1 minute);
2. ``explorer sweep --model digits-cnn --bits 8,4,3,2 --granularity tensor,channel,group32
   --method ptq,qat`` (goal: under 3 minutes);
3. the same command again on the same store (every row reused).

Each command runs as a subprocess of the installed ``explorer`` console script, exactly as a
user runs it, so the time includes interpreter start, imports and model loading. Besides the
wall time, the CPU time (user + system) of the child process is recorded: on a machine shared
with other work the wall time grows with the load, the CPU time much less, and a sweep that fits
the goal in CPU seconds at one thread fits it in wall seconds on two quiet cores. Prints a table,
then one JSON line (the last line on stdout).

Usage: python benchmarks/sweep_time.py [--threads N] [--only app-default ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOALS = {
    "app-default": 60.0,
    "default": 60.0,
    "digits-ptq-qat": 180.0,
    "digits-ptq-qat-again": None,
}
FULL = [
    "--model",
    "digits-cnn",
    "--bits",
    "8,4,3,2",
    "--granularity",
    "tensor,channel,group32",
    "--method",
    "ptq,qat",
]


def _child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(args: list[str], store: Path, threads: int | None) -> tuple[float, dict]:
    explorer = Path(sys.executable).parent / "explorer"
    cmd = [str(explorer), "sweep", *args, "--store", str(store), "--json"]
    if threads:
        cmd += ["--threads", str(threads)]
    cpu = _child_cpu_seconds()
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    return seconds, {**doc, "cpu_s": _child_cpu_seconds() - cpu}


def run_app_default(store: Path, threads: int | None) -> tuple[float, dict]:
    """The Model page's default sweep: expand against the (already open) model, then time the
    worker process from its start to its last event."""
    from explorer.models.catalog import DEFAULT_MODEL
    from explorer.sweep.context import ModelSource, open_context
    from explorer.sweep.default import DEFAULT_RUN, default_entries
    from explorer.sweep.worker import SweepProcess

    source = ModelSource(model=DEFAULT_MODEL)
    entries, _ = default_entries(open_context(source).model)
    cpu = _child_cpu_seconds()
    start = time.perf_counter()
    process = SweepProcess(
        source, str(store), entries=entries, settings=DEFAULT_RUN, threads=threads
    ).start()
    process.wait()
    seconds = time.perf_counter() - start
    process.terminate()  # joins it, so that its CPU time is counted
    kinds = [event.kind for event in process.history]
    if "error" in kinds or "failed" in kinds:
        reasons = [e.reason for e in process.history if e.kind in ("error", "failed")]
        raise SystemExit(f"the app's default sweep failed: {reasons}")
    rows = [event.row for event in process.history if event.kind in ("row", "cached")]
    return seconds, {
        "rows": rows,
        "evaluated": kinds.count("row"),
        "cached": kinds.count("cached"),
        "cpu_s": _child_cpu_seconds() - cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--only", choices=sorted(GOALS), action="append", help="time only these (repeatable)"
    )
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.only or "app-default" in args.only:
            seconds, doc = run_app_default(Path(tmp) / "app.sqlite", args.threads)
            results.append(_result("app-default", seconds, doc))
        cases = [
            ("default", [], Path(tmp) / "a.sqlite"),
            ("digits-ptq-qat", FULL, Path(tmp) / "b.sqlite"),
            ("digits-ptq-qat-again", FULL, Path(tmp) / "b.sqlite"),
        ]
        for name, cli_args, store in cases:
            if args.only and name not in args.only:
                continue
            seconds, doc = run(cli_args, store, args.threads)
            results.append(_result(name, seconds, doc))
    print(f"{'sweep':24s} {'seconds':>8s} {'cpu s':>7s} {'rows':>5s} {'new':>5s} {'goal':>6s}  met")
    for r in results:
        goal = "-" if r["goal_s"] is None else f"{r['goal_s']:.0f}"
        print(
            f"{r['sweep']:24s} {r['seconds']:8.1f} {r['cpu_s']:7.1f} {r['rows']:5d} "
            f"{r['evaluated']:5d} {goal:>6s}  {'-' if r['met'] is None else r['met']}"
        )
    env = {"cpus": os.cpu_count(), "threads": args.threads, "load_average": os.getloadavg()[0]}
    print(json.dumps({"env": env, "results": results}))


def _result(name: str, seconds: float, doc: dict) -> dict:
    goal = GOALS[name]
    return {
        "sweep": name,
        "seconds": round(seconds, 1),
        "cpu_s": round(doc["cpu_s"], 1),
        "rows": len(doc["rows"]),
        "evaluated": doc["evaluated"],
        "cached": doc["cached"],
        "goal_s": goal,
        "met": None if goal is None else seconds <= goal,
    }


if __name__ == "__main__":
    main()
