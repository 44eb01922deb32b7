"""The conversion check of whisper-tiny-en, at test scale: on three synthetic evaluation
utterances, our converted float model fed the speech task's log-mels (`log_mel`) transcribes
word for word what faster-whisper float32 transcribes from the original CTranslate2 files, and
the log-mels themselves equal faster-whisper's to 1e-4.

The utterances (2, 5 and 7 of the evaluation split) are ones where transformers' default
features (the audio padded with silence to 30 s) made greedy decoding take another word, so
this also fails if the speech task goes back to them. The full check on 200 utterances is
``benchmarks/whisper_tiny.py``.

Both sides stop at the same length: faster-whisper's ``max_length`` is the converted config's
decoder positions, and a transcript that never ends (a repetition loop, forced here by
suppressing the end of text in a tiny random Whisper) is `transcript_limit` tokens long in
CTranslate2 and in ours."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from explorer.models import whisper
from explorer.models.whisper_decoding import transcript_limit

UTTERANCES = (2, 5, 7)


@pytest.fixture(scope="module")
def models() -> tuple[Any, Any, Any]:
    """Our converted float model, its processor, and faster-whisper float32 on the original
    files (one thread)."""
    if whisper.missing_packages():
        pytest.skip(f"whisper-tiny-en needs the speech extra: {whisper.INSTALL_HINT}")
    pytest.importorskip(
        "faster_whisper", reason=f"the check runs faster-whisper, in the speech extra: "
        f"{whisper.INSTALL_HINT}"
    )  # fmt: skip
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from explorer.models.whisper_convert import bundled_ct2_dir
    from explorer.targets.faster_whisper import load

    hf_dir: Path = whisper.model_dir()
    model = WhisperForConditionalGeneration.from_pretrained(hf_dir, local_files_only=True)
    processor = WhisperProcessor.from_pretrained(hf_dir, local_files_only=True)
    return model.float().eval(), processor, load(bundled_ct2_dir(), "float32", threads=1)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """The utterances as the speech task reads them: synthesized, written as 16-bit WAV as the
    audio folder holds them, read back."""
    from explorer.models import whisper_audio
    from explorer.tasks.audio import read_audio

    if shutil.which("espeak-ng") is None:
        pytest.skip(f"synthesizing speech needs espeak-ng: {whisper_audio.INSTALL_HINT}")
    utterances = whisper_audio.plan(whisper_audio.read_sentences(), "eval")
    folder = tmp_path_factory.mktemp("speech")
    out = []
    for i in UTTERANCES:
        path = folder / f"{i}.wav"
        whisper_audio.write_wav(path, whisper_audio.synthesize(utterances[i], i))
        out.append(read_audio(path, whisper_audio.SAMPLE_RATE, 30.0))
    return out


@pytest.mark.slow
def test_float_transcripts_equal_faster_whisper_float32(
    models: tuple[Any, Any, Any], clips: list[np.ndarray]
) -> None:
    from faster_whisper.audio import pad_or_trim

    from explorer.models.whisper_features import log_mel
    from explorer.targets.faster_whisper import transcribe

    model, processor, runtime = models
    # faster-whisper's max_length (its own constant) is the converted config's decoder
    # positions, so both runtimes stop after `transcript_limit` tokens
    assert runtime.max_length == model.config.max_target_positions
    features = log_mel(processor.feature_extractor, clips)  # (3, 80, 3000)
    for clip, ours in zip(clips, features, strict=True):
        theirs = pad_or_trim(runtime.feature_extractor(clip)[:, :-1])  # transcribe()'s window
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=0, atol=1e-4)

    limit = transcript_limit(model.config.max_target_positions, 2)  # <|sot|><|notimestamps|>
    with torch.inference_mode():
        ids = model.generate(features, max_new_tokens=limit)
    ours = [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]
    theirs = [transcribe(runtime, clip) for clip in clips]
    assert ours == theirs
    assert all(len(t.split()) >= 5 for t in ours)  # real sentences, not empty or garbage


def test_a_transcript_that_never_ends_stops_where_ctranslate2_stops(tmp_path: Path) -> None:
    """A tiny random Whisper (tests/models/test_whisper_convert.py's, 12 decoder positions) with
    the end of text suppressed: CTranslate2 given ``max_length`` L writes `transcript_limit`
    (L, prompt) tokens, for L the decoder's positions (what faster-whisper passes for OpenAI's
    checkpoints, checked above) and for a shorter L; ours, converted, writes as many."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from models.test_whisper_convert import FRAMES, MELS, TARGETS, write_ct2_whisper
    from transformers import WhisperForConditionalGeneration

    from explorer.models.whisper_convert import cached_conversion
    from explorer.tasks.speech import generation_config

    write_ct2_whisper(tmp_path / "ct2")
    vocabulary = (tmp_path / "ct2" / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    prompt = [vocabulary.index(t) for t in ("<|startoftranscript|>", "<|notimestamps|>")]
    eot = vocabulary.index("<|endoftext|>")
    features = torch.randn(1, MELS, 2 * FRAMES, generator=torch.Generator().manual_seed(3))

    runtime = ctranslate2.models.Whisper(str(tmp_path / "ct2"), device="cpu", intra_threads=1)
    view = ctranslate2.StorageView.from_array(features.numpy())
    for max_length in (TARGETS, TARGETS - 3):
        (result,) = runtime.generate(
            view, [prompt], beam_size=1, max_length=max_length, suppress_tokens=[-1, eot]
        )
        assert len(result.sequences_ids[0]) == transcript_limit(max_length, len(prompt))

    out = cached_conversion(tmp_path / "ct2", "tiny", cache=tmp_path / "cache")
    model = WhisperForConditionalGeneration.from_pretrained(out, local_files_only=True).eval()
    limit = transcript_limit(model.config.max_target_positions, len(prompt))
    config = generation_config(model, prompt, limit)
    config.suppress_tokens = [*(config.suppress_tokens or []), eot]
    with torch.inference_mode():
        ours = model.generate(features, generation_config=config)[0].tolist()
    ours = ours[len(prompt) :] if ours[: len(prompt)] == prompt else ours
    assert eot not in ours and len(ours) == limit == TARGETS // 2
