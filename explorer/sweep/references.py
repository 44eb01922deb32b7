"""Reference points for a model's results: the same model run by the runtime people deploy it
with, on the same evaluation data, with the same threads, beside the explorer's own rows.

Today that is faster-whisper for the built-in Whisper (`explorer.targets.faster_whisper`), whose
original CTranslate2 files ship with it; a user's Whisper directory has no such files. The
utterances are exactly the ones the speech task evaluated (`eval_audio`: those of the data's
``eval/`` folder where it has a ``train/`` one, else the held-out utterances after the
calibration ones; in order, cut to the rows' evaluation budget), and the timed clip is the
``transcribe_10s`` workload's.

Computing the points transcribes every evaluated utterance twice (float32 and int8) and times
the clip, so they are kept in the cache folder as JSON (`faster_whisper_rows`), keyed by
everything that changes them: the model and data fingerprints, the threads, the run settings,
the compute types and the runtime's versions. `stored_faster_whisper_rows` reads them back
without computing anything (the app draws them when present).

Imports: `explorer.sweep.context`, `explorer.sweep.runner`, `explorer.targets`, `explorer.tasks`,
`explorer.models.whisper`, `explorer.paths`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from explorer import paths
from explorer.errors import ExplorerError
from explorer.sweep.context import ModelContext
from explorer.sweep.default import DEFAULT_RUN
from explorer.sweep.runner import RunSettings
from explorer.targets import faster_whisper
from explorer.tasks.audio import Utterance, load_utterances
from explorer.tasks.speech import data_folders, normalise_text

SCHEMA = 1
"""The stored rows' layout (and a part of their key)."""


class ReferenceError(ExplorerError, ValueError):
    """Reference points cannot be computed for this model (the message says why)."""


def faster_whisper_support(ctx: ModelContext) -> str | None:
    """Why faster-whisper cannot run beside ``ctx``'s rows (the message names what to change or
    install), or None when it can."""
    from explorer.models.whisper import NAME

    if ctx.task != "speech":
        return f"faster-whisper transcribes speech; {ctx.name} is a {ctx.task} model"
    if ctx.source.model != NAME or ctx.source.weights is not None:
        return (
            f"faster-whisper runs the original CTranslate2 files of the built-in {NAME}; "
            f"{ctx.name} has none"
        )
    if ctx.metric != "wer":
        return "faster-whisper is compared on audio with transcripts; this run has none"
    return faster_whisper.missing()


def eval_audio(ctx: ModelContext) -> tuple[list[Utterance], np.ndarray, int]:
    """The utterances ``ctx`` evaluates (audio and reference text, in evaluation order), the
    clip its ``transcribe_10s`` workload times, and their sample rate."""
    task, data = ctx.task_spec, ctx.data
    if task is None or data is None or ctx.source.data is None or ctx.eval_split[1] is None:
        raise ReferenceError(f"{ctx.name} has no evaluation audio with transcripts")
    extractor = task.processor.feature_extractor
    rate = int(extractor.sampling_rate)
    window = float(extractor.n_samples) / rate
    evaluated, train_dir = data_folders(Path(ctx.source.data))
    utterances = load_utterances(evaluated, rate, window, normalise=normalise_text)
    # without a train/ folder the task calibrates on the folder's first utterances
    held_out = utterances if train_dir else utterances[len(ctx.calibration_split[0]) :]
    chosen = [held_out[i] for i in ctx.eval_split[1].tolist()]
    expected = [task.references[i] for i in ctx.eval_split[1].tolist()]
    if [u.text for u in chosen] != expected:
        raise ReferenceError(
            f"{ctx.source.data} changed since {ctx.name} was loaded: reload the model"
        )
    clip = data.workload_inputs["audio"].numpy()
    return chosen, clip, rate


def _key(ctx: ModelContext, threads: int, settings: RunSettings, types: Sequence[str]) -> str:
    parts = {
        "schema": SCHEMA,
        "model": ctx.fingerprint,
        "data": ctx.data_fingerprint,
        "threads": threads,
        "warmup": settings.warmup,
        "repeats": settings.repeats,
        "n_boot": settings.n_boot,
        "seed": settings.seed,
        "compute_types": list(types),
        "versions": faster_whisper.versions(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _path(key: str, cache: Path | None) -> Path:
    folder = cache if cache is not None else paths.cache_dir()
    return folder / "references" / f"faster-whisper-{key}.json"


def stored_faster_whisper_rows(
    ctx: ModelContext,
    *,
    threads: int,
    settings: RunSettings,
    compute_types: Sequence[str] = faster_whisper.COMPUTE_TYPES,
    cache: Path | None = None,
) -> list[dict[str, Any]] | None:
    """The rows `faster_whisper_rows` computed earlier with these settings, or None (also
    when faster-whisper cannot run here)."""
    if faster_whisper_support(ctx) is not None:
        return None
    ctx = ctx.budgeted(settings.eval_budget)
    path = _path(_key(ctx, threads, settings, compute_types), cache)
    try:
        return json.loads(path.read_text())["rows"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def faster_whisper_rows(
    ctx: ModelContext,
    *,
    threads: int,
    settings: RunSettings,
    compute_types: Sequence[str] = faster_whisper.COMPUTE_TYPES,
    cache: Path | None = None,
    progress: faster_whisper.Progress | None = None,
) -> list[dict[str, Any]]:
    """faster-whisper's rows (`explorer.targets.faster_whisper.reference_rows`) on the
    utterances ``ctx`` evaluates, paired with its float model's, timed with ``settings``'
    warm-up and repeats, on its evaluation budget; stored in the cache folder and read back
    when computed before. ``progress(done, total, text)`` hears of each utterance and timing."""
    reason = faster_whisper_support(ctx)
    if reason:
        raise ReferenceError(reason)
    ctx = ctx.budgeted(settings.eval_budget)
    stored = stored_faster_whisper_rows(
        ctx, threads=threads, settings=settings, compute_types=compute_types, cache=cache
    )
    if stored is not None:
        return stored
    from explorer.models.whisper_convert import bundled_ct2_dir

    utterances, clip, rate = eval_audio(ctx)
    rows = faster_whisper.reference_rows(
        bundled_ct2_dir(),
        utterances,
        clip,
        rate=rate,
        threads=threads,
        float_stats=ctx.reference.stats,
        compute_types=compute_types,
        warmup=settings.warmup,
        repeats=settings.repeats,
        n_boot=settings.n_boot,
        seed=settings.seed,
        progress=progress,
    )
    for row in rows:
        row["model"] = ctx.name
        row["evaluation_data"] = ctx.data.description if ctx.data is not None else None
    path = _path(_key(ctx, threads, settings, compute_types), cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"rows": rows}, indent=1))
    tmp.replace(path)  # readers see the whole file or none
    return rows


def reference_settings(
    rows: Sequence[dict[str, Any]], base: RunSettings = DEFAULT_RUN
) -> tuple[int, RunSettings]:
    """The threads and run settings that put reference points beside ``rows``: the float row's
    threads and evaluation budget (its utterance count), ``base``'s timing and bootstrap."""
    from explorer import machine

    float_row = next((r for r in rows if r.get("label") == "fp32"), rows[0] if rows else {})
    threads = (float_row.get("env") or {}).get("threads") or machine.threads()
    budget = float_row.get("n_samples")
    budget = budget if isinstance(budget, int) and budget > 0 else None
    return int(threads), replace(base, eval_budget=budget, per_layer=False)
