"""Whole-model latency of the convolutional built-ins (digits-cnn, mobile-cnn): fp32 against
W8A8 (per-tensor and per-token activations) and weight-only W8/W4, each layer on the kernel
`explorer.nn.convert.select_kernels` measures fastest for the workload.

Usage: ``python benchmarks/conv_models.py [--repeats 50] [--workload single,batch64] [--threads 1
--cpu-time]``. Every model is timed interleaved with its fp32 baseline (median of ``--repeats``
calls, after warm-up), so load from other processes hits both alike; on a loaded machine
``--threads 1 --cpu-time`` times each call by its thread's CPU time instead of the wall clock.
Rows carry the speed-up against fp32 and against fp32 with batch norm folded (what the quantized
models run: their convolutions absorb it). ``--isa avx2`` re-runs it with torch, oneDNN, MKL,
fbgemm and our kernels restricted to AVX2 (`explorer.measure.emulate`); the JSON says what was
forced and what each library ran, and the load average before and after. The last stdout line
is one JSON document.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from explorer import machine
from explorer.kernels.select import interleaved_medians
from explorer.measure import emulate
from explorer.models.registry import builtin_models
from explorer.nn.convert import quant_modules, quantize_model, select_kernels
from explorer.nn.fold import fold_batch_norm
from explorer.quant.config import Plan, QuantConfig

CONFIGS = {
    "w8a8-tensor": QuantConfig(act_bits=8, act_granularity="tensor"),
    "w8a8-token": QuantConfig(act_bits=8),
    "w8-channel": QuantConfig(weight_bits=8),
    "w4-channel": QuantConfig(weight_bits=4),
}


def median_ms(fns: dict[str, Any], repeats: int, cpu_time: bool) -> dict[str, float]:
    clock = time.thread_time if cpu_time else time.perf_counter
    with torch.inference_mode():
        medians = interleaved_medians(fns, repeats, clock)
    return {name: seconds * 1e3 for name, seconds in medians.items()}


def bench_model(name: str, workload: str, repeats: int, cpu_time: bool) -> list[dict[str, Any]]:
    entry = builtin_models()[name]
    model = entry.load()
    folded, _ = fold_batch_norm(model)
    make = entry.workloads()[workload]
    fns = {"fp32": make(model), "fp32-folded": make(folded)}
    quantized = {}
    for label, config in CONFIGS.items():
        q = quantize_model(model, Plan.uniform(config))
        select_kernels(q, run=make(q))
        quantized[label] = q
        fns[label] = make(q)
    ms = median_ms(fns, repeats, cpu_time)
    rows = []
    for label, t in ms.items():
        q = quantized.get(label)
        kernels: dict[str, int] = {}
        simulated = []
        for layer, module in (quant_modules(q) if q is not None else {}).items():
            kernels[module.kernel_name] = kernels.get(module.kernel_name, 0) + 1
            if module.simulated:
                simulated.append(layer)
        rows.append(
            {
                "model": name,
                "workload": workload,
                "config": label,
                "ms": round(t, 4),
                "speedup_vs_fp32": round(ms["fp32"] / t, 2),
                "speedup_vs_fp32_folded": round(ms["fp32-folded"] / t, 2),
                "kernels": kernels,
                "simulated_layers": simulated,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--workload", default="single", help="single, batch64 or both (a,b)")
    parser.add_argument("--models", default="digits-cnn,mobile-cnn")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time each call by its thread's CPU time (with --threads 1): robust to a machine "
        "other jobs load",
    )
    parser.add_argument("--isa", choices=emulate.ISA_CHOICES, default=emulate.NATIVE)
    args = parser.parse_args()
    emulate.script_guard(args.isa, __file__)
    libraries = emulate.libraries()  # before MKL or oneDNN first run: their headers
    load_before = machine.load_average()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for workload in args.workload.split(","):
        for name in args.models.split(","):
            rows += bench_model(name, workload, args.repeats, args.cpu_time)
    for r in rows:
        print(
            f"{r['model']:11s} {r['workload']:8s} {r['config']:12s} {r['ms']:8.3f} ms "
            f"x{r['speedup_vs_fp32']:5.2f} (folded x{r['speedup_vs_fp32_folded']:5.2f})  "
            f"{r['kernels']}  simulated={r['simulated_layers']}"
        )
    result = {
        "threads": torch.get_num_threads(),
        "cpu_time": args.cpu_time,
        "loadavg_before": load_before,
        "loadavg_after": machine.load_average(),
        "isa_forced": emulate.forced(),
        "libraries": libraries,
        "rows": rows,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
