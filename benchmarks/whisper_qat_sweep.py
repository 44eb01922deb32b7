"""whisper-tiny-en's default-sweep QAT row through the sweep runner, next to its RTN parent and
fp32, on the first ``--limit`` evaluation utterances: what `explorer sweep` computes for those
rows, without the bf16 baseline and the per-layer analysis (neither bears on QAT, and on a
shared 2-core machine each costs minutes).

The data folder handed to the speech task is built in a temporary directory: ``eval/`` links the
first ``--limit`` utterances of the synthetic ``eval/`` audio, ``train/`` is its 120 training
utterances (so QAT trains and calibrates on ``train/`` only; `explorer.tasks.speech`). The
rows go through `explorer.sweep.runner.run_sweep` into ``--store``; stderr logs each QAT step's
wall time, stdout ends with one JSON document: the rows' WER with paired 95 % intervals against
float, QAT settings, seconds and the load average before and after.

    nice -n 10 python benchmarks/whisper_qat_sweep.py --limit 40 --qat-steps 60 --threads 2
        [--qat-lr 1e-5] [--store FILE]

Imports: `explorer` (models, sweep).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def eval_subset(audio: Path, limit: int, out: Path) -> Path:
    """``out`` with ``eval/`` (the first ``limit`` evaluation utterances, linked) and ``train/``
    (a link to the training folder)."""
    (out / "eval").mkdir(parents=True)
    with open(audio / "eval" / "transcripts.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, kept = rows[0], rows[1 : limit + 1]
    for file, _ in kept:
        os.symlink(audio / "eval" / file, out / "eval" / file)
    with open(out / "eval" / "transcripts.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *kept])
    os.symlink(audio / "train", out / "train")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=40, help="evaluation utterances")
    parser.add_argument("--qat-steps", type=int, default=None, help="default: the sweep's")
    parser.add_argument("--qat-lr", type=float, default=None, help="default: the sweep's")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--store", default=None, help="results store (default: a temporary one)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from explorer.models.whisper import audio_dir
    from explorer.models.whisper_plans import QAT_LR, QAT_STEPS, W4G128, qat_plan
    from explorer.quant.config import Plan
    from explorer.sweep.context import ModelSource, open_context
    from explorer.sweep.runner import LocalExecutor, RunSettings, run_sweep
    from explorer.sweep.space import baselines, entry_for_plan
    from explorer.sweep.store import ResultStore

    t0 = time.time()
    last = [t0]

    def log(*parts: object) -> None:
        print(f"[{time.time() - t0:7.1f} s]", *parts, file=sys.stderr, flush=True)

    def progress(done: int, total: int, stage: str = "evaluate") -> None:
        now = time.time()
        log(f"{stage} {done}/{total} {now - last[0]:.1f} s")
        last[0] = now

    steps = args.qat_steps or QAT_STEPS
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="whisper-qat-") as tmp:
        data = eval_subset(audio_dir(), args.limit, Path(tmp) / "audio")
        ctx = open_context(ModelSource(model="whisper-tiny-en", data=str(data)))
        log("data:", ctx.data.description)
        entries = [
            entry_for_plan(qat_plan(), qat_steps=steps, qat_lr=args.qat_lr or QAT_LR),
            entry_for_plan(Plan.uniform(W4G128)),
            baselines()[0],
        ]
        settings = RunSettings(repeats=args.repeats, warmup=1, n_boot=1000, per_layer=False)
        store = args.store or str(Path(tmp) / "results.sqlite")
        rows = []
        with ResultStore(store) as results:
            executor = LocalExecutor(ctx, progress=progress)
            for event in run_sweep(ctx, entries, results, settings=settings, executor=executor):
                log(event.kind, event.label, event.reason or "")
                if event.row is not None:
                    rows.append(event.row)
    result = {
        "data": ctx.data.description,
        "env": rows[0]["env"] if rows else None,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "seconds": round(time.time() - t0, 1),
        "rows": [
            {
                "label": r["label"],
                "wer": r["metrics"]["wer"],
                "wer_vs_float_95": r["metrics_ci"].get("wer"),
                "qat": {k: r[f"qat_{k}"] for k in ("steps", "lr", "batch", "data")},
                "seconds": r["seconds"],
            }
            for r in rows
        ],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
