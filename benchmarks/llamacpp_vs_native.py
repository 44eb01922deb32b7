"""Native kernels vs llama.cpp's (ggml) in one run: the 4096x4096 linear layer at M = 1, 8, 32
(our best int8, int4, 3- and 2-bit weight-only kernels and our W8A8 / W4A8 kernels against
ggml's Q8_0, Q4_0, Q4_K, Q3_K and Q2_K matmul, in ggml's plain block layout and, where ggml
repacks the format on this CPU as llama.cpp's loader does, in the repacked layout; weights
rotated past the last-level cache, candidates interleaved call by call:
`explorer.measure.bench`), then a Llama model's decode (one token after 128 cached) and
128-token prefill, native (fp32, W8 per channel, W4 groups of 32) against llama.cpp (F16, Q8_0,
Q4_0, Q4_K GGUF files) with the same thread count. ``--clock cpu`` times the kernel calls in
this thread's CPU time (use it with ``--threads 1``; a loaded machine then does not inflate
them); the whole-model times are wall clock. Prints tables, then one JSON line.

    .venv/bin/python benchmarks/llamacpp_vs_native.py [--model assets/tiny-lm] [--repeats 20]
        [--threads 1] [--clock cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from explorer.machine import cpu_features
from explorer.measure.bench import bench_linear
from explorer.measure.latency import measure_callable, timing_lock
from explorer.nn.convert import quantize_model, select_kernels
from explorer.quant.config import Plan, QuantConfig
from explorer.targets import get_target
from explorer.tasks.causal_lm import decode_workload, prefill_workload

NATIVE = {
    "fp32": None,
    "w8-channel": QuantConfig(weight_bits=8),
    "w4-g32": QuantConfig(weight_bits=4, granularity="group", group_size=32),
}
GGML = ("f16", "q8_0", "q4_0", "q4_k")
KERNEL_GGML = ("q8_0", "q4_0", "q4_k", "q3_k", "q2_k")
# weight-only rows and the int8-activation ones: ggml quantizes the activation rows too (to
# Q8_0 or Q8_K blocks) before its integer dot products, as our W8A8/W4A8 kernels do per token
NATIVE_FAMILIES = (
    "fp32",
    "w8-channel",
    "w4-g32",
    "w4-g128",
    "w3-g128",
    "w2-g128",
    "w8a8-token",
    "w4a8-g32",
    "w4a8-g128",
)


def kernels(repeats: int, clock: str = "wall") -> list[dict]:
    timer = time.thread_time if clock == "cpu" else time.perf_counter
    with timing_lock():  # as `explorer bench` does: no other timing runs meanwhile
        rows = bench_linear(ms=(1, 8, 32), repeats=repeats, ggml_formats=KERNEL_GGML, clock=timer)
    best: dict[tuple[str, int], dict] = {}
    for r in rows:
        family = r["kernel"] if r["kernel"].startswith(("ggml", "fp32")) else r["format"]
        if family not in NATIVE_FAMILIES and "ggml" not in family:
            continue
        key = (family, r["M"])
        if key not in best or r["ms"] < best[key]["ms"]:
            best[key] = {**r, "family": family}
    print(f"{'4096x4096 linear':24} {'kernel':24} {'M':>3} {'ms':>8} {'GB/s':>7} {'x fp32':>7}")
    for (family, m), r in sorted(best.items(), key=lambda kv: (kv[0][1], kv[1]["ms"])):
        print(
            f"{family:24} {r['kernel']:24} {m:3d} {r['ms']:8.3f} {r['gbps']:7.1f} "
            f"{r['speedup_vs_fp32']:7.2f}"
        )
    return list(best.values())


def whole_model(model_dir: Path, repeats: int, threads: int) -> list[dict]:
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(model_dir)).float().eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    text = " ".join(["The quick brown fox jumps over the lazy dog."] * 64)
    prompt = torch.tensor(tok(text)["input_ids"][:128])[None]
    rows = []
    for name, config in NATIVE.items():
        q = model if config is None else quantize_model(model, Plan.uniform(config))
        for wl, make in (
            ("decode", decode_workload(prompt)),
            ("prefill", prefill_workload(prompt)),
        ):
            run = make(q)
            if config is not None:
                select_kernels(q, run=run)
            r = measure_callable(run, 3, repeats)
            rows.append({"runtime": "native", "format": name, "workload": wl, "ms": r.median_ms})
    for fmt in GGML:
        target = get_target(f"llamacpp:{fmt}", threads=threads, model_dir=str(model_dir))
        art = target.build(model, prompt)
        for wl, r in zip(art.workloads, target.time(art, [], 3, repeats), strict=True):
            rows.append({"runtime": "llama.cpp", "format": fmt, "workload": wl, "ms": r.median_ms})
        rows[-1]["bits_per_weight"] = rows[-2]["bits_per_weight"] = art.bits_per_weight
    print(
        f"\n{model_dir.name:10} {'runtime':10} {'format':11} {'decode tok/s':>12} "
        f"{'prefill tok/s':>13}"
    )
    for runtime, fmt in dict.fromkeys((r["runtime"], r["format"]) for r in rows):
        ms = {r["workload"]: r["ms"] for r in rows if (r["runtime"], r["format"]) == (runtime, fmt)}
        print(
            f"{'':10} {runtime:10} {fmt:11} {1e3 / ms['decode']:12.1f} "
            f"{128e3 / ms['prefill']:13.1f}"
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="assets/tiny-lm")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--skip-kernels", action="store_true")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = {"threads": args.threads, "clock": args.clock, "cpu": cpu_features()}
    out["load_start"] = os.getloadavg()
    if not args.skip_kernels:
        out["kernels"] = kernels(args.repeats, args.clock)
    model_dir = Path(args.model)
    if (model_dir / "config.json").exists():
        out["model"] = {
            "name": model_dir.name,
            "rows": whole_model(model_dir, args.repeats, args.threads),
        }
    else:
        print(f"\n{model_dir} has no model: whole-model rows skipped")
    out["repeats"] = args.repeats
    out["load_end"] = os.getloadavg()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
