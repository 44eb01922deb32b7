"""Audio data for speech recognition: a folder of WAV/FLAC files with a transcript CSV.

Layout: a folder (or a ``.zip`` of one) holding the audio files and one ``.csv`` whose header
names the columns ``file`` and ``text``; ``file`` is a path relative to the folder (never
leaving it), ``text`` what is said. ``--data`` may also name the CSV itself, whose folder then
holds the audio. Rows are read in order; each problem names the CSV row (its line number) or
the audio file.

Audio is untrusted data like weights. Every limit is checked before samples are allocated:
at most `MAX_UTTERANCES` rows, each file's size on disk (`MAX_FILE_BYTES`), then its duration
from the header, which must be at most `MAX_SECONDS` (10 minutes: a file), with at most
`MAX_TOTAL_SECONDS` in all, and at most the recognizer's window (Whisper hears 30 s
at a time; longer utterances must be cut, since a transcript cannot be aligned to pieces we
would cut ourselves). After decoding, the channels are averaged to mono and an utterance whose
peak is at most `SILENCE_PEAK` (-80 dBFS) is refused as silence: it has nothing to transcribe.

Sample rates: audio at another rate than the model's (16 kHz for Whisper) is resampled with
libsoxr (``soxr``, its default high-quality setting), the resampler of SoX and of FFmpeg's
``soxr`` option, so users need not convert their recordings. Decoding uses libsndfile through
``soundfile``, whose wheels bundle the library (WAV, FLAC, OGG; we accept WAV and FLAC). Both
come with the ``speech`` extra (``pip install -e '.[speech]'``); without it, reading audio
says which extra to install.

Imports: `explorer.tasks.task`, `explorer.models.safe_load` (zip extraction) and, lazily,
``soundfile``, ``soxr`` and numpy.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from explorer.tasks.task import TaskError

AUDIO_SUFFIXES = (".wav", ".flac")
MAX_UTTERANCES = 1024
"""Most CSV rows: Whisper's features alone take 0.94 MiB an utterance (80 x 3000 float32)."""
MAX_FILE_BYTES = 256 << 20
"""Largest audio file read (10 minutes of 48 kHz stereo float32 is 230 MB)."""
MAX_CSV_BYTES = 16 << 20
MAX_ZIP_BYTES = 1 << 30
MAX_SECONDS = 600.0
"""Longest audio file accepted: 10 minutes."""
MAX_TOTAL_SECONDS = 4 * 3600.0
"""Most audio in all (0.9 GB of float32 samples at 16 kHz), summed from the headers."""
SILENCE_PEAK = 1e-4
"""Largest absolute sample (full scale 1.0) of audio refused as silence: -80 dBFS."""
EXTRA = "pip install -e '.[speech]'"


@dataclass(frozen=True)
class Utterance:
    """One row of the transcript CSV: the audio file, what is said, and the samples (mono
    float32 at the model's rate)."""

    path: Path
    text: str
    audio: np.ndarray


def load_utterances(
    data: Path, rate: int, window_seconds: float, *, normalise: Any = None
) -> list[Utterance]:
    """Every row of the transcript CSV of ``data`` (a folder, a ``.zip`` of one, or the CSV),
    its audio read at ``rate`` Hz and at most ``window_seconds`` long. ``normalise(text)``, when
    given, must leave words in every transcript (the metric compares normalised words)."""
    if data.suffix.lower() == ".zip" and data.is_file():
        from explorer.models.safe_load import safe_extract_zip

        with tempfile.TemporaryDirectory(prefix="explorer-audio-") as tmp:
            root = safe_extract_zip(data, Path(tmp) / "data", max_bytes=MAX_ZIP_BYTES)
            return load_utterances(root, rate, window_seconds, normalise=normalise)
    csv_path = transcript_csv(data)
    folder = csv_path.parent
    rows = [
        (folder_file(folder, csv_path, line, f), t)
        for line, f, t in read_transcripts(csv_path, normalise)
    ]
    total = sum(audio_seconds(path, window_seconds) for path, _ in rows)  # headers only
    if total > MAX_TOTAL_SECONDS:
        raise TaskError(
            f"{csv_path.name} lists {total:,.1f} s of audio, over the limit of "
            f"{MAX_TOTAL_SECONDS:,.1f} s; give a smaller sample"
        )
    return [Utterance(path, text, read_audio(path, rate, window_seconds)) for path, text in rows]


