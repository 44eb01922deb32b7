"""Speech recognition: a tiny random Whisper (d_model 32, one layer each side) with a byte-level
BPE tokenizer trained here and Whisper's special tokens, a feature extractor of 16 mel bins and
a 2 s window, saved with ``save_pretrained``; WAV and FLAC files of tones and noise with a
transcript CSV. The row runs end to end through the CLI; its WER equals jiwer's on the decoded
texts of the same quantized model; the normaliser and every bad-audio message are checked."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from explorer.measure.evaluation import SampleStats, summarize
from explorer.quant.config import Plan
from explorer.sweep.context import ModelSource, open_context
from explorer.tasks import TaskError, detect_task
from explorer.tasks import audio as audio_module
from explorer.tasks.audio import load_utterances
from explorer.tasks.speech import (
    normalise_text,
    pack_outputs,
    unpack_outputs,
    word_errors,
)

from .builders import cli_w8_row, sentences

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
soundfile = pytest.importorskip("soundfile")
jiwer = pytest.importorskip("jiwer")

SPECIALS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|transcribe|>",
    "<|notimestamps|>",
]
RATE = 16000
WINDOW_S = 2


def save_whisper(path: Path, mel_bins: int = 16) -> None:
    """A random Whisper with its processor: BPE of 200 tokens (the specials first), 16 mel
    bins (or ``mel_bins``) over a 2 s window (200 frames, 100 encoder positions), 24 decoder
    positions."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=200,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(sentences(200, seed=4), trainer)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(path / "tok")
    tokenizer = transformers.WhisperTokenizer.from_pretrained(path / "tok")
    extractor = transformers.WhisperFeatureExtractor(feature_size=mel_bins, chunk_length=WINDOW_S)
    transformers.WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(
        path
    )
    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=mel_bins, d_model=32, encoder_layers=1,
        decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=100,
        max_target_positions=24, pad_token_id=0, bos_token_id=0, eos_token_id=0,
        decoder_start_token_id=1, suppress_tokens=[], begin_suppress_tokens=[],
    )  # fmt: skip
    model = transformers.WhisperForConditionalGeneration(config)
    model.generation_config.is_multilingual = True
    model.generation_config.no_timestamps_token_id = 4
    model.save_pretrained(path)


def tone(seconds: float, freq: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * np.sin(2 * math.pi * freq * t) + 0.05 * noise).astype(np.float32)


