"""Synthetic English speech for whisper-tiny-en: sentences of the bundled corpus spoken by
``espeak-ng`` with several voices, speeds and pitches, mixed with noise at stated SNRs.

Why synthetic. Freely licensed real recordings are not available offline here, so the evaluation
audio is made: the sentences (``assets/whisper-tiny-en/sentences.txt``, picked from tiny-lm's
corpus of CPython docstrings by ``scripts/make_speech_audio.py --sentences``) are spoken by a
formant synthesizer. Its speech is clean, perfectly paced and monotone, and sounds robotic;
Whisper was trained on real voices, so absolute word error rates here are not those of real
recordings (they are higher on rare technical words and lower on accents and crosstalk). What
the audio does measure well is the *difference* between a float and a quantized model on the
same utterances, which is what the explorer compares.

Recipe (seeded, `SEED`): utterance ``i`` draws from ``numpy.random.default_rng([SEED, i])`` a
voice of `VOICES` (espeak-ng language + variant), a speed of `SPEEDS` (words per minute), a pitch
of `PITCHES` (0-99) and an SNR of `SNRS_DB` (``None`` = no noise; 30, 20 and 15 dB). The noise
is pink (power falling as 1/f, closer to room and street noise than white), scaled so that
``10 log10(P_speech / P_noise)`` equals the SNR. espeak-ng speaks at 22,050 Hz; the audio is
resampled to Whisper's 16 kHz with soxr (high quality) and written as 16-bit mono WAV, with a
transcript CSV (``file,text``) per split.

Splits: the first `EVAL_SENTENCES` sentences are ``eval``; the rest are ``train`` (calibration and
QAT), disjoint by construction (and checked: `explorer.tasks.speech.check_disjoint`).
``long_utterance`` speaks eval sentences back to back into one 10 s clip for the latency
workload.

Generated on first use into ``<cache>/audio/whisper-tiny-en-<hash>``, the hash covering the
sentences, this recipe's version and the espeak-ng version; written into a temporary folder and
renamed into place.

Imports: ``explorer.errors``, ``explorer.paths`` and the registry's ``ASSETS``; numpy and soxr.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from explorer.errors import ModelLoadError
from explorer.paths import cache_dir

SEED = 16
RECIPE_VERSION = 3
SAMPLE_RATE = 16_000
ESPEAK_RATE = 22_050
EVAL_SENTENCES = 200
CALIBRATION_UTTERANCES = 32  # the speech task's calibration share of a folder
VOICES: tuple[str, ...] = (
    "en-us",
    "en-us+f3",
    "en-gb",
    "en-gb+f2",
    "en-gb+m3",
    "en-gb-x-rp+f4",
    "en-us+m3",
    "en-us+m7",
)
"""espeak-ng language + variant. Its Caribbean (en-029) and Scottish (en-gb-scotland) voices
were tried and dropped: faster-whisper int8 made 72 % word errors on them against 17-40 % on
these (80 utterances, recipe 1), too far from speech Whisper was trained on to measure
quantization by."""
SPEEDS: tuple[int, ...] = (140, 160, 180)
PITCHES: tuple[int, ...] = (35, 50, 65)
SNRS_DB: tuple[float | None, ...] = (None, 30.0, 20.0, 15.0)
LONG_SECONDS = 10.0
INSTALL_HINT = "apt-get install espeak-ng"


def sentences_path() -> Path:
    from explorer.models.registry import ASSETS

    return ASSETS / "whisper-tiny-en" / "sentences.txt"


def read_sentences(path: Path | None = None) -> list[str]:
    path = path or sentences_path()
    if not path.is_file():
        raise ModelLoadError(f"the sentence list is missing at {path}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass(frozen=True)
class Utterance:
    """One synthesized sentence: what was spoken, and how."""

    file: str
    text: str
    voice: str
    speed: int
    pitch: int
    snr_db: float | None


def plan(sentences: list[str], split: str, seed: int = SEED) -> list[Utterance]:
    """The utterances of ``split`` (``eval`` or ``train``) with their seeded voice settings."""
    if split == "eval":
        chosen = list(enumerate(sentences[:EVAL_SENTENCES]))
    elif split == "train":
        chosen = list(enumerate(sentences[EVAL_SENTENCES:], start=EVAL_SENTENCES))
    else:
        raise ValueError(f"unknown split {split!r}; splits: eval, train")
    out = []
    for i, text in chosen:
        rng = np.random.default_rng([seed, i])
        out.append(
            Utterance(
                file=f"utt{i:04d}.wav",
                text=text,
                voice=VOICES[rng.integers(len(VOICES))],
                speed=SPEEDS[rng.integers(len(SPEEDS))],
                pitch=PITCHES[rng.integers(len(PITCHES))],
                snr_db=SNRS_DB[rng.integers(len(SNRS_DB))],
            )
        )
    return out


def espeak_version() -> str:
    try:
        done = subprocess.run(
            ["espeak-ng", "--version"], capture_output=True, text=True, check=True, timeout=30
        )
    except (FileNotFoundError, subprocess.CalledProcessError):
        raise ModelLoadError(
            f"synthesizing the evaluation audio needs espeak-ng; install it: {INSTALL_HINT}"
        ) from None
    return done.stdout.strip()


def speak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """``text`` spoken by espeak-ng: float32 samples at `SAMPLE_RATE`, in [-1, 1]."""
    import soxr

    done = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        capture_output=True,
        check=True,
        timeout=120,
    )
    raw = done.stdout
    if raw[:4] != b"RIFF":
        raise ModelLoadError(f"espeak-ng wrote no WAV for voice {voice}")
    # espeak-ng streams a WAV whose header sizes are placeholders; the samples follow the
    # 44-byte header as 16-bit mono at 22,050 Hz.
    samples = np.frombuffer(raw[44 : 44 + (len(raw) - 44) // 2 * 2], dtype="<i2")
    audio = samples.astype(np.float32) / 32768.0
    return soxr.resample(audio, ESPEAK_RATE, SAMPLE_RATE, quality="HQ").astype(np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power pink noise: white Gaussian noise whose spectrum is shaped by 1/sqrt(f)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spectrum.size, dtype=np.float64)
    f[0] = 1.0
    noise = np.fft.irfft(spectrum / np.sqrt(f), n)
    return noise / np.sqrt(np.mean(noise**2))


def add_noise(speech: np.ndarray, snr_db: float | None, rng: np.random.Generator) -> np.ndarray:
    """``speech`` plus pink noise at ``snr_db`` (speech power over the voiced samples, so that
    pauses do not dilute it); unchanged when ``snr_db`` is None. Clipped to [-1, 1]."""
    if snr_db is None:
        return speech
    voiced = speech[np.abs(speech) > 1e-3]
    power = float(np.mean(voiced.astype(np.float64) ** 2)) if voiced.size else 0.0
    noise = pink_noise(speech.size, rng) * np.sqrt(power / 10 ** (snr_db / 10))
    return np.clip(speech + noise, -1.0, 1.0).astype(np.float32)


def write_wav(path: Path, audio: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())


def synthesize(utterance: Utterance, index: int, seed: int = SEED) -> np.ndarray:
    speech = speak(utterance.text, utterance.voice, utterance.speed, utterance.pitch)
    rng = np.random.default_rng([seed, index, 1])  # the noise's own stream
    return add_noise(speech, utterance.snr_db, rng)


def write_split(folder: Path, utterances: list[Utterance], seed: int = SEED) -> None:
    """The WAV files of ``utterances`` and ``transcripts.csv`` (``file,text``) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for utt in utterances:
        write_wav(folder / utt.file, synthesize(utt, int(utt.file[3:7]), seed))
    write_transcripts(folder / "transcripts.csv", utterances)