def transcript_csv(data: Path) -> Path:
    """The transcript CSV of ``data``: the file itself, or the one ``.csv`` in the folder (or in
    its only subfolder, as a zip of a folder unpacks)."""
    if data.is_file():
        if data.suffix.lower() != ".csv":
            raise TaskError(
                f"{data.name}: a speech recognizer reads a folder of WAV/FLAC audio with a "
                "transcript CSV (columns file,text), a .zip of that folder, or the CSV itself"
            )
        return data
    if not data.is_dir():
        raise TaskError(f"{data}: no such file or folder")
    found = sorted(p for p in data.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
    subfolders = [p for p in data.iterdir() if p.is_dir() and p.name != "__MACOSX"]
    if not found and len(subfolders) == 1:
        return transcript_csv(subfolders[0])
    if len(found) != 1:
        what = "no .csv" if not found else f"{len(found)} .csv files ({found[0].name}, ...)"
        raise TaskError(
            f"audio folder {data} has {what}; give exactly one transcript CSV with the "
            "columns file,text"
        )
    return found[0]


def read_transcripts(csv_path: Path, normalise: Any = None) -> list[tuple[int, str, str]]:
    """``(line, file, text)`` of each data row, checked: both columns present and non-empty."""
    size = csv_path.stat().st_size
    if size > MAX_CSV_BYTES:
        raise TaskError(f"{csv_path.name} is {size:,} bytes, over the limit of {MAX_CSV_BYTES:,}")
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TaskError(f"{csv_path.name} is not UTF-8 text ({exc.reason})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c.strip().lower() for c in (reader.fieldnames or [])]
    if "file" not in columns or "text" not in columns:
        raise TaskError(
            f"{csv_path.name}: the header must name the columns file,text; it has "
            f"{','.join(columns) or 'none'}"
        )
    reader.fieldnames = columns
    rows = []
    for row in reader:
        line = reader.line_num
        if len(rows) >= MAX_UTTERANCES:
            raise TaskError(
                f"{csv_path.name} has more than {MAX_UTTERANCES} rows; give a smaller sample"
            )
        name = (row.get("file") or "").strip()
        said = " ".join((row.get("text") or "").split())
        if not name:
            raise TaskError(f"{csv_path.name} row {line}: the file column is empty")
        if not said:
            raise TaskError(f"{csv_path.name} row {line} ({name}): the text is empty")
        if normalise is not None and not normalise(said):
            raise TaskError(
                f"{csv_path.name} row {line} ({name}): the text {said!r} has no words once "
                "normalised (lowercase, no punctuation)"
            )
        rows.append((line, name, said))
    if not rows:
        raise TaskError(f"{csv_path.name} has no rows under its header file,text")
    return rows


def folder_file(folder: Path, csv_path: Path, line: int, name: str) -> Path:
    """The audio file a CSV row names: inside ``folder``, existing, WAV or FLAC."""
    # lexically (``..`` components), so that a folder of symbolic links to recordings works
    path = Path(os.path.normpath(folder.absolute() / name))
    if not path.is_relative_to(folder.absolute()):
        raise TaskError(f"{csv_path.name} row {line}: {name} lies outside the folder {folder}")
    if not path.is_file():
        raise TaskError(f"{csv_path.name} row {line}: the audio file {name} does not exist")
    if path.suffix.lower() not in AUDIO_SUFFIXES:
        raise TaskError(
            f"{csv_path.name} row {line}: {name} is not WAV or FLAC ({', '.join(AUDIO_SUFFIXES)})"
        )
    return path


def _soundfile() -> Any:
    try:
        import soundfile
    except ImportError:
        raise TaskError(f"reading audio needs soundfile, in the speech extra: {EXTRA}") from None
    return soundfile


def audio_seconds(path: Path, window_seconds: float) -> float:
    """The duration of ``path`` from its header, after the size limit; refused over the
    limits of the module docstring. Nothing is decoded."""
    soundfile = _soundfile()
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise TaskError(
            f"audio {path.name} is {size:,} bytes, over the limit of {MAX_FILE_BYTES:,}"
        )
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise TaskError(f"audio {path.name} is not readable WAV or FLAC ({exc})") from None
    if info.samplerate <= 0 or info.channels <= 0:
        raise TaskError(
            f"audio {path.name} declares {info.samplerate} Hz, {info.channels} channels"
        )
    seconds = info.frames / info.samplerate
    if seconds > MAX_SECONDS:
        raise TaskError(
            f"audio {path.name} is {seconds / 60:.1f} minutes long, over the limit of "
            f"{MAX_SECONDS / 60:.0f} minutes; cut it into utterances"
        )
    if seconds > window_seconds:
        raise TaskError(
            f"audio {path.name} is {seconds:.1f} s long, longer than the model's window of "
            f"{window_seconds:g} s; cut it into utterances of at most {window_seconds:g} s"
        )
    return seconds


def read_audio(path: Path, rate: int, window_seconds: float) -> np.ndarray:
    """``path`` as mono float32 samples at ``rate`` Hz, after `audio_seconds`' limits (size,
    then duration from the header, before decoding); silence refused."""
    audio_seconds(path, window_seconds)
    soundfile = _soundfile()
    try:
        samples, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise TaskError(f"audio {path.name} is not readable WAV or FLAC ({exc})") from None
    mono = samples.mean(axis=1, dtype=np.float32)  # (frames,)
    if mono.size == 0 or float(np.abs(mono).max()) <= SILENCE_PEAK:
        raise TaskError(
            f"audio {path.name} is silent (no sample above {SILENCE_PEAK:g} of full scale): "
            "nothing to transcribe"
        )
    return resample(mono, file_rate, rate)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """``samples`` (mono float32) from ``from_rate`` to ``to_rate`` Hz with libsoxr."""
    if from_rate == to_rate:
        return samples
    try:
        import soxr
    except ImportError:
        raise TaskError(
            f"audio at {from_rate} Hz must be resampled to {to_rate} Hz, which needs soxr, in "
            f"the speech extra: {EXTRA}"
        ) from None
    return soxr.resample(samples, from_rate, to_rate).astype(np.float32, copy=False)
