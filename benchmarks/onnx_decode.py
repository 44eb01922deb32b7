"""A causal LM's decode step and prefill, native against ONNX Runtime, in tokens per second.

Both targets run the SAME quantized model on the workloads a sweep row times: ``decode`` is one
token at batch 1 after the 128-token prompt is cached (native: the model's DynamicCache cropped
back after each step; ORT: the decode graph of `explorer.targets.onnx_decode`, fed the same
128-token cache each call), ``prefill`` the 128-token prompt. Plans: fp32, W8A8 with dynamic
per-tensor activations (ORT: DynamicQuantizeMatMul), W8A8 static per-tensor (ORT:
MatMulIntegerToFloat) and W4 groups of 32 weight-only (ORT: MatMulNBits). Medians under the
machine-wide timing lock (``EXPLORER_TIMING_LOCK``). Prints a table, then one JSON line.

    .venv/bin/python benchmarks/onnx_decode.py --model NAME_OR_HF_DIR [--repeats 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import torch

from explorer.machine import cpu_features
from explorer.measure.latency import measure_callable
from explorer.models.catalog import ModelSource
from explorer.nn.convert import quant_modules, quantize_model, select_kernels
from explorer.quant.config import Plan, QuantConfig
from explorer.sweep.context import open_context
from explorer.targets import TargetError, get_target

PLANS = {
    "fp32": QuantConfig.float("fp32"),
    "W8A8 dyn": QuantConfig(
        weight_bits=8, act_bits=8, act_mode="dynamic", act_granularity="tensor", act_symmetric=False
    ),
    "W8A8 static": QuantConfig(
        weight_bits=8, act_bits=8, act_mode="static", act_granularity="tensor"
    ),
    "W4 g32": QuantConfig(weight_bits=4, granularity="group", group_size=32),
}
WORKLOADS = ("decode", "prefill")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="a built-in causal LM or a Hugging Face dir")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ctx = open_context(ModelSource(model=args.model))
    if "decode" not in ctx.workloads:
        raise SystemExit(f"{args.model} is not a causal language model (no decode workload)")
    ort = get_target("onnxruntime", threads=args.threads)
    calibration = ctx.calibration_inputs(8)
    example = ctx.compute_reference().batches[0][0]
    rows: list[dict[str, Any]] = []
    print(
        f"{'plan':12} {'runtime':8} {'decode ms':>10} {'decode tok/s':>12} "
        f"{'prefill ms':>11} {'prefill tok/s':>13}"
    )
    for plan_name, config in PLANS.items():
        qmodel = quantize_model(ctx.model, Plan.uniform(config, fallback="float"), calibration)
        runs: dict[str, dict[str, Any]] = {"native": {}, "onnxruntime": {}}
        for name in WORKLOADS:
            run = ctx.workloads[name](qmodel)
            if quant_modules(qmodel):
                select_kernels(qmodel, run=run)
            runs["native"][name] = run
        try:
            art = ort.build(qmodel, example, calibration)
            runs["onnxruntime"] = dict(art.workloads)  # type: ignore[attr-defined]
            untimed = dict(art.untimed)  # type: ignore[attr-defined]
        except TargetError as e:
            untimed = dict.fromkeys(WORKLOADS, str(e))
        for runtime, calls in runs.items():
            row: dict[str, Any] = {"plan": plan_name, "runtime": runtime}
            for name in WORKLOADS:
                if name not in calls:
                    row[f"{name}_why"] = untimed.get(name, "not timed")
                    continue
                lat = measure_callable(calls[name], warmup=3, repeats=args.repeats)
                # a prefill returns every position's logits (1, P, V): P tokens a call
                tokens = 1 if name == "decode" else int(calls[name]().shape[1])
                row[f"{name}_ms"] = round(lat.median_ms, 3)
                row[f"{name}_min_ms"] = round(lat.min_ms, 3)
                row[f"{name}_tok_s"] = round(1000.0 * tokens / lat.median_ms, 1)
            rows.append(row)
            print(
                f"{plan_name:12} {runtime:8} {_cell(row.get('decode_ms'), 10)} "
                f"{_cell(row.get('decode_tok_s'), 12)} {_cell(row.get('prefill_ms'), 11)} "
                f"{_cell(row.get('prefill_tok_s'), 13)}",
                flush=True,
            )
    print(
        json.dumps(
            {
                "model": args.model,
                "threads": args.threads,
                "loadavg": os.getloadavg(),
                "cpu": cpu_features(),
                "rows": rows,
            }
        )
    )


def _cell(value: float | None, width: int) -> str:
    return f"{value:>{width}}" if value is not None else f"{'n/a':>{width}}"


if __name__ == "__main__":
    main()