def write_transcripts(path: Path, utterances: list[Utterance]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "text"])
        writer.writerows((u.file, u.text) for u in utterances)


def write_voices(path: Path, utterances: list[Utterance]) -> None:
    """Each utterance's voice, speed, pitch and SNR (empty: no noise), for analysis."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "voice", "speed_wpm", "pitch", "snr_db"])
        writer.writerows(
            (u.file, u.voice, u.speed, u.pitch, "" if u.snr_db is None else u.snr_db)
            for u in utterances
        )


def long_utterance(sentences: list[str], seconds: float = LONG_SECONDS) -> tuple[np.ndarray, str]:
    """Eval sentences spoken back to back (voice ``en-us``, 160 wpm) into exactly ``seconds``
    of audio, padded with silence: the latency workload's clip and its transcript."""
    pause = np.zeros(int(0.3 * SAMPLE_RATE), dtype=np.float32)
    parts: list[np.ndarray] = []
    texts: list[str] = []
    total = int(seconds * SAMPLE_RATE)
    for text in sentences[:EVAL_SENTENCES]:
        audio = speak(text, "en-us", 160, 50)
        used = sum(p.size for p in parts)
        if used + audio.size > total:
            continue
        parts += [audio, pause]
        texts.append(text)
        if total - used - audio.size < SAMPLE_RATE:  # under a second left
            break
    clip = np.concatenate(parts)[:total]
    return np.pad(clip, (0, total - clip.size)), " ".join(texts)


def _fingerprint(sentences: list[str]) -> str:
    digest = hashlib.sha256(f"recipe {RECIPE_VERSION} seed {SEED}\n".encode())
    digest.update(espeak_version().encode())
    digest.update("\n".join(sentences).encode("utf-8"))
    return digest.hexdigest()[:16]


def speech_audio(cache: Path | None = None) -> Path:
    """The folder of the synthetic audio, generated on first use. Each subfolder holds WAV files
    and one ``transcripts.csv``: ``eval/`` the 200 evaluation utterances, ``train/`` the 120
    training ones (the speech task, given this folder, evaluates ``eval/`` and calibrates and
    trains on ``train/``), ``sweep/`` the first `CALIBRATION_UTTERANCES` training utterances
    followed by the evaluation ones (the same calibration and evaluation as one folder, for
    tools that take one), ``long10s/`` the 10 s clip. ``voices.csv`` records how each utterance
    was spoken."""
    sentences = read_sentences()
    root = (cache if cache is not None else cache_dir()) / "audio"
    target = root / f"whisper-tiny-en-{_fingerprint(sentences)}"
    if (target / "long10s" / "transcripts.csv").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".speech-", dir=root))
    try:
        out = tmp / "audio"
        splits = {split: plan(sentences, split) for split in ("eval", "train")}
        for split, utterances in splits.items():
            write_split(out / split, utterances)
        sweep = splits["train"][:CALIBRATION_UTTERANCES] + splits["eval"]
        (out / "sweep").mkdir()
        for utt in sweep:
            split = "eval" if utt in splits["eval"] else "train"
            shutil.copyfile(out / split / utt.file, out / "sweep" / utt.file)
        write_transcripts(out / "sweep" / "transcripts.csv", sweep)
        write_voices(out / "voices.csv", splits["eval"] + splits["train"])
        clip, text = long_utterance(sentences)
        (out / "long10s").mkdir()
        write_wav(out / "long10s" / "clip.wav", clip)
        with open(out / "long10s" / "transcripts.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("file", "text"), ("clip.wav", text)])
        try:
            os.replace(out, target)
        except OSError:
            if not (target / "long10s" / "transcripts.csv").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
