"""The parser of every subcommand (`build_parser`) and `main`, which runs one and keeps the
contract: one JSON line last on stdout with ``--json``, one-line errors, the exit status."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from explorer.cli.builtin import cmd_bench, cmd_models, cmd_train
from explorer.cli.export import cmd_export
from explorer.cli.kernels import cmd_build_kernels
from explorer.cli.options import (
    Parser,
    add_json_option,
    add_model_options,
    add_run_options,
    int_list,
    positive_int,
    thread_count,
)
from explorer.cli.runs import INTERRUPTED_EXIT
from explorer.cli.search import add_sensitivity_options, cmd_search, cmd_sensitivity
from explorer.cli.store import add_store_parser
from explorer.cli.sweep import add_config_options, cmd_sweep
from explorer.errors import ExplorerError
from explorer.measure.emulate import ISA_CHOICES, NATIVE, active, rerun


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="explorer",
        description="Quantization Explorer: quantize models per layer and measure size, latency "
        "and accuracy on real int8/int4 kernels.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = sub.add_parser(
        "bench",
        help="time fp32, bf16 and every real int8/int4 kernel on linear layers and a convolution",
    )
    bench.add_argument("--m", type=int_list, default=(1, 8, 32), help="rows M (default 1,8,32)")
    bench.add_argument("--k", type=positive_int, default=4096, help="in features K (default 4096)")
    bench.add_argument("--n", type=positive_int, default=4096, help="out features N (default 4096)")
    bench.add_argument("--repeats", type=positive_int, default=30, help="timed calls per kernel")
    bench.add_argument(
        "--threads", type=thread_count, default=None, help="torch threads (at most the CPUs)"
    )
    bench.add_argument("--no-conv", action="store_true", help="skip the convolution benchmark")
    bench.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall, or cpu: the thread's CPU time, robust to other jobs (with --threads 1)",
    )
    bench.add_argument(
        "--include-slow", action="store_true", help="also time kernels known to be slow here"
    )
    bench.add_argument(
        "--isa",
        choices=ISA_CHOICES,
        default="native",
        help="emulate a machine with this instruction set: re-run in a child process with torch, "
        "oneDNN, MKL, fbgemm and our kernels restricted to it (default native: this CPU's own)",
    )
    bench.add_argument(
        "--ggml",
        default="",
        metavar="TYPES",
        help="also time llama.cpp's ggml matmul in these ggml types, e.g. q8_0,q4_0,q4_k "
        "(the llamacpp extra)",
    )
    add_json_option(bench)
    bench.set_defaults(func=cmd_bench)

    build_kernels = sub.add_parser(
        "build-kernels",
        help="compile the native kernels into the cache folder now (else the first use does)",
    )
    add_json_option(build_kernels)
    build_kernels.set_defaults(func=cmd_build_kernels)

    models = sub.add_parser("models", help="list the built-in models with their float metric")
    add_json_option(models)
    models.set_defaults(func=cmd_models)

    train = sub.add_parser("train", help="retrain a built-in model from scratch (reproducible)")
    train.add_argument("name", help="built-in model name (see `explorer models`)")
    train.add_argument("--out", default=None, help="output folder (default: its assets folder)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_json_option(train)
    train.set_defaults(func=cmd_train)

    sweep = sub.add_parser(
        "sweep",
        help="evaluate every combination of the given configs; rows go to the results store",
        description="Evaluate the cross product of the given values (plus fp32 and bf16 "
        "baselines) and flag the Pareto fronts. Rows already in the store are reused, so an "
        "interrupted sweep resumes. Without dimension options, or with --default, the app's "
        "default sweep runs; options given replace its dimensions.",
    )
    add_model_options(sweep)
    add_config_options(sweep, single=False)
    sweep.add_argument("--default", action="store_true", help="start from the default sweep")
    sweep.add_argument(
        "--target",
        default="native",
        help="where rows run, comma-separated: native, onnxruntime, llamacpp (default native)",
    )
    sweep.add_argument(
        "--formats",
        default=None,
        metavar="TYPES",
        help="ggml types the llamacpp target runs, comma-separated: f16, q8_0, q6_k, q5_k, "
        "q5_0, q5_1, q4_k, q4_0, q4_1, iq4_nl, q3_k, q2_k, tq2_0, bf16 (default f16)",
    )
    add_run_options(sweep, sweep=True)
    add_json_option(sweep)
    sweep.set_defaults(func=cmd_sweep)

    sensitivity = sub.add_parser(
        "sensitivity",
        help="quantize each layer alone at each setting and measure the damage",
        description="Per-layer sensitivity on the calibration split: each layer quantized "
        "alone, every other layer float.",
    )
    add_model_options(sensitivity)
    add_sensitivity_options(sensitivity)
    sensitivity.add_argument(
        "--layers", metavar="NAMES", default=None, help="layer names (default: every layer)"
    )
    sensitivity.add_argument(
        "--no-latency", action="store_true", help="skip timing each layer at each setting"
    )
    sensitivity.add_argument(
        "--weight-only",
        action="store_true",
        help="weight SQNR only: no forward passes, no metric drop",
    )
    add_run_options(sensitivity, sweep=False)
    add_json_option(sensitivity)
    sensitivity.set_defaults(func=cmd_sensitivity)

    search = sub.add_parser(
        "search",
        help="mixed precision: choose a setting per layer for a budget, then verify it",
        description="Measure per-layer sensitivity, choose one setting per layer with the least "
        "predicted damage for each budget (or points along the whole front), and evaluate the "
        "chosen plans, the baselines and the uniform plans like sweep rows. Give one budget kind; "
        "several comma-separated budgets of that kind are allowed.",
    )
    add_model_options(search)
    budget = search.add_argument_group("budget (one kind)")
    budget.add_argument(
        "--budget-size", metavar="SIZES", default=None, help="bytes stored: 3.5MB, 512KiB, 200000"
    )
    budget.add_argument(
        "--budget-latency", metavar="MS", default=None, help="primary workload latency: 2.5ms"
    )
    budget.add_argument(
        "--max-drop",
        metavar="DROPS",
        default=None,
        help="largest predicted metric drop: 0.01 (accuracy points)",
    )
    budget.add_argument(
        "--points",
        metavar="N",
        type=int,
        default=None,
        help="plans spread along the front (default 6)",
    )
    add_sensitivity_options(search)
    search.add_argument(
        "--damage",
        choices=("metric_drop", "kl", "cosine_loss"),
        default="metric_drop",
        help="what the search minimizes (default metric_drop)",
    )
    search.add_argument(
        "--no-uniform", action="store_true", help="do not evaluate the uniform plans alongside"
    )
    llamacpp = search.add_argument_group(
        "llama.cpp (--target llamacpp): a ggml type per tensor at a bits-per-weight budget"
    )
    llamacpp.add_argument(
        "--target",
        default="native",
        help="native (default: the explorer's settings) or llamacpp (ggml types, run in llama.cpp)",
    )
    llamacpp.add_argument(
        "--target-bpw",
        metavar="BPWS",
        default=None,
        help="bits per weight over every matrix in the GGUF file, block scales included: 4.5",
    )
    llamacpp.add_argument(
        "--formats",
        default=None,
        metavar="TYPES",
        help="candidate ggml types (default q8_0,q6_k,q5_k,q4_k,q3_k,q2_k)",
    )
    llamacpp.add_argument(
        "--uniform",
        choices=("all", "closest", "none"),
        default="all",
        help="uniform types also run in llama.cpp: all of --formats (default), the closest in "
        "bits per weight to each mix, or none",
    )
    add_run_options(search, sweep=True)
    add_json_option(search)
    search.set_defaults(func=cmd_search)

    export = sub.add_parser(
        "export",
        help="write one quantized model with its plan and a snippet to reapply it",
        description="Quantize the model with one plan (a plan JSON file, or one value per config "
        "option) and write plan.json, model.safetensors, reapply.py and README.txt to --out.",
    )
    add_model_options(export)
    export.add_argument(
        "--plan",
        metavar="FILE",
        default=None,
        help="plan JSON: a plan, a sweep row, or an export's plan.json",
    )
    add_config_options(export, single=True)
    export.add_argument("--out", metavar="FOLDER", required=True, help="export folder")
    export.add_argument(
        "--overwrite", action="store_true", help="replace an earlier export in --out"
    )
    export.add_argument(
        "--target",
        default="native",
        help="also write what this target measures: onnxruntime adds model.onnx and run_onnx.py; "
        "llamacpp writes only the measured model.gguf, quantize.sh (llama-quantize) and plan.json "
        "(default native: the safetensors export only)",
    )
    export.add_argument(
        "--formats",
        default=None,
        metavar="TYPE",
        help="the ggml type of --target llamacpp (q4_k); or --plan with a llama.cpp plan or "
        "search row",
    )
    export.add_argument(
        "--eval-tokens",
        metavar="N",
        type=positive_int,
        default=None,
        help="--target llamacpp: tokens the export's measurement scores (default: the task's)",
    )
    add_run_options(export, sweep=False)
    add_json_option(export)
    export.set_defaults(func=cmd_export)

    add_store_parser(sub)
    return parser


def _torch_threads() -> int | None:
    """torch's intra-op thread count if torch is loaded (in-process callers: tests, notebooks)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def _restore_torch_threads(threads: int | None) -> None:
    """``--threads`` holds for one command: an in-process caller gets its own count back."""
    torch = sys.modules.get("torch")
    if threads is not None and torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already reported on one line
        return exc.code if isinstance(exc.code, int) else 2
    func: Callable[[argparse.Namespace], dict[str, Any]] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    threads = _torch_threads()
    try:
        if getattr(args, "isa", NATIVE) != NATIVE and active() is None:
            # the libraries read their instruction-set switches once: a fresh process sets them
            raw = list(argv) if argv is not None else sys.argv[1:]
            return rerun(args.isa, ["-m", "explorer.cli", *raw])
        result = func(args)
    except (ExplorerError, ValueError, OSError) as exc:
        message = " ".join(str(exc).split())
        print(f"explorer {args.command}: error: {message}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the contract: one line, never a traceback
        message = " ".join(str(exc).split())
        print(
            f"explorer {args.command}: internal error: {type(exc).__name__}: {message}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt as exc:
        print(f"explorer {args.command}: {exc or 'interrupted'}", file=sys.stderr)
        return INTERRUPTED_EXIT
    finally:
        _restore_torch_threads(threads)
    if args.json:
        from explorer.sweep.store import finite_or_none

        print(json.dumps(finite_or_none(result), separators=(",", ":"), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
