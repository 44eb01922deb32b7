"""Wall time of the sweeps the sweep issue sets goals for, each into a fresh results store.

1. the default PTQ sweep of the default model (``explorer sweep``; goal: under 1 minute on a
   2-core machine);
2. ``explorer sweep --model digits-cnn --bits 8,4,3,2 --granularity tensor,channel,group32
   --method ptq,qat`` (goal: under 3 minutes);
3. the same command again on the same store (every row reused).

Each command runs as a subprocess of the installed ``explorer`` console script, exactly as a
user runs it, so the time includes interpreter start, imports and model loading. Prints a
table, then one JSON line (the last line on stdout).

Usage: python benchmarks/sweep_time.py [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOALS = {"default": 60.0, "digits-ptq-qat": 180.0, "digits-ptq-qat-again": None}
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


def run(args: list[str], store: Path, threads: int | None) -> tuple[float, dict]:
    explorer = Path(sys.executable).parent / "explorer"
    cmd = [str(explorer), "sweep", *args, "--store", str(store), "--json"]
    if threads:
        cmd += ["--threads", str(threads)]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [
            ("default", [], Path(tmp) / "a.sqlite"),
            ("digits-ptq-qat", FULL, Path(tmp) / "b.sqlite"),
            ("digits-ptq-qat-again", FULL, Path(tmp) / "b.sqlite"),
        ]
        for name, cli_args, store in cases:
            seconds, doc = run(cli_args, store, args.threads)
            goal = GOALS[name]
            results.append(
                {
                    "sweep": name,
                    "seconds": round(seconds, 1),
                    "rows": len(doc["rows"]),
                    "evaluated": doc["evaluated"],
                    "cached": doc["cached"],
                    "goal_s": goal,
                    "met": None if goal is None else seconds <= goal,
                }
            )
    print(f"{'sweep':24s} {'seconds':>8s} {'rows':>5s} {'new':>5s} {'goal':>6s}  met")
    for r in results:
        goal = "-" if r["goal_s"] is None else f"{r['goal_s']:.0f}"
        print(
            f"{r['sweep']:24s} {r['seconds']:8.1f} {r['rows']:5d} {r['evaluated']:5d} {goal:>6s}"
            f"  {'-' if r['met'] is None else r['met']}"
        )
    env = {"cpus": os.cpu_count(), "load_average": os.getloadavg()[0]}
    print(json.dumps({"env": env, "results": results}))


if __name__ == "__main__":
    main()
