"""What the error-compensating PTQ algorithms buy on tiny-lm, next to round-to-nearest and QAT.

For each weight-only setting (W4 g32, W4 g128, W3 g128; symmetric, min-max ranges) the built-in
tiny-lm is quantized by round-to-nearest (RTN), GPTQ and AWQ (calibrated on its 64-row
calibration split), and trained by QAT from the RTN point (``--qat-steps`` Adam steps of
``--qat-batch`` random 256-token windows of the training split, at peak rate ``--qat-lr`` under
`explorer.nn.qat.qat_lr_at`'s warm-up and cosine schedule; batch and rate default to tiny-lm's
QAT defaults, as in a sweep). Each model's per-token perplexity
is measured on the held-out split, with the paired-bootstrap 95 % interval of its
difference from RTN (`explorer.measure.evaluation.compare_pair`).

Perplexity runs each quantized layer on the reference kernel: the function the real kernels
compute (tests/kernels holds them to it), at fp32 GEMM speed. Every algorithm stores the same
packed format as RTN, and the table's last column names the real kernels the layers would run.

tiny-lm was trained for only 600 steps, so more training alone lowers its perplexity: the
``float+train`` row is the float model trained exactly as QAT trains (same steps, batches, seed
and learning rate, no quantization), the control that separates QAT's recovery of the rounding
loss from plain extra training.

Seconds: ``calibrate`` is what `quantize_model` spent on calibration statistics and the algorithm
(``quant_report.seconds``; each algorithm starts from an empty statistics cache, so it pays for its
own pass over the calibration data); ``qat`` is the whole QAT run (prepare, train, convert).
Machine load inflates every figure alike; the threads used are recorded.

Prints a table, then one JSON document (the last line on stdout).

Usage: python benchmarks/algorithms_tinylm.py [--qat-steps 100] [--qat-batch 8] [--threads 2]
       [--settings "W4 g32" "W4 g128" "W3 g128"]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explorer.kernels.select import REFERENCE  # noqa: E402
from explorer.measure.evaluation import SampleStats, _concat, compare_pair, lm_stats  # noqa: E402
from explorer.models.registry import get_builtin  # noqa: E402
from explorer.models.tinylm import LogitsOnly, random_batch, split_ids  # noqa: E402
from explorer.nn.convert import quant_modules, quantize_model  # noqa: E402
from explorer.nn.qat import QAT_SCHEDULE, train_qat  # noqa: E402
from explorer.quant.config import Plan, QuantConfig  # noqa: E402

SETTINGS = {
    "W4 g32": QuantConfig(weight_bits=4, granularity="group", group_size=32),
    "W4 g128": QuantConfig(weight_bits=4, granularity="group", group_size=128),
    "W3 g128": QuantConfig(weight_bits=3, granularity="group", group_size=128),
}
PTQ_ALGORITHMS = ("rtn", "gptq", "awq")
EVAL_BATCH = 16


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sample_stats(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> SampleStats:
    parts = []
    with torch.inference_mode():
        for i in range(0, len(x), EVAL_BATCH):
            parts.append(lm_stats(model(x[i : i + EVAL_BATCH]), y[i : i + EVAL_BATCH]))
    return _concat(parts)


def on_reference(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """The model with every quantized layer on the reference kernel, and the real kernels the
    layers had chosen by default (sorted, distinct)."""
    mods = quant_modules(model)
    kernels = sorted({m.kernel_name for m in mods.values()})
    for module in mods.values():
        module.use_kernel(REFERENCE.name)
    return model, kernels


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def qat_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "steps": args.qat_steps,
        "batch": args.qat_batch,
        "lr": args.qat_lr,
        "schedule": QAT_SCHEDULE,
    }


def qat_run(
    model: nn.Module,
    config: QuantConfig | None,
    train_ids: torch.Tensor,
    args: argparse.Namespace,
) -> nn.Module:
    """QAT of ``model`` under ``config`` (None: float training, the control), seeded."""
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    return train_qat(
        model,
        Plan.uniform(config),
        lambda _step: random_batch(train_ids, args.qat_batch, generator),
        args.qat_steps,
        lr=args.qat_lr,
        loss_fn=lm_loss,
    ).eval()


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    spec = get_builtin("tiny-lm")
    model = LogitsOnly(spec.load())  # model(ids) -> logits, for the loss and the stats
    calibration = spec.load_split("calibration")[0]
    x_eval, y_eval = spec.load_split("eval")
    train_ids = split_ids("train")

    t0 = time.perf_counter()
    float_stats = sample_stats(model, x_eval, y_eval)
    eval_seconds = time.perf_counter() - t0
    log(f"float: perplexity {float_stats.perplexity():.4f} ({eval_seconds:.1f} s to evaluate)")
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    trained = qat_run(model, None, train_ids, args)
    train_seconds = time.perf_counter() - t0
    trained_stats = sample_stats(trained, x_eval, y_eval)
    log(f"float+train: perplexity {trained_stats.perplexity():.4f} ({train_seconds:.1f} s)")
    for setting in args.settings:
        base = SETTINGS[setting]
        stats: dict[str, SampleStats] = {}
        for algorithm in PTQ_ALGORITHMS:
            config = base.with_(algorithm=algorithm)
            t0 = time.perf_counter()
            qmodel = quantize_model(model, Plan.uniform(config), calibration_data=calibration)
            seconds = time.perf_counter() - t0
            report = qmodel.quant_report
            qmodel, kernels = on_reference(qmodel)
            stats[algorithm] = sample_stats(qmodel, x_eval, y_eval)
            rows.append(
                {
                    "setting": setting,
                    "method": "ptq",
                    "algorithm": algorithm,
                    "config": config.name,
                    "perplexity": stats[algorithm].perplexity(),
                    "seconds": {
                        "quantize": seconds,
                        "calibrate": report.seconds["calibrate"],
                        "statistics": report.seconds["statistics"],
                        "algorithm": report.seconds["algorithm"],
                    },
                    "kernels": kernels,
                }
            )
            log(f"{setting} {algorithm}: {rows[-1]['perplexity']:.4f}, {seconds:.1f} s")
        t0 = time.perf_counter()
        qat_model = qat_run(model, base.with_(method="qat"), train_ids, args)
        qat_seconds = time.perf_counter() - t0
        qat_model, kernels = on_reference(qat_model)
        stats["qat"] = sample_stats(qat_model, x_eval, y_eval)
        rows.append(
            {
                "setting": setting,
                "method": "qat",
                "algorithm": "rtn",
                "config": base.with_(method="qat").name,
                "perplexity": stats["qat"].perplexity(),
                "seconds": {"qat": qat_seconds},
                "qat": qat_settings(args),
                "kernels": kernels,
            }
        )
        log(f"{setting} qat: {rows[-1]['perplexity']:.4f}, {qat_seconds:.1f} s")
        for row in rows[-4:]:
            name = "qat" if row["method"] == "qat" else row["algorithm"]
            for key, other in (
                ("delta_vs_rtn", stats["rtn"]),
                ("delta_vs_float", float_stats),
                *([("delta_vs_float_trained", trained_stats)] if name == "qat" else []),
            ):
                pair = compare_pair(stats[name], other, n_boot=args.n_boot, seed=args.seed)
                row[key] = {"delta": pair.delta, "ci": list(pair.ci)}
    vs_float = compare_pair(trained_stats, float_stats, n_boot=args.n_boot, seed=args.seed)
    return {
        "model": "tiny-lm",
        "float": {"perplexity": float_stats.perplexity(), "seconds": {"evaluate": eval_seconds}},
        "float_trained": {
            "perplexity": trained_stats.perplexity(),
            "delta_vs_float": {"delta": vs_float.delta, "ci": list(vs_float.ci)},
            "seconds": {"train": train_seconds},
        },
        "qat": qat_settings(args),
        "eval": {"rows": int(x_eval.shape[0]), "tokens": int(y_eval.numel())},
        "calibration_rows": int(calibration.shape[0]),
        "rows": rows,
        "env": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        },
    }


def table(result: dict[str, Any]) -> str:
    trained = result["float_trained"]
    qat = result["qat"]
    lines = [
        f"tiny-lm, per-token perplexity on {result['eval']['tokens']} held-out tokens "
        f"(float {result['float']['perplexity']:.4f}); Δ vs RTN with its 95 % paired interval",
        f"float+train (QAT's {qat['steps']} steps of batch {qat['batch']} at lr {qat['lr']:g}, "
        f"no quantization): {trained['perplexity']:.4f}, "
        f"{trained['seconds']['train']:.1f} s",
        "",
        f"{'setting':<8} {'method':<5} {'perplexity':>10} {'Δ vs RTN':>9} {'95 % interval':>20} "
        f"{'Δ vs float':>11} {'seconds':>17}  kernels",
    ]
    for row in result["rows"]:
        name = "QAT" if row["method"] == "qat" else row["algorithm"].upper()
        delta = row["delta_vs_rtn"]
        lo, hi = delta["ci"]
        secs = row["seconds"]
        cost = f"qat {secs['qat']:.1f}" if "qat" in secs else f"calibrate {secs['calibrate']:.1f}"
        vs_float = row.get("delta_vs_float_trained", row["delta_vs_float"])["delta"]
        mark = "*" if "delta_vs_float_trained" in row else " "
        lines.append(
            f"{row['setting']:<8} {name:<5} {row['perplexity']:>10.4f} {delta['delta']:>+9.4f} "
            f"[{lo:+.4f}, {hi:+.4f}] {vs_float:>+10.4f}{mark} {cost:>17}  "
            f"{', '.join(row['kernels'])}"
        )
    lines.append("* QAT against float+train, the float model trained for the same steps")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qat-steps", type=int, default=100)
    ap.add_argument("--qat-batch", type=int, default=None, help="default: the model's")
    ap.add_argument("--qat-lr", type=float, default=None, help="peak rate; default: the model's")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS), metavar="SETTING"
    )
    args = ap.parse_args(argv)
    spec = get_builtin("tiny-lm")
    args.qat_batch = args.qat_batch or spec.qat_batch
    args.qat_lr = args.qat_lr or spec.qat_lr
    result = run(args)
    print(table(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
