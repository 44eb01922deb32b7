"""Whole-model latency of the convolutional built-ins (digits-cnn, mobile-cnn): fp32 against
W8A8 (per-tensor and per-token activations) and weight-only W8/W4, each layer on the kernel
`explorer.nn.convert.select_kernels` measures fastest for the workload.

Usage: ``python benchmarks/conv_models.py [--repeats 50] [--workload single]``. Every model is
timed interleaved with its fp32 baseline (median of ``--repeats`` calls, after warm-up), so load
from other processes hits both alike. The last stdout line is one JSON document.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

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


def median_ms(fns: dict[str, Any], repeats: int) -> dict[str, float]:
    with torch.inference_mode():
        for fn in fns.values():
            for _ in range(3):
                fn()
        samples: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(s) for name, s in samples.items()}


def bench_model(name: str, workload: str, repeats: int) -> list[dict[str, Any]]:
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
    ms = median_ms(fns, repeats)
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
                "kernels": kernels,
                "simulated_layers": simulated,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--workload", default="single", help="single or batch64")
    parser.add_argument("--models", default="digits-cnn,mobile-cnn")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.models.split(","):
        rows += bench_model(name, args.workload, args.repeats)
    for r in rows:
        print(
            f"{r['model']:11s} {r['workload']:8s} {r['config']:12s} {r['ms']:8.3f} ms "
            f"x{r['speedup_vs_fp32']:5.2f}  {r['kernels']}  simulated={r['simulated_layers']}"
        )
    print(json.dumps({"threads": torch.get_num_threads(), "rows": rows}))


if __name__ == "__main__":
    main()
