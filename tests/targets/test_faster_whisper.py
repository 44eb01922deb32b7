"""faster-whisper beside the built-in Whisper (`explorer.targets.faster_whisper`,
`explorer.sweep.references`): on a folder of five espeak-ng utterances (the first calibrates,
an evaluation budget of 2 keeps the next two, about 1.7 s each), float32 and int8 rows carry
the speech task's word error rate of their own transcripts, the paired-bootstrap interval
against the explorer's float model on the same two utterances, and the real-time factor of the
task's 10 s clip; a second call reads them from the cache. Why it cannot run is said plainly."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from explorer.measure.evaluation import SampleStats
from explorer.sweep.context import ModelSource, open_context
from explorer.sweep.references import (
    eval_audio,
    faster_whisper_rows,
    faster_whisper_support,
    reference_settings,
    stored_faster_whisper_rows,
)
from explorer.sweep.runner import RunSettings
from explorer.targets import faster_whisper
from explorer.tasks.speech import normalise_text

from .speech_audio import SENTENCES, write_speech_folder

SETTINGS = RunSettings(eval_budget=2, warmup=0, repeats=1, n_boot=200)


def test_missing_runtime_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "faster_whisper" else real(name, *a),
    )
    assert faster_whisper.missing() == (
        "faster-whisper is not installed (faster_whisper missing); install the speech extra: "
        "pip install -e '.[speech]'"
    )
    lm = SimpleNamespace(task="lm", name="tiny", metric="perplexity", source=None)
    assert faster_whisper_support(lm) == "faster-whisper transcribes speech; tiny is a lm model"  # type: ignore[arg-type]
    mine = SimpleNamespace(
        task="speech", name="my-whisper", metric="wer", source=ModelSource(model="/m")
    )
    assert faster_whisper_support(mine) == (  # type: ignore[arg-type]
        "faster-whisper runs the original CTranslate2 files of the built-in whisper-tiny-en; "
        "my-whisper has none"
    )


def test_the_interval_of_a_model_against_itself_is_zero() -> None:
    stats = SampleStats(
        n_samples=3,
        word_errors=torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64),
        words=torch.tensor([4.0, 5.0, 6.0], dtype=torch.float64),
    )
    assert faster_whisper.wer_interval(stats, stats, n_boot=200, seed=0) == (0.0, 0.0)


def test_reference_settings_follow_the_float_row() -> None:
    rows = [{"label": "W8"}, {"label": "fp32", "n_samples": 4, "env": {"threads": 3}}]
    threads, settings = reference_settings(rows)
    assert (threads, settings.eval_budget, settings.per_layer) == (3, 4, False)


def test_reference_rows_report_each_utterance_and_timing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Progress without the runtime: a stand-in model whose transcript is the utterance's
    reference, so the rows are exact and every step is heard, in order."""
    from explorer.tasks.audio import Utterance

    monkeypatch.setenv("EXPLORER_TIMING_LOCK", str(tmp_path / "timing.lock"))
    texts = {1.0: "open the window", 2.0: "it is a sunny day"}
    monkeypatch.setattr(faster_whisper, "load", lambda _dir, compute_type, _threads: compute_type)
    monkeypatch.setattr(faster_whisper, "transcribe", lambda _m, audio: texts.get(audio[0], ""))
    utterances = [
        Utterance(Path(f"u{i}.wav"), text, np.full(160, i, dtype=np.float32))
        for i, text in texts.items()
    ]
    heard: list[tuple[int, int, str]] = []
    rows = faster_whisper.reference_rows(
        Path("ct2"),
        utterances,
        np.zeros(16_000, dtype=np.float32),
        rate=16_000,
        threads=1,
        warmup=0,
        repeats=1,
        progress=lambda done, total, text: heard.append((done, total, text)),
    )
    assert [r["metrics"]["wer"] for r in rows] == [0.0, 0.0]
    steps = []
    for k, kind in enumerate(faster_whisper.COMPUTE_TYPES):
        steps += [
            (3 * k, f"faster-whisper {kind}: loading the model"),
            (3 * k, f"faster-whisper {kind}: utterance 1 of 2"),
            (3 * k + 1, f"faster-whisper {kind}: utterance 2 of 2"),
            (3 * k + 2, f"faster-whisper {kind}: timing the 1 s clip (0 + 1 runs)"),
        ]
    assert heard == [(done, 6, text) for done, text in steps] + [(6, 6, "done")]


