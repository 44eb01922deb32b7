"""The conversion check of whisper-tiny-en, at test scale: on three synthetic evaluation
utterances, our converted float model fed the speech task's log-mels (`log_mel`) transcribes
word for word what faster-whisper float32 transcribes from the original CTranslate2 files, and
the log-mels themselves equal faster-whisper's to 1e-4.

The utterances (2, 5 and 7 of the evaluation split) are ones where transformers' default
features (the audio padded with silence to 30 s) made greedy decoding take another word, so
this also fails if the speech task goes back to them. The full check on 200 utterances is
``benchmarks/whisper_tiny.py``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from explorer.models import whisper

UTTERANCES = (2, 5, 7)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """The utterances as the speech task reads them: synthesized, written as 16-bit WAV as the
    audio folder holds them, read back."""
    if whisper.missing_packages():
        pytest.skip(f"whisper-tiny-en needs the speech extra: {whisper.INSTALL_HINT}")
    pytest.importorskip(
        "faster_whisper", reason=f"the check runs faster-whisper, in the speech extra: "
        f"{whisper.INSTALL_HINT}"
    )  # fmt: skip
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
def test_float_transcripts_equal_faster_whisper_float32(clips: list[np.ndarray]) -> None:
    from faster_whisper.audio import pad_or_trim
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from explorer.models.whisper_convert import bundled_ct2_dir
    from explorer.models.whisper_features import log_mel
    from explorer.targets.faster_whisper import load, transcribe

    hf_dir: Path = whisper.model_dir()
    model = WhisperForConditionalGeneration.from_pretrained(hf_dir, local_files_only=True)
    processor = WhisperProcessor.from_pretrained(hf_dir, local_files_only=True)
    runtime = load(bundled_ct2_dir(), "float32", threads=1)

    features = log_mel(processor.feature_extractor, clips)  # (3, 80, 3000)
    for clip, ours in zip(clips, features, strict=True):
        theirs = pad_or_trim(runtime.feature_extractor(clip)[:, :-1])  # transcribe()'s window
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=0, atol=1e-4)

    with torch.inference_mode():
        ids = model.eval().generate(features, max_new_tokens=128)
    ours = [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]
    theirs = [transcribe(runtime, clip) for clip in clips]
    assert ours == theirs
    assert all(len(t.split()) >= 5 for t in ours)  # real sentences, not empty or garbage
