"""Native engine vs ONNX Runtime latency for fp32, int8 and int4 plans, in one run.

Cases: digits-cnn, mobile-cnn, one 3x3 convolution 128->128 at 28x28, one 4096x4096 linear
layer at M = 1, 8, 32 rows, and tiny-lm's 128-token prefill (a full forward on token ids: the
exported graph keeps no KV cache; `benchmarks/onnx_decode.py` compares decode). int8 = W8 per
channel with static per-tensor A8 (ORT: QDQ, fused into QLinearConv / QGemm /
MatMulIntegerToFloat); int4 = W4 groups of 32, weight-only (ORT: MatMulNBits; ORT has no int4
convolution, so "n/a" there).
Both targets run the SAME quantized model; medians under the machine-wide timing lock.
"ORT/ORT fp32" is what a deployment sees: the int8 plan's latency in ORT over the float model's
in ORT (below 1: quantization pays off there), of the medians and of the fastest calls (on a
loaded machine the fastest call is the least disturbed one). Prints a table, then one JSON line.

    .venv/bin/python benchmarks/onnxruntime_vs_native.py [--repeats 20] [--threads N] [--cases TEXT]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from explorer.machine import cpu_features
from explorer.models import digits, mobile, tinylm
from explorer.models.registry import get_builtin
from explorer.nn.convert import quantize_model
from explorer.quant.config import Plan, QuantConfig
from explorer.targets import TargetError, get_target
from explorer.targets.onnxruntime import TaskOutput

PLANS = {
    "fp32": QuantConfig.float("fp32"),
    "int8": QuantConfig(weight_bits=8, act_bits=8, act_mode="static", act_granularity="tensor"),
    "int4": QuantConfig(weight_bits=4, granularity="group", group_size=32),
}


def _text_windows(n: int | None) -> torch.Tensor:
    """n windows of 128 tokens of tiny-lm's calibration text (static activation ranges come
    from them: random ids would give ranges the model never sees in use)."""
    ids, _ = get_builtin("tiny-lm").load_split("calibration")  # (rows, 256)
    return ids[: n or 1, :128]


def cases() -> list[tuple[str, nn.Module, Callable[[int | None], torch.Tensor]]]:
    """(name, float model, n -> a batch of n inputs; None: the timed input)."""
    torch.manual_seed(0)

    def images(*shape: int) -> Callable[[int | None], torch.Tensor]:
        return lambda n: torch.randn(n or shape[0], *shape[1:])

    out = [
        ("digits-cnn b64", digits.build().eval(), images(64, 1, 8, 8)),
        ("mobile-cnn b16", mobile.build().eval(), images(16, 3, 32, 32)),
        (
            "conv3x3 128->128 28x28",
            nn.Sequential(nn.Conv2d(128, 128, 3, padding=1)).eval(),
            images(1, 128, 28, 28),
        ),
    ]
    lin = nn.Sequential(nn.Linear(4096, 4096)).eval()
    out += [(f"linear 4096^2 M={m}", lin, images(m, 4096)) for m in (1, 8, 32)]
    # a 128-token prefill, no KV cache in either runtime (the exported graph keeps none). The
    # Llama tiny-lm goes in as a sweep exports it (TaskOutput: ids and an all-ones mask in,
    # logits out); without the mask transformers looks for packed sequences with aten::diff,
    # which torch.onnx cannot export
    lm = TaskOutput(tinylm.load()).eval()
    out.append(("tiny-lm prefill 128", lm, _text_windows))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--cases", default="", help="only cases whose name contains this text")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    native, ort = get_target("native"), get_target("onnxruntime", threads=args.threads)
    results = []
    print(
        f"{'case':24} {'plan':5} {'native ms':>10} {'ORT ms':>9} {'ORT min':>9} "
        f"{'ORT/native':>10} {'ORT/ORT fp32':>12} {'(min/min)':>12}  ORT kernels"
    )
    for name, model, make in cases():
        if args.cases not in name:
            continue
        ort_fp32 = ort_fp32_min = None
        for plan_name, config in PLANS.items():
            x = make(None)  # the timed input
            calib = [make(8)]
            q = quantize_model(model, Plan.uniform(config, fallback="float"), calib)
            row: dict[str, Any] = {"case": name, "plan": plan_name}
            for target in (native, ort):
                try:
                    art = target.build(q, x, calib)
                except TargetError as e:
                    row[target.name] = None
                    row[f"{target.name}_why"] = str(e)
                    continue
                (lat,) = target.time(art, [x], warmup=3, repeats=args.repeats)
                row[target.name] = round(lat.median_ms, 4)
                row[f"{target.name}_min"] = round(lat.min_ms, 4)
                row[f"{target.name}_spread"] = round(lat.spread, 3)
                if target is ort:
                    kinds = {k for v in art.layers.values() for k in v.get("kernels", [])}
                    row["ort_kernels"] = sorted(kinds)
            n, o, o_min = row.get("native"), row.get("onnxruntime"), row.get("onnxruntime_min")
            if plan_name == "fp32":
                ort_fp32, ort_fp32_min = o, o_min
            row["ort_vs_ort_fp32"] = round(o / ort_fp32, 3) if o and ort_fp32 else None
            row["ort_vs_ort_fp32_min"] = (
                round(o_min / ort_fp32_min, 3) if o_min and ort_fp32_min else None
            )
            print(
                f"{name:24} {plan_name:5} {_cell(n, 10)} {_cell(o, 9)} {_cell(o_min, 9)} "
                f"{_cell(round(o / n, 3) if n and o else None, 10)} "
                f"{_cell(row['ort_vs_ort_fp32'], 12)} {_cell(row['ort_vs_ort_fp32_min'], 12)}  "
                f"{', '.join(row.get('ort_kernels', []))}",
                flush=True,
            )
            results.append(row)
    print(json.dumps({"threads": args.threads, "cpu": cpu_features(), "rows": results}))


def _cell(value: float | None, width: int) -> str:
    return f"{value:>{width}}" if value is not None else f"{'n/a':>{width}}"


if __name__ == "__main__":
    main()
