"""Whisper's encoder input: log-mel features of a clip, as the transcription runtimes compute
them (`log_mel`). Used by the speech task, the built-in's latency workload and the benchmark,
so that all of them feed the encoder the same numbers.

Imports: numpy, torch; the feature extractor is passed in (``transformers``'
``WhisperFeatureExtractor``, from the model's directory).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

CHUNK = 32
"""Clips per call of the extractor (its STFT holds the batch, padded to the longest clip)."""


def log_mel(extractor: Any, audio: Sequence[np.ndarray]) -> torch.Tensor:
    """Log-mel features (n, M, F) of each clip in ``audio`` (float32 at the extractor's rate,
    at most one window long), computed as OpenAI's ``whisper.transcribe`` and faster-whisper
    feed the encoder: the log-mel of the speech alone, then zero frames up to the window's F.

    The two ways of filling a 30 s window differ. ``WhisperFeatureExtractor`` by default pads
    the *audio* with silence to 30 s before the STFT, so the padded frames hold the clamped
    log of silence (``max - 8`` before the ``(x + 4) / 4`` scaling, a negative value that
    depends on the clip's loudness). The transcription runtimes take the mel of the clip (plus
    one hop of zero samples, so that the last content frame sees zeros, not a reflection) and
    pad the *features* with 0.0 (OpenAI's ``transcribe`` computes the mel of the audio
    followed by 30 s of zeros, but then also keeps only the clip's frames and pads them with
    0.0). Greedy decoding of a short clip reacts to the difference: on the synthetic evaluation
    audio the two paddings differ by about 2 points of word error rate. We follow the runtimes,
    since a quantized model is judged against what it would be deployed with
    (``benchmarks/whisper_tiny.py`` and ``tests/models/test_whisper_conversion.py`` check our
    transcripts against faster-whisper's). The ``transformers`` pipeline keeps the audio padding.

    Here the directory's own extractor computes the STFT and mel (its filters, its clamp, per
    clip), with ``padding="longest"`` so a batch is padded only to its longest clip with zero
    samples (silent frames, so the clamp's maximum stays the clip's own); each clip keeps its
    first ``samples // hop`` frames (the count of faster-whisper's ``content_frames``), and the
    rest stays 0."""
    hop, frames = int(extractor.hop_length), int(extractor.nb_max_frames)
    window, rate = int(extractor.n_samples), int(extractor.sampling_rate)
    # reflect padding at the start of the STFT needs at least n_fft / 2 + 1 samples
    least = int(extractor.n_fft) + 1
    out = torch.zeros(len(audio), int(extractor.feature_size), frames)
    for start in range(0, len(audio), CHUNK):
        clips = [np.asarray(a, dtype=np.float32)[:window] for a in audio[start : start + CHUNK]]
        padded = [np.pad(c, (0, max(hop, least - c.size))) for c in clips]
        mel = extractor(
            padded,
            sampling_rate=rate,
            padding="longest",
            max_length=window + least,
            return_tensors="pt",
        )["input_features"]  # (n, M, >= frames kept)
        for i, clip in enumerate(clips):
            kept = min(clip.size // hop, frames)
            out[start + i, :, :kept] = mel[i, :, :kept].float()
    return out
