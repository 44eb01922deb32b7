"""tiny-lm's decode step and prefill under fp32 and the real int4/int8 formats, timed together.

For fp32, bf16, W8 (per channel) and W4 g128 weight-only, W4A8 g128 (per-token dynamic int8
activations) and W8A8 (per channel, per token), the built-in tiny-lm is quantized (bf16: cast;
the rest by round to nearest), each integer layer's kernel is chosen by timing on the decode
step's real row count (`select_kernels`), and then the ``decode`` workload (one token at batch 1
after 128 cached tokens) and the ``prefill`` workload (128 tokens) are timed in interleaved
rounds: every round times every model once, so machine load hits them alike. The table gives
the median of the round medians and the speedup over fp32, and the per-token perplexity on the
first ``--eval-rows`` held-out rows, from the same models.
``--clock cpu`` (with ``--threads 1``) times the thread's CPU time, which other jobs on a loaded
machine do not inflate; the load average before and after is recorded.
``--isa avx2`` re-runs the benchmark with torch, oneDNN, MKL, fbgemm and our kernels restricted
to AVX2 (`explorer.measure.emulate`); the JSON says what was forced and what each library ran.

Prints a table, then one JSON document (the last line on stdout).

Usage: python benchmarks/decode_tinylm.py [--rounds 7] [--repeats 30] [--threads 2]
[--clock wall|cpu] [--isa native|avx2] [--hidden 256]  (--hidden: a randomly initialised Llama
of tiny-lm's shape at that width, no perplexity)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explorer import machine  # noqa: E402
from explorer.measure import emulate  # noqa: E402
from explorer.measure.evaluation import concat_stats, lm_stats  # noqa: E402
from explorer.measure.latency import time_callable  # noqa: E402
from explorer.models.registry import get_builtin  # noqa: E402
from explorer.models.tinylm import LogitsOnly, workloads  # noqa: E402
from explorer.nn.convert import quant_modules, quantize_model, select_kernels  # noqa: E402
from explorer.quant.config import Plan, QuantConfig  # noqa: E402

FORMATS: dict[str, QuantConfig | None] = {
    "fp32": None,
    "bf16": QuantConfig.float("bf16"),
    "W8": QuantConfig(weight_bits=8),
    "W4 g128": QuantConfig(weight_bits=4, granularity="group", group_size=128),
    "W4A8 g128": QuantConfig(weight_bits=4, granularity="group", group_size=128, act_bits=8),
    "W8A8": QuantConfig(weight_bits=8, act_bits=8),
}
WORKLOADS = workloads()


def _cpu_median_ms(call: Any, warmup: int = 3, repeats: int = 30) -> float:
    """Median milliseconds of the calling thread's CPU time per call (one thread only)."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeats):
        t0 = time.thread_time()
        call()
        samples.append((time.thread_time() - t0) * 1e3)
    return statistics.median(samples)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.clock == "cpu" and args.threads != 1:
        raise SystemExit("--clock cpu counts one thread's CPU time: use it with --threads 1")
    libraries = emulate.libraries()  # before MKL or oneDNN first run: their headers
    torch.set_num_threads(args.threads)
    load_before = machine.load_average()
    spec = get_builtin("tiny-lm")
    model = spec.load() if args.hidden is None else resized_llama(spec.load(), args.hidden)
    x, y = (t[: args.eval_rows] for t in spec.load_split("eval"))
    models, calls = {}, {}
    with torch.inference_mode():
        for name, config in FORMATS.items():
            qmodel = model if config is None else quantize_model(model, Plan.uniform(config))
            if config is not None and not config.is_float:
                select_kernels(qmodel, run=WORKLOADS["decode"](qmodel))
            models[name] = qmodel
            for workload, bind in WORKLOADS.items():
                calls[(name, workload)] = bind(qmodel)
        rounds: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
        for _ in range(args.rounds):
            for key, call in calls.items():
                if args.clock == "cpu":
                    rounds[key].append(_cpu_median_ms(call, repeats=args.repeats))
                else:
                    result = time_callable(call, warmup=3, repeats=args.repeats)
                    rounds[key].append(result.median_ms)
        rows = []
        for name, qmodel in models.items():
            lm = LogitsOnly(qmodel)
            parts = [lm_stats(lm(x[i : i + 16]), y[i : i + 16]) for i in range(0, len(x), 16)]
            kernels = sorted({m.kernel_name for m in quant_modules(qmodel).values()})
            row = {
                "format": name,
                # random weights (--hidden): a perplexity would say nothing
                "perplexity": concat_stats(parts).perplexity() if args.hidden is None else None,
                "kernels": kernels,
            }
            for workload in WORKLOADS:
                ms = statistics.median(rounds[(name, workload)])
                base = statistics.median(rounds[("fp32", workload)])
                row[workload] = {"ms": ms, "speedup_vs_fp32": base / ms}
            rows.append(row)
    return {
        "model": "tiny-lm" if args.hidden is None else f"random Llama, hidden {args.hidden}",
        "config": {k: getattr(model.config, k) for k in LLAMA_SHAPE},
        "threads": args.threads,
        "clock": args.clock,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "eval_rows": int(x.shape[0]),
        "loadavg_before": load_before,
        "loadavg_after": machine.load_average(),
        "isa_forced": emulate.forced(),
        "libraries": libraries,
        "rows": rows,
    }


def table(result: dict[str, Any]) -> str:
    isa = (result["isa_forced"] or {}).get("isa", "native")
    lines = [
        f"{result['model']}, {isa} instruction set, {result['threads']} threads, "
        f"{result['clock']} clock, median of "
        f"{result['rounds']} interleaved rounds; "
        f"perplexity on {result['eval_rows']} held-out rows",
        f"{'format':<10} {'decode ms':>10} {'x fp32':>7} {'prefill ms':>11} {'x fp32':>7} "
        f"{'perplexity':>11}  kernels",
    ]
    for r in result["rows"]:
        d, p = r["decode"], r["prefill"]
        lines.append(
            f"{r['format']:<10} {d['ms']:>10.3f} {d['speedup_vs_fp32']:>7.2f} {p['ms']:>11.3f} "
            f"{p['speedup_vs_fp32']:>7.2f} {_ppl(r['perplexity']):>11}  {', '.join(r['kernels'])}"
        )
    return "\n".join(lines)


def _ppl(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


LLAMA_SHAPE = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)


def resized_llama(model: torch.nn.Module, hidden: int) -> torch.nn.Module:
    """A randomly initialised Llama of tiny-lm's architecture (layers, head size 64, 2 key/value
    heads, vocabulary, tied embeddings) at width ``hidden`` with an MLP of 2 x ``hidden``: the
    decode step of a narrower or wider model than the built-in, on the same prompt."""
    from transformers import LlamaForCausalLM

    if hidden % 128:
        raise SystemExit(
            f"--hidden {hidden}: use a multiple of 128 (heads of 64, 2 key/value heads)"
        )
    config = copy.deepcopy(model.config)
    config.hidden_size = hidden
    config.intermediate_size = 2 * hidden
    config.num_attention_heads = hidden // config.head_dim
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-rows", type=int, default=32)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--isa", choices=emulate.ISA_CHOICES, default=emulate.NATIVE)
    ap.add_argument(
        "--hidden",
        type=int,
        default=None,
        help="time a randomly initialised Llama of tiny-lm's shape at this width instead",
    )
    args = ap.parse_args(argv)
    emulate.script_guard(args.isa, __file__)
    result = run(args)
    print(table(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
