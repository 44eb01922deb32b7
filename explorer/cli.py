"""The ``explorer`` command: a thin shell over the library.

Every subcommand takes ``--json`` and then prints exactly one JSON document as the last line of
stdout; progress goes to stderr. Errors exit non-zero with a one-line message on stderr, never a
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from explorer.errors import ExplorerError


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


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from tqdm import tqdm

    from explorer.measure.bench import format_table, run_bench

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
    if not args.json:
        for r in rows:
            star = "*" if r["default"] else " "
            value = r["metric"]["value"]
            shown = "n/a" if value is None else f"{value:.4g}"
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="explorer",
        description="Quantization Explorer: quantize models per layer and measure size, latency "
        "and accuracy on real int8/int4 kernels.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = sub.add_parser(
        "bench",
        help="time fp32, bf16 and every real int8/int4 kernel on linear layers and a convolution",
    )
    bench.add_argument("--m", type=_int_list, default=(1, 8, 32), help="rows M (default 1,8,32)")
    bench.add_argument("--k", type=_positive, default=4096, help="in features K (default 4096)")
    bench.add_argument("--n", type=_positive, default=4096, help="out features N (default 4096)")
    bench.add_argument("--repeats", type=_positive, default=30, help="timed calls per kernel")
    bench.add_argument("--threads", type=_positive, default=None, help="torch threads")
    bench.add_argument("--no-conv", action="store_true", help="skip the convolution benchmark")
    bench.add_argument(
        "--include-slow", action="store_true", help="also time kernels known to be slow here"
    )
    bench.add_argument("--json", action="store_true", help="end with one JSON line on stdout")
    bench.set_defaults(func=cmd_bench)

    models = sub.add_parser("models", help="list the built-in models with their float metric")
    models.add_argument("--json", action="store_true", help="end with one JSON line on stdout")
    models.set_defaults(func=cmd_models)

    train = sub.add_parser("train", help="retrain a built-in model from scratch (reproducible)")
    train.add_argument("name", help="built-in model name (see `explorer models`)")
    train.add_argument("--out", default=None, help="output folder (default: its assets folder)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    train.add_argument("--json", action="store_true", help="end with one JSON line on stdout")
    train.set_defaults(func=cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], dict[str, Any]] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    try:
        result = func(args)
    except (ExplorerError, ValueError, OSError) as exc:
        print(f"explorer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the contract: one line, never a traceback
        print(
            f"explorer {args.command}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr
        )
        return 1
    except KeyboardInterrupt:
        print(f"explorer {args.command}: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, separators=(",", ":"), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
