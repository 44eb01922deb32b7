"""faster-whisper as a reference runtime: the original Whisper files run by the runtime people
actually deploy for offline transcription (faster-whisper on CTranslate2), measured on the same
audio, with the same metric and the same threads as the explorer's own rows, so that the app
can show its points beside ours.

It is not a `Target`: it does not run the explorer's quantization plans. CTranslate2 quantizes
the whole model itself when it loads it (``compute_type``: ``float32`` keeps the weights as
they are, ``int8`` stores the linear layers' weights in int8 with one scale per output row and
quantizes activations dynamically; Klein et al., "Efficient and High-Quality Neural Machine
Translation with OpenNMT", WNGT 2020). Its rows are *reference points*, never on a front.

Each row (`reference_rows`) comes from:

- decoding each utterance greedily from its raw audio, with faster-whisper's own feature
  extraction (one beam, temperature 0, no timestamps, no voice-activity filter, no
  conditioning on earlier text, English) and its own length limit (``max_length`` 448, of
  which CTranslate2 writes at most half: the speech task's
  `explorer.models.whisper_decoding.transcript_limit`, so a repetition loop runs as long in
  both);
- the speech task's word count (`explorer.tasks.speech.word_errors`: ``jiwer`` on text
  normalised by `normalise_text`) and its paired bootstrap against the float model's
  per-utterance counts (`explorer.measure.evaluation.summarize`, same resamples and seed), so
  the interval is of the difference from the explorer's own float model, as every row's is;
- the time to transcribe the same clip the speech task's ``transcribe_10s`` workload times,
  under the machine-wide timing lock (`measure_callable`), as milliseconds and as real-time
  factor (seconds per second of audio).

It reports progress (``progress(done, total, text)``) after loading each compute type, each
utterance and each timing, so a page can show where a run of minutes stands.

Imports: `explorer.measure`, `explorer.tasks`, `explorer.targets.base`; faster-whisper and
CTranslate2 inside functions (the ``speech`` extra).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from explorer.measure.evaluation import FIDELITY_KEYS, SampleStats, summarize
from explorer.measure.latency import measure_callable
from explorer.targets.base import TargetError
from explorer.tasks.audio import Utterance
from explorer.tasks.speech import word_errors

NAME = "faster-whisper"
COMPUTE_TYPES = ("float32", "int8")
EXTRA = "pip install -e '.[speech]'"
WORKLOAD = "transcribe_10s"
Progress = Callable[[int, int, str], None]
"""``progress(done, total, text)``: steps finished, steps in all, what runs next."""


def missing() -> str | None:
    """Why faster-whisper cannot run here (naming the extra that installs it), or None."""
    absent = [n for n in ("faster_whisper", "ctranslate2") if importlib.util.find_spec(n) is None]
    if not absent:
        return None
    return (
        f"{NAME} is not installed ({', '.join(absent)} missing); install the speech extra: {EXTRA}"
    )


def versions() -> dict[str, str]:
    """faster-whisper's and CTranslate2's versions (part of what a cached row depends on)."""
    import ctranslate2
    import faster_whisper

    return {"faster_whisper": faster_whisper.__version__, "ctranslate2": ctranslate2.__version__}


def load(ct2_dir: Path, compute_type: str, threads: int) -> Any:
    """A faster-whisper ``WhisperModel`` of the CTranslate2 files in ``ct2_dir`` on the CPU."""
    reason = missing()
    if reason:
        raise TargetError(reason)
    if compute_type not in COMPUTE_TYPES:
        raise TargetError(f"compute_type must be one of {COMPUTE_TYPES}, got {compute_type!r}")
    from faster_whisper import WhisperModel

    return WhisperModel(
        str(ct2_dir), device="cpu", compute_type=compute_type, cpu_threads=threads, num_workers=1
    )


def transcribe(model: Any, audio: np.ndarray) -> str:
    """Greedy transcript of 16 kHz mono ``audio`` (the module docstring's settings)."""
    segments, _ = model.transcribe(
        audio,
        language="en",
        beam_size=1,
        best_of=1,
        temperature=0.0,
        without_timestamps=True,
        condition_on_previous_text=False,
        vad_filter=False,
    )
    return " ".join(s.text.strip() for s in segments)  # a generator: decoding happens here


def utterance_stats(references: Sequence[str], hypotheses: Sequence[str]) -> SampleStats:
    """Per-utterance word errors and reference words, as the speech task counts them."""
    counts = [word_errors(r, h) for r, h in zip(references, hypotheses, strict=True)]
    errors, words = zip(*counts, strict=True)
    return SampleStats(
        n_samples=len(counts),
        word_errors=torch.tensor(errors, dtype=torch.float64),
        words=torch.tensor(words, dtype=torch.float64),
    )


def wer_interval(
    float_stats: SampleStats, stats: SampleStats, *, n_boot: int, seed: int
) -> tuple[float, float]:
    """The 95 % paired-bootstrap interval of WER(``stats``) - WER(``float_stats``), from the
    speech rows' own `summarize` (no fidelity here: its columns are zeros, and only the word
    error rate's interval is read)."""
    zeros = {key: torch.zeros(stats.n_samples, dtype=torch.float64) for key in FIDELITY_KEYS}
    lo, hi = summarize(float_stats, stats, zeros, n_boot=n_boot, seed=seed).metrics_ci["wer"]
    return float(lo), float(hi)


def reference_rows(
    ct2_dir: Path,
    utterances: Sequence[Utterance],
    clip: np.ndarray,
    *,
    rate: int,
    threads: int,
    float_stats: SampleStats | None = None,
    compute_types: Sequence[str] = COMPUTE_TYPES,
    warmup: int = 1,
    repeats: int = 3,
    n_boot: int = 1000,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """One row per compute type: faster-whisper's word error rate on ``utterances`` (audio at
    ``rate`` Hz and reference text) with its interval against ``float_stats`` (the explorer's
    float model on the same utterances, in the same order; no interval without it), and its
    time to transcribe ``clip`` (median of ``repeats`` after ``warmup``) with ``threads``
    threads. Rows are shaped like the sweep's where they overlap (``label``, ``metrics``,
    ``metrics_ci``, ``latency_ms``, ``latency``), with ``kind`` ``"reference"``.

    ``progress`` hears of every step: per compute type, each utterance transcribed and the
    clip timed (``len(compute_types) * (len(utterances) + 1)`` steps)."""
    if rate != 16_000:
        raise TargetError(f"faster-whisper reads 16 kHz audio; the utterances are at {rate} Hz")
    if not utterances:
        raise TargetError("no utterances to transcribe")
    if float_stats is not None and float_stats.n_samples != len(utterances):
        raise TargetError(
            f"the float model was scored on {float_stats.n_samples} utterances, "
            f"faster-whisper is given {len(utterances)}"
        )
    audio_seconds = clip.size / rate
    total = len(compute_types) * (len(utterances) + 1)
    done = 0

    def report(text: str) -> None:
        if progress is not None:
            progress(done, total, text)

    rows = []
    for compute_type in compute_types:
        label = f"{NAME} {compute_type}"
        report(f"{label}: loading the model")
        model = load(ct2_dir, compute_type, threads)
        hypotheses = []
        for i, utterance in enumerate(utterances):
            report(f"{label}: utterance {i + 1} of {len(utterances)}")
            hypotheses.append(transcribe(model, utterance.audio))
            done += 1
        stats = utterance_stats([u.text for u in utterances], hypotheses)
        ci = None
        if float_stats is not None:
            ci = list(wer_interval(float_stats, stats, n_boot=n_boot, seed=seed))
        report(f"{label}: timing the {audio_seconds:g} s clip ({warmup} + {repeats} runs)")
        timing = measure_callable(lambda m=model: transcribe(m, clip), warmup, repeats)
        done += 1
        rtf = timing.median_ms / 1000.0 / audio_seconds
        rows.append(
            {
                "key": f"{NAME}:{compute_type}",
                "label": label,
                "kind": "reference",
                "target": NAME,
                "compute_type": compute_type,
                "threads": threads,
                "detail": f"CTranslate2 compute_type {compute_type}, {threads} threads, greedy",
                "metric_name": "wer",
                "metrics": {"wer": stats.wer()},
                "metrics_ci": {"wer": ci},
                "n_samples": stats.n_samples,
                "transcripts": hypotheses,
                "latency_ms": timing.median_ms,
                "latency_workload": WORKLOAD,
                "latency": {WORKLOAD: {**timing.to_dict(), "kind": "measured", "rtf": rtf}},
            }
        )
        del model  # one CTranslate2 model in memory at a time
    report("done")
    return rows
