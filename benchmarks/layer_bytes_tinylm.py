"""tiny-lm's decode step (or prefill) layer by layer: measured time per call next to the time its
bytes take at this machine's streaming read rate (what the Layers page shows; issue 15, ask 5).

For fp32, W8 per channel and W4 g128 (weight-only, round to nearest), the built-in tiny-lm is
quantized, each layer's kernel chosen on the workload (`select_kernels`), and then, in
interleaved rounds, the read rate (`explorer.measure.readrate.measure_read_rate`) and every
layer's time per call in the workload (`explorer.sweep.runner.profile_layers`) are measured,
with the whole call (``step_ms``) for scale; each number is the median over the rounds.
``--clock cpu`` (one thread) times CPU time, which other jobs on a loaded machine do not
inflate. ``hook_floor_ms`` is what the profiler's own hooks cost per call: the time it gives a
layer that does nothing (`nn.Identity`), included in every layer's time.

Prints a table per format, then one JSON document (the last line on stdout).

Usage: python benchmarks/layer_bytes_tinylm.py [--rounds 5] [--threads 1] [--clock cpu|wall]
[--workload decode|prefill]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explorer import machine  # noqa: E402
from explorer.measure.readrate import byte_time, layer_bytes, measure_read_rate  # noqa: E402
from explorer.models.registry import get_builtin  # noqa: E402
from explorer.models.tinylm import workloads  # noqa: E402
from explorer.nn.convert import quantizable_layers, quantize_model, select_kernels  # noqa: E402
from explorer.quant.config import Plan, QuantConfig  # noqa: E402
from explorer.sweep.runner import profile_layers  # noqa: E402

FORMATS: dict[str, QuantConfig | None] = {
    "fp32": None,
    "W8 channel": QuantConfig(weight_bits=8),
    "W4 g128": QuantConfig(weight_bits=4, granularity="group", group_size=128),
}
CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.clock == "cpu" and args.threads != 1:
        raise SystemExit("--clock cpu counts one thread's CPU time: use it with --threads 1")
    torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]
    model = get_builtin("tiny-lm").load()
    names = list(quantizable_layers(model))
    decode = workloads()[args.workload]
    models, calls = {}, {}
    for label, config in FORMATS.items():
        qmodel = model if config is None else quantize_model(model, Plan.uniform(config))
        if config is not None:
            select_kernels(qmodel, run=decode(qmodel))
        models[label], calls[label] = qmodel, decode(qmodel)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    rates: list[float] = []
    times: dict[str, list[Any]] = {label: [] for label in FORMATS}
    steps: dict[str, list[float]] = {label: [] for label in FORMATS}
    idle = torch.nn.Sequential(torch.nn.Identity())
    floor: list[float] = []
    with torch.inference_mode():
        for _ in range(args.rounds):
            rates.append(measure_read_rate(args.threads, clock=clock).bytes_per_s)
            floor.append(
                profile_layers(idle, ["0"], lambda: idle(torch.ones(1)), clock).call_ms["0"]
            )
            for label in FORMATS:
                times[label].append(profile_layers(models[label], names, calls[label], clock))
                steps[label].append(_step_ms(calls[label], clock))
    rate = statistics.median(rates)
    rows = []
    for label, qmodel in models.items():
        held = dict(qmodel.named_modules())
        first = times[label][0]
        layers = []
        for n in names:
            layer = {
                "name": n,
                "kernel": getattr(held[n], "kernel_name", "float"),
                "latency_ms": statistics.median(t.call_ms[n] for t in times[label]),
                "read_bytes": layer_bytes(held[n]),
                "activation_bytes": first.activation_bytes[n],
                "macs": first.macs[n],
            }
            layers.append({**layer, **byte_time(layer, rate)})
        measured = sum(lay["latency_ms"] for lay in layers)
        predicted = sum(lay["predicted_ms"] for lay in layers)
        rows.append(
            {
                "format": label,
                "step_ms": statistics.median(steps[label]),
                "layers": layers,
                "layers_ms": measured,
                "predicted_ms": predicted,
                "layers_ratio": measured / predicted,
            }
        )
    return {
        "model": "tiny-lm",
        "workload": args.workload,
        "threads": args.threads,
        "clock": args.clock,
        "rounds": args.rounds,
        "cpu": machine.cpu_model(),
        "cpu_flags": sorted(f for f in machine.cpu_flags() if f.startswith(("avx", "fma", "amx"))),
        "llc_bytes": machine.last_level_cache().size_bytes,
        "read_rate_bytes_per_s": rate,
        "read_rates": rates,
        "hook_floor_ms": statistics.median(floor),
        "loadavg_before": load_before,
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
        "rows": rows,
    }


def _step_ms(call: Any, clock: Any, repeats: int = 20) -> float:
    """Median milliseconds of one whole call of the workload (after one warm-up call)."""
    call()
    samples = []
    for _ in range(repeats):
        t0 = clock()
        call()
        samples.append((clock() - t0) * 1e3)
    return statistics.median(samples)


def table(result: dict[str, Any]) -> str:
    lines = [
        f"tiny-lm {result['workload']}, {result['threads']} thread(s), {result['clock']} clock, "
        f"median of {result['rounds']} rounds; "
        f"read rate {result['read_rate_bytes_per_s'] / 1e9:.2f} GB/s; "
        f"load {' '.join(result['loadavg_before'])} -> {' '.join(result['loadavg_after'])}; "
        f"profiler hooks {result['hook_floor_ms'] * 1e3:.1f} us per call"
    ]
    for row in result["rows"]:
        lines.append(
            f"\n{row['format']}: whole call {row['step_ms']:.3f} ms; its linear layers "
            f"{row['layers_ms']:.3f} ms measured, "
            f"{row['predicted_ms']:.3f} ms from bytes ({row['layers_ratio']:.2f}x)"
        )
        lines.append(
            f"{'layer':<32} {'kernel':<24} {'ms':>8} {'bytes':>9} {'pred ms':>8} {'ratio':>6}  "
            "verdict"
        )
        for lay in row["layers"]:
            lines.append(
                f"{lay['name']:<32} {lay['kernel']:<24} {lay['latency_ms']:>8.4f} "
                f"{lay['bytes_per_call']:>9} {lay['predicted_ms']:>8.4f} {lay['ratio']:>6.2f}  "
                f"{lay['verdict']}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    ap.add_argument("--workload", choices=("decode", "prefill"), default="decode")
    args = ap.parse_args(argv)
    result = run(args)
    print(table(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
