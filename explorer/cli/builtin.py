"""``bench``, ``models`` and ``train``: the commands on what ships with the explorer, its
kernels and its built-in models; none of them takes the model options or the results store."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from explorer.errors import ExplorerError


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from tqdm import tqdm

    from explorer.measure import emulate
    from explorer.measure.bench import format_table, run_bench

    emulate.apply()  # in the child of `--isa`: our kernels to that path, before any use
    if args.clock == "cpu" and (args.threads or torch.get_num_threads()) != 1:
        raise ValueError("--clock cpu counts one thread's CPU time: use it with --threads 1")
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
            ggml_formats=tuple(f.strip() for f in args.ggml.split(",") if f.strip()),
            clock=args.clock,
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
        if model.extra.get("install"):  # listed, but its optional extra is not installed
            rows[-1]["install"] = model.extra["install"]
    if not args.json:
        from explorer.measure.display import format_metric

        for r in rows:
            star = "*" if r["default"] else " "
            shown = format_metric(r["metric"]["name"], r["metric"]["value"])
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