def write_folder(root: Path, n: int = 10, texts: list[str] | None = None) -> Path:
    """``n`` utterances of 0.6-1.5 s: WAV at 16 kHz, one WAV at 8 kHz (resampled), one FLAC;
    saying ``texts`` if given, else ``n`` seeded sentences."""
    root.mkdir(parents=True)
    rows = ["file,text"]
    for i, text in enumerate(sentences(n, seed=7) if texts is None else texts):
        rate = 8000 if i == 1 else RATE
        name = f"u{i}.flac" if i == 2 else f"u{i}.wav"
        soundfile.write(root / name, tone(0.6 + 0.1 * i, 200 + 40 * i, rate, seed=i), rate)
        rows.append(f'{name},"{text}"')
    (root / "transcripts.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("whisper")
    save_whisper(root / "model")
    write_folder(root / "audio")
    return root / "model"


def test_normalise_text() -> None:
    assert normalise_text("  Hello, World!  It's   a TEST-case.") == "hello world its a test case"
    assert normalise_text("\u201cQuoted\u201d \u2014 don\u2019t (stop)") == "quoted dont stop"
    assert normalise_text("?!.") == ""
    assert word_errors("The cat sat.", "the bat sat on") == (2, 3)  # 1 sub + 1 insertion
    assert word_errors("The cat sat.", "") == (3, 3)


def test_packed_outputs_round_trip() -> None:
    logits = torch.randn(2, 3, 5)
    scored = torch.tensor([[True, True, False], [True, False, False]])
    packed = pack_outputs(logits, scored, torch.tensor([[7, 0, -1], [3, -1, -1]]))
    got_logits, got_scored, ids = unpack_outputs(packed)
    assert torch.equal(got_logits, logits) and torch.equal(got_scored, scored)
    assert ids == [[7, 0], [3]]


def test_whisper_is_the_speech_task(whisper_dir: Path) -> None:
    config = json.loads((whisper_dir / "config.json").read_text())
    assert detect_task(config, whisper_dir) == "speech"


def test_default_sweep_of_a_whisper_model(whisper_dir: Path) -> None:
    """The default sweep of a Whisper model: baselines, W8, W8A8, W4 g32/g128, the encoder at 8
    bits with the decoder at 4 (whose rules reach the layers of the wrapped model) and W4 g128
    trained by QAT."""
    from explorer.nn.convert import resolve_plan
    from explorer.sweep.default import default_entries
    from explorer.tasks.speech import SpeechRecognizer

    model = transformers.WhisperForConditionalGeneration.from_pretrained(whisper_dir)
    recognizer = SpeechRecognizer(model)
    entries, skipped = default_entries(recognizer)
    assert not skipped
    assert [e.label for e in entries] == [
        "fp32",
        "bf16",
        "W8 channel sym ptq",
        "W8 channel sym A8 token dynamic ptq",
        "W4 group32 sym ptq",
        "W4 group128 sym ptq",
        "mixed: whisper.model.encoder.*=W8 channel sym ptq; rest=W4 group128 sym ptq",
        "W4 group128 sym qat (200 steps)",
    ]
    assert (entries[-1].qat_steps, entries[-1].qat_lr) == (200, 1e-4)
    bits = {n: a.config.weight_bits for n, a in resolve_plan(recognizer, entries[-2].plan).items()}
    assert bits["whisper.model.encoder.layers.0.fc1"] == 8
    assert bits["whisper.model.decoder.layers.0.encoder_attn.k_proj"] == 4
    assert bits["whisper.proj_out"] == 4
    bare = default_entries(model)[0][-2].plan  # a bare Whisper's layers have no prefix
    assert resolve_plan(model, bare)["model.encoder.layers.0.fc1"].config.weight_bits == 8


@pytest.mark.slow
def test_speech_row_through_the_cli(whisper_dir: Path, tmp_path: Path) -> None:
    row = cli_w8_row(whisper_dir, whisper_dir.parent / "audio", tmp_path / "r.sqlite", repeats=2)
    assert row["task"] == "speech" and row["metric_name"] == "wer"
    assert {"wer", "kl", "kl_p99", "same_top"} <= set(row["metrics"])
    lo, hi = row["metrics_ci"]["wer"]
    assert lo <= hi
    assert row["latency_workload"] == "transcribe_10s"
    timing = row["latency"]["transcribe_10s"]
    assert timing["rtf"] == pytest.approx(timing["median_ms"] / 1000 / 10.0, rel=1e-12)

    # the row's WER is jiwer's on the normalised texts that the same W8 model decodes
    ctx = open_context(ModelSource(model=str(whisper_dir), data=str(whisper_dir.parent / "audio")))
    from explorer.nn.convert import quantize_model

    qmodel = quantize_model(ctx.model, Plan.from_dict(row["config"]))
    task = ctx.task_spec
    hypotheses = []
    for x, _ in ctx.eval_batches():
        with torch.inference_mode():
            _, _, ids = unpack_outputs(task.outputs(qmodel, x))
        hypotheses += [normalise_text(task.decode(t)) for t in ids]
    references = [normalise_text(t) for t in task.references]
    assert row["metrics"]["wer"] == pytest.approx(jiwer.wer(references, hypotheses), abs=1e-12)


# --- data: formats and every refusal ----------------------------------------------------------


def test_folder_zip_and_csv_read_alike(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "audio", n=4)
    utterances = load_utterances(folder, RATE, WINDOW_S, normalise=normalise_text)
    assert [u.path.name for u in utterances] == ["u0.wav", "u1.wav", "u2.flac", "u3.wav"]
    assert utterances[1].audio.size == round(0.7 * RATE)  # 8 kHz, resampled to 16 kHz
    assert utterances[0].text == sentences(4, seed=7)[0]
    archive = tmp_path / "audio.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(folder.iterdir()):
            z.write(f, f"audio/{f.name}")
    zipped = load_utterances(archive, RATE, WINDOW_S)
    by_csv = load_utterances(folder / "transcripts.csv", RATE, WINDOW_S)
    links = tmp_path / "links"  # a folder of symbolic links to recordings kept elsewhere
    links.mkdir()
    for f in folder.iterdir():
        (links / f.name).symlink_to(f)
    linked = load_utterances(links, RATE, WINDOW_S)
    for a, *others in zip(utterances, zipped, by_csv, linked, strict=True):
        assert all(np.array_equal(a.audio, b.audio) for b in others)


def bad_folder(root: Path, rows: list[str], files: dict[str, tuple[np.ndarray, int]]) -> Path:
    root.mkdir()
    for name, (samples, rate) in files.items():
        soundfile.write(root / name, samples, rate)
    (root / "t.csv").write_text("\n".join(["file,text", *rows]) + "\n")
    return root


LONG = np.full(601 * 1000, 0.1, np.float32)  # 10 min 1 s at 1 kHz: a small file
BAD = {
    "missing file": (
        ["a.wav,hello", "gone.wav,hi there"],
        {},
        r"t.csv row 3: the audio file gone.wav does not exist",
    ),
    "empty text": (['a.wav,""'], {}, r"t.csv row 2 \(a.wav\): the text is empty"),
    "no words": (
        ["a.wav,?!"],
        {},
        r"t.csv row 2 \(a.wav\): the text '\?!' has no words once normalised",
    ),
    "outside": (["../a.wav,hi"], {}, r"t.csv row 2: ../a.wav lies outside the folder"),
    "silence": (
        ["s.wav,hi"],
        {"s.wav": (np.zeros(RATE, np.float32), RATE)},
        r"audio s.wav is silent",
    ),
    "window": (
        ["l.wav,hi"],
        {"l.wav": (tone(3, 300), RATE)},
        r"audio l.wav is 3.0 s long, longer than the model's window of 2 s",
    ),
    "10 minutes": (
        ["h.wav,hi"],
        {"h.wav": (LONG, 1000)},
        r"audio h.wav is 10.0 minutes long, over the limit of 10 minutes",
    ),
}


@pytest.mark.parametrize(("rows", "files", "message"), BAD.values(), ids=BAD.keys())
def test_bad_rows_and_audio_are_named(
    rows: list[str],
    files: dict[str, tuple[np.ndarray, int]],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = {"a.wav": (tone(1, 300), RATE), **files}
    folder = bad_folder(tmp_path / "bad", rows, files)

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("a file over a limit must be refused before it is decoded")

    if "long" in message:
        monkeypatch.setattr(soundfile, "read", no_decoding)
    with pytest.raises(TaskError, match=message):
        load_utterances(folder, RATE, WINDOW_S, normalise=normalise_text)


def test_unreadable_and_oversized_files_and_bad_csvs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = bad_folder(tmp_path / "bad", ["a.wav,hi"], {})
    (folder / "a.wav").write_bytes(b"RIFF not really a wave file")
    with pytest.raises(TaskError, match=r"audio a.wav is not readable WAV or FLAC"):
        load_utterances(folder, RATE, WINDOW_S)
    soundfile.write(folder / "a.wav", tone(1, 300), RATE)
    monkeypatch.setattr(audio_module, "MAX_FILE_BYTES", 1000)
    with pytest.raises(TaskError, match=r"audio a.wav is 32,044 bytes, over the limit of 1,000"):
        load_utterances(folder, RATE, WINDOW_S)
    (folder / "t.csv").write_text("path,sentence\na.wav,hi\n")
    with pytest.raises(TaskError, match=r"t.csv: the header must name the columns file,text"):
        load_utterances(folder, RATE, WINDOW_S)
    (folder / "u.csv").write_text("file,text\n")
    with pytest.raises(TaskError, match=r"has 2 .csv files"):
        load_utterances(folder, RATE, WINDOW_S)
    with pytest.raises(TaskError, match=r"a.wav: a speech recognizer reads a folder of WAV/FLAC"):
        load_utterances(folder / "a.wav", RATE, WINDOW_S)


def test_row_count_and_total_duration_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_folder(tmp_path / "audio", n=4)  # 0.6 + 0.7 + 0.8 + 0.9 s
    monkeypatch.setattr(audio_module, "MAX_TOTAL_SECONDS", 2.5)
    with pytest.raises(TaskError, match=r"lists 3.0 s of audio, over the limit of 2.5 s"):
        load_utterances(folder, RATE, WINDOW_S)
    monkeypatch.setattr(audio_module, "MAX_UTTERANCES", 3)
    with pytest.raises(TaskError, match=r"transcripts.csv has more than 3 rows"):
        load_utterances(folder, RATE, WINDOW_S)


def test_wer_interval_is_of_the_paired_delta() -> None:
    words = torch.tensor([3.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    f = SampleStats(
        4, word_errors=torch.tensor([1.0, 0.0, 2.0, 0.0], dtype=torch.float64), words=words
    )
    q = SampleStats(
        4, word_errors=torch.tensor([2.0, 0.0, 2.0, 1.0], dtype=torch.float64), words=words
    )
    fidelity = {k: torch.ones(4, dtype=torch.float64) for k in ("signal", "noise", "cosine")}
    same = summarize(f, f, fidelity, n_boot=200)
    assert same.metrics["wer"] == pytest.approx(3 / 15, abs=1e-15)
    assert same.metrics_ci["wer"] == (0.0, 0.0)
    worse = summarize(f, q, fidelity, n_boot=200)
    assert worse.metrics["wer"] == pytest.approx(5 / 15, abs=1e-15)
    lo, hi = worse.metrics_ci["wer"]
    assert 0.0 <= lo <= 2 / 15 <= hi  # quantized never better on any utterance