def _tones(folder: Path, texts: list[str]) -> None:
    """``texts`` as 0.1 s tones (16 kHz WAV, a pitch each) with their transcript CSV."""
    import wave

    folder.mkdir(parents=True, exist_ok=True)
    lines = ["file,text"]
    for i, text in enumerate(texts):
        tone = 0.3 * np.sin(2 * np.pi * (300 + 50 * i) * np.arange(1600) / 16_000)
        with wave.open(str(folder / f"t{i}.wav"), "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(16_000)
            f.writeframes((tone * 32767).astype("<i2").tobytes())
        lines.append(f"t{i}.wav,{text}")
    (folder / "transcripts.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("layout", ["train folder", "one folder"])
def test_eval_audio_is_what_the_task_evaluated(tmp_path: Path, layout: str) -> None:
    """With ``train/`` beside ``eval/`` (the built-in's audio) every ``eval/`` utterance is
    evaluated; in one folder the first (calibration) ones are not."""
    evaluated = ["alpha one", "bravo two", "charlie three"]
    if layout == "train folder":
        _tones(tmp_path / "eval", evaluated)
        _tones(tmp_path / "train", ["delta four", "echo five"])
        calibration, expected = 2, evaluated
    else:
        _tones(tmp_path, ["delta four", *evaluated])
        calibration, expected = 1, evaluated
    extractor = SimpleNamespace(sampling_rate=16_000, n_samples=480_000)
    ctx = SimpleNamespace(
        name="whisper-tiny-en",
        task_spec=SimpleNamespace(
            processor=SimpleNamespace(feature_extractor=extractor), references=expected
        ),
        data=SimpleNamespace(workload_inputs={"audio": torch.ones(160)}),
        source=ModelSource(model="whisper-tiny-en", data=str(tmp_path)),
        eval_split=(None, torch.tensor([0, 2])),
        calibration_split=(torch.zeros(calibration, 1), None),
    )
    utterances, clip, rate = eval_audio(ctx)  # type: ignore[arg-type]
    assert [u.text for u in utterances] == [expected[0], expected[2]]
    assert rate == 16_000 and clip.size == 160


@pytest.fixture(scope="module")
def audio_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_speech_folder(tmp_path_factory.mktemp("speech"))


def _errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """Word edits and reference words, straight from jiwer on the normalised texts."""
    import jiwer

    out = jiwer.process_words(normalise_text(reference), normalise_text(hypothesis))
    return out.substitutions + out.deletions + out.insertions, len(out.references[0])


@pytest.mark.slow
def test_faster_whisper_rows_on_the_evaluated_utterances(
    audio_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXPLORER_TIMING_LOCK", str(tmp_path / "timing.lock"))
    ctx = open_context(ModelSource(model="whisper-tiny-en", data=str(audio_folder)))
    assert faster_whisper_support(ctx) is None
    budgeted = ctx.budgeted(2)
    utterances, clip, rate = eval_audio(budgeted)
    assert [u.text for u in utterances] == SENTENCES[1:3]  # 5 // 4 = 1 calibrates
    assert rate == 16_000 and clip.size == 10 * rate
    assert max(u.audio.size for u in utterances) <= 5 * rate

    rows = faster_whisper_rows(ctx, threads=1, settings=SETTINGS, cache=tmp_path)
    assert [r["label"] for r in rows] == ["faster-whisper float32", "faster-whisper int8"]
    float_stats = budgeted.reference.stats
    f_errors, words = float_stats.word_errors.tolist(), float_stats.words.tolist()
    for row in rows:
        assert (row["kind"], row["threads"], row["n_samples"]) == ("reference", 1, 2)
        counts = [_errors(u.text, h) for u, h in zip(utterances, row["transcripts"], strict=True)]
        assert [w for _, w in counts] == words
        wer = sum(e for e, _ in counts) / sum(words)
        assert row["metrics"]["wer"] == pytest.approx(wer, abs=1e-12)
        assert row["metrics"]["wer"] <= 0.5, row["transcripts"]  # clean speech: mostly right
        # each resample of two utterances is (0, 0), (0, 1) or (1, 1): the interval lies
        # within the deltas of those three sets
        deltas = [
            (counts[i][0] + counts[j][0] - f_errors[i] - f_errors[j]) / (words[i] + words[j])
            for i, j in ((0, 0), (0, 1), (1, 1))
        ]
        lo, hi = row["metrics_ci"]["wer"]
        assert min(deltas) - 1e-12 <= lo <= hi <= max(deltas) + 1e-12
        timing = row["latency"]["transcribe_10s"]
        assert timing["rtf"] == pytest.approx(timing["median_ms"] / 1e4, rel=1e-12)
        assert row["latency_ms"] == timing["median_ms"]

    def recomputed(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the stored rows should have been read")

    monkeypatch.setattr(faster_whisper, "reference_rows", recomputed)
    assert faster_whisper_rows(ctx, threads=1, settings=SETTINGS, cache=tmp_path) == rows
    assert stored_faster_whisper_rows(ctx, threads=1, settings=SETTINGS, cache=tmp_path) == rows
    other = RunSettings(eval_budget=2, warmup=0, repeats=2, n_boot=200)
    assert stored_faster_whisper_rows(ctx, threads=1, settings=other, cache=tmp_path) is None
