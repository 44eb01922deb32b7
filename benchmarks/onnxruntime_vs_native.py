"""Native engine vs ONNX Runtime latency for fp32, int8 and int4 plans, in one run.

Cases: digits-cnn, mobile-cnn, one 3x3 convolution 128->128 at 28x28, and one 4096x4096 linear
layer at M = 1, 8, 32 rows. int8 = W8 per channel with static per-tensor A8 (ORT: QDQ); int4 =
W4 groups of 32, weight-only (ORT: MatMulNBits; ORT has no int4 convolution, so "n/a" there).
Both targets run the SAME quantized model; medians under the machine-wide timing lock. Prints a
table, then one JSON line.

    .venv/bin/python benchmarks/onnxruntime_vs_native.py [--repeats 20] [--threads N]
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

from explorer.machine import cpu_features
from explorer.models import digits, mobile
from explorer.nn.convert import quantize_model
from explorer.quant.config import Plan, QuantConfig
from explorer.targets import TargetError, get_target

PLANS = {
    "fp32": QuantConfig.float("fp32"),
    "int8": QuantConfig(weight_bits=8, act_bits=8, act_mode="static", act_granularity="tensor"),
    "int4": QuantConfig(weight_bits=4, granularity="group", group_size=32),
}


def cases() -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    out = [
        ("digits-cnn b64", digits.build().eval(), (64, 1, 8, 8)),
        ("mobile-cnn b16", mobile.build().eval(), (16, 3, 32, 32)),
        (
            "conv3x3 128->128 28x28",
            nn.Sequential(nn.Conv2d(128, 128, 3, padding=1)),
            (1, 128, 28, 28),
        ),
    ]
    lin = nn.Sequential(nn.Linear(4096, 4096)).eval()
    out += [(f"linear 4096^2 M={m}", lin, (m, 4096)) for m in (1, 8, 32)]
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    native, ort = get_target("native"), get_target("onnxruntime", threads=args.threads)
    results = []
    print(
        f"{'case':26} {'plan':5} {'native ms':>10} {'ORT ms':>10} {'ORT/native':>10}  ORT kernels"
    )
    for name, model, shape in cases():
        x = torch.randn(*shape)
        for plan_name, config in PLANS.items():
            calib = [torch.randn(max(8, shape[0]), *shape[1:])]
            q = quantize_model(model, Plan.uniform(config, fallback="float"), calib)
            row = {"case": name, "plan": plan_name}
            for target in (native, ort):
                try:
                    art = target.build(q, x, calib)
                except TargetError as e:
                    row[target.name] = None
                    row[f"{target.name}_why"] = str(e)
                    continue
                (lat,) = target.time(art, [x], warmup=3, repeats=args.repeats)
                row[target.name] = round(lat.median_ms, 4)
                if target is ort:
                    kinds = {k for v in art.layers.values() for k in v.get("kernels", [])}
                    row["ort_kernels"] = sorted(kinds)
            n, o = row.get("native"), row.get("onnxruntime")
            kinds_text = ", ".join(row.get("ort_kernels", []))
            ratio = f"{o / n:10.2f}" if n and o else f"{'n/a':>10}"
            print(
                f"{name:26} {plan_name:5} {n if n is not None else 'n/a':>10} "
                f"{o if o is not None else 'n/a':>10} {ratio}  {kinds_text}"
            )
            results.append(row)
    print(json.dumps({"threads": args.threads, "cpu": cpu_features(), "rows": results}))


if __name__ == "__main__":
    main()
