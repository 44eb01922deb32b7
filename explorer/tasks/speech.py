"""Speech recognition (Whisper, ``WhisperForConditionalGeneration``): word error rate on audio
with transcripts, fidelity of the decoder's token distributions to float, and the time to
transcribe 10 s of audio as a real-time factor.

Data: a folder of WAV/FLAC files with a transcript CSV (`explorer.tasks.audio`), turned into
log-mel features by the directory's own feature extractor (``WhisperProcessor``, local files
only) as the transcription runtimes pad them (the clip's frames, then zeros:
`explorer.models.whisper_features.log_mel`). Without data, seeded noise gives fidelity only.

Training audio. A folder with a ``train/`` subfolder (its own WAV/FLAC files and transcript
CSV) keeps evaluation audio out of both training and calibration: every utterance of the
folder (or of its ``eval/`` subfolder, where it has one: the built-in's synthetic audio) is
evaluated, the first `CALIBRATION_UTTERANCES` of ``train/`` calibrate, and QAT trains on all of
``train/`` (`TaskData.train_split`). No sentence may be in both (compared after
`normalise_text`): a repeated one is refused, since QAT could learn it by heart. Without
``train/``, the first utterances (a quarter, at most `CALIBRATION_UTTERANCES`) calibrate, the
rest are evaluated, and QAT trains on the calibration utterances (the data's description says
so).

Decoding is greedy through the model's own ``generate`` (one beam, no sampling), from a fixed
prompt: ``<|startoftranscript|>``, then
``<|en|><|transcribe|>`` for a multilingual model whose tokenizer has those tokens (English
transcription, never language detection or translation), then ``<|notimestamps|>``. An
English-only model (generation config ``is_multilingual: false``, or OpenAI's English-only
vocabulary of 51,864 tokens) gets no language or task token: it was never trained with them.
A transcript stops at the end of text or after `transcript_limit` tokens (448 // 2 = 224 for
every OpenAI Whisper), where OpenAI's decoder and CTranslate2 (so faster-whisper) stop too: a
model caught in a repetition loop writes as many words in every runtime.

Word error rate (WER) is (substitutions + deletions + insertions) / reference words, counted by
``jiwer`` on texts normalised by `normalise_text`: lowercase, apostrophes removed (``don't`` →
``dont``), every other punctuation character (Unicode category P) a space, whitespace
collapsed. It is a fraction (0.05 is 5 %); per-utterance counts let the paired bootstrap
resample utterances (`explorer.measure.evaluation.summarize`).

Fidelity is the causal-LM one (`explorer.measure.evaluation.token_fidelity`), teacher-forced:
both models read the same audio and the float model's own transcript, and at each transcript
token (and the end of text) the quantized decoder's next-token distribution is compared with
the float one's: KL (mean, p99) and how often both pick the same top token.

The sweep runs every model as ``model(x)`` on one tensor (calibration, per-layer outputs, QAT),
so the Whisper model is wrapped in `SpeechRecognizer`, whose input row packs the log-mel
features and the decoder's input ids (`pack_inputs`): the prompt and a transcript (the float
model's for evaluation, the reference for calibration, whose next-token targets QAT trains on).
Its layers are ``whisper.model.encoder...``, ``whisper.model.decoder...``, ``whisper.proj_out``.
`SpeechTask.outputs` returns one tensor too (`pack_outputs`): the teacher-forced logits, which
positions are scored, and the greedy transcript's token ids.

Workload ``transcribe_10s``: 10 s of audio (the evaluation utterances one after another, or
noise) transcribed end to end: feature extraction, encoder, greedy decoding, in windows of the
model's length (one for Whisper's 30 s). The row reports its time and ``rtf`` = seconds /
10 s of audio (below 1: faster than real time).

Imports: `explorer.tasks.task`, `.audio`, `.text`, `explorer.measure.evaluation`,
`explorer.models.whisper_features`, `.whisper_decoding` and, lazily,
``transformers`` and ``jiwer``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from explorer.measure.evaluation import SampleStats, token_fidelity
from explorer.models.whisper_decoding import transcript_limit
from explorer.models.whisper_features import log_mel
from explorer.tasks.audio import EXTRA, Utterance, load_utterances
from explorer.tasks.task import Task, TaskData, TaskError, Workload, named_output
from explorer.tasks.text import tokenizer_summary

CALIBRATION_UTTERANCES = 32
MIN_UTTERANCES = 4
WORKLOAD_SECONDS = 10.0
NOISE_UTTERANCES = 12
ENGLISH_ONLY_VOCAB = 51864
PAD = -1
IGNORE = -100
PROMPT_TOKENS = ("<|en|>", "<|transcribe|>")
NO_TIMESTAMPS = "<|notimestamps|>"
APOSTROPHES = frozenset("'\u2019\u02bc")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
"""Where a feature extractor's settings live (``transformers`` 5 writes the second)."""


def normalise_text(text: str) -> str:
    """The text WER compares: lowercase, apostrophes removed, other punctuation (Unicode
    category P: ``.,;:!?"-()`` ...) turned into spaces, whitespace collapsed to single spaces."""
    chars = []
    for ch in text.lower():
        if ch in APOSTROPHES:
            continue
        chars.append(" " if unicodedata.category(ch).startswith("P") else ch)
    return " ".join("".join(chars).split())


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """``(word edit operations, reference words)`` of ``hypothesis`` against ``reference``,
    both normalised with `normalise_text`, counted by ``jiwer``."""
    try:
        import jiwer
    except ImportError:
        raise TaskError(f"word error rates need jiwer, in the speech extra: {EXTRA}") from None
    ref, hyp = normalise_text(reference), normalise_text(hypothesis)
    if not ref:
        raise TaskError(f"the reference {reference!r} has no words once normalised")
    out = jiwer.process_words(ref, hyp)
    return out.substitutions + out.deletions + out.insertions, len(ref.split())


# --- the model as the sweep runs it ---------------------------------------------------------


class SpeechRecognizer(nn.Module):
    """A Whisper model that takes one tensor: each row the log-mel features (M, F) flattened,
    then decoder input ids as floats, padded with -1 (`pack_inputs`). ``forward`` returns the
    Whisper output (``logits`` (n, L, V) at every decoder position); right padding does not
    change the positions before it (the decoder is causal)."""

    def __init__(self, whisper: nn.Module) -> None:
        if getattr(getattr(whisper, "config", None), "model_type", None) != "whisper":
            raise TaskError(
                f"the speech task runs Whisper models (WhisperForConditionalGeneration), not "
                f"{type(whisper).__name__}"
            )
        super().__init__()
        self.whisper = whisper
        self.config = whisper.config

    @property
    def feature_shape(self) -> tuple[int, int]:
        """(mel bins, frames) of one utterance: the encoder's input length is fixed."""
        return int(self.config.num_mel_bins), 2 * int(self.config.max_source_positions)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (n, M·F + L) → features (n, M, F) and decoder ids (n, L), -1 where padded."""
        mels, frames = self.feature_shape
        width = mels * frames
        if x.dim() != 2 or x.shape[1] <= width:
            raise TaskError(
                f"a speech input row holds {mels} x {frames} features and decoder ids; got "
                f"{tuple(x.shape)}"
            )
        return x[:, :width].reshape(-1, mels, frames), x[:, width:].round().long()

    def decoder_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` with the -1 padding replaced by the pad token."""
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        return torch.where(ids < 0, pad, ids)

    def forward(self, x: torch.Tensor) -> Any:
        features, ids = self.split(x)
        return self.whisper(
            input_features=features, decoder_input_ids=self.decoder_ids(ids), use_cache=False
        )


def pack_inputs(features: torch.Tensor, ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """Rows of `SpeechRecognizer`'s input: features (n, M, F) and each row's decoder ids."""
    length = max(len(row) for row in ids)
    packed = torch.full((len(ids), length), float(PAD))
    for i, row in enumerate(ids):
        packed[i, : len(row)] = torch.tensor(row, dtype=torch.float32)
    return torch.cat([features.reshape(len(ids), -1).float(), packed], dim=1)


def pack_outputs(
    logits: torch.Tensor, scored: torch.Tensor, generated: torch.Tensor
) -> torch.Tensor:
    """One tensor (n, T + 1, V + 1) from the scored window's logits (n, T, V), its mask
    (n, T) and the greedy transcripts' ids (n, G), G ≤ V + 1, padded with -1: positions
    ``:T`` hold the logits and, in the last channel, 1.0 where scored; position ``T`` holds the
    transcript ids."""
    n, steps, vocab = logits.shape
    if generated.shape[1] > vocab + 1:
        raise TaskError(f"{generated.shape[1]} generated tokens exceed the packing width {vocab}")
    out = torch.zeros(n, steps + 1, vocab + 1, dtype=logits.dtype)
    out[:, :steps, :vocab] = logits
    out[:, :steps, vocab] = scored.to(logits.dtype)
    out[:, steps, :] = PAD
    out[:, steps, : generated.shape[1]] = generated.to(logits.dtype)
    return out


def unpack_outputs(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """`pack_outputs` inverted: logits (n, T, V), scored (n, T) bool, transcripts' ids."""
    logits, scored = out[:, :-1, :-1], out[:, :-1, -1] > 0.5
    ids = [[int(v) for v in row if v >= 0] for row in out[:, -1].round().long()]
    return logits, scored, ids


# --- the task -------------------------------------------------------------------------------


class SpeechTask(Task):
    """Evaluation rows are `SpeechRecognizer` inputs; targets the utterance's index into
    ``references`` (its transcript), None without data."""

    name = "speech"
    output = "logits"
    eval_batch = 8

    def __init__(self, max_new_tokens: int | None = None) -> None:
        # None: the model's own `transcript_limit`; a number caps it further
        self.max_new_tokens = max_new_tokens
        self.references: list[str] = []
        self.processor: Any = None
        self.prompt: list[int] = []
        # The float model's greedy transcripts of the evaluation rows, decoded once by
        # `load_data`: the float reference (recomputed for every row when its logits are too
        # large to keep) then needs only the teacher-forced pass. Keyed by the row's bytes.
        self._float_whisper: nn.Module | None = None
        self._float_transcripts: dict[bytes, list[int]] = {}

    def describe(self) -> str:
        return (
            "word error rate of greedy transcripts against the reference transcripts "
            "(lowercase, punctuation removed), and, teacher-forced on the float model's "
            "transcript, the KL divergence of the decoder's next-token distribution to float "
            "(mean and 99th percentile) and how often both pick the same top token"
        )

    # --- data ------------------------------------------------------------------------------
    def load_data(self, model: nn.Module, model_dir: Path | None, data: Path | None) -> TaskData:
        recognizer = _recognizer(model)
        self.processor = load_processor(model_dir)
        extractor, tokenizer = self.processor.feature_extractor, self.processor.tokenizer
        rate = int(extractor.sampling_rate)
        window = float(extractor.n_samples) / rate
        self.prompt = prompt_ids(recognizer, tokenizer)
        limit = transcript_limit(int(recognizer.config.max_target_positions), len(self.prompt))
        # the vocabulary bounds it too: transcripts are packed into a row of logits' width
        self.max_new_tokens = min(self.max_new_tokens or limit, limit, len(tokenizer))
        train: list[Utterance] = []
        train_dir: Path | None = None
        if data is None:
            utterances = _noise(rate, min(window, 5.0))
            what = f"no data: fidelity to float on {NOISE_UTTERANCES} clips of seeded noise"
        else:
            evaluated, train_dir = data_folders(data)
            utterances = load_utterances(evaluated, rate, window, normalise=normalise_text)
            what = f"{len(utterances)} utterances of {evaluated.name}"
            if train_dir is not None:
                train = load_utterances(train_dir, rate, window, normalise=normalise_text)
                check_disjoint(utterances, train, evaluated, train_dir)
        if len(utterances) < MIN_UTTERANCES:
            raise TaskError(
                f"{data} has {len(utterances)} utterances; give at least {MIN_UTTERANCES}"
            )
        if train:
            n_cal = min(CALIBRATION_UTTERANCES, len(train))
            cal, held_out = train[:n_cal], utterances
            uses = (
                f"{len(held_out)} evaluated; calibration on the first {n_cal} and QAT on all "
                f"{len(train)} utterances of {TRAIN_FOLDER}/ (no sentence in both)"
            )
        else:
            n_cal = min(CALIBRATION_UTTERANCES, len(utterances) // 4)
            cal, held_out = utterances[:n_cal], utterances[n_cal:]
            uses = f"{len(held_out)} evaluated after {n_cal} for calibration"
            if data is not None:
                uses += " (no train/ folder: QAT trains on these calibration utterances)"
        features = self.features([u.audio for u in held_out])

        # calibration rows: the prompt and the reference transcript (QAT's targets)
        x_cal, y_cal = self._reference_rows(cal, tokenizer, labelled=data is not None)
        train_split = self._reference_rows(train, tokenizer, labelled=True) if train else None

        # evaluation rows: the prompt and the float model's own greedy transcript
        float_ids = []
        with torch.inference_mode():
            for i in range(0, len(held_out), self.eval_batch):
                float_ids += self.transcribe(recognizer, features[i : i + self.eval_batch])
        eos = tokenizer.eos_token_id
        x_eval = pack_inputs(
            features, [self.prompt + [t for t in ids if t != eos] for ids in float_ids]
        )
        self._float_whisper = recognizer.whisper
        self._float_transcripts = {
            _row_key(x): ids for x, ids in zip(x_eval, float_ids, strict=True)
        }
        self.references = [u.text for u in held_out] if data is not None else []
        y_eval = torch.arange(len(held_out)) if data is not None else None
        return TaskData(
            eval_split=(x_eval, y_eval),
            calibration_split=(x_cal, y_cal),
            train_split=train_split,
            metric="wer" if data is not None else None,
            description=(
                f"{what}: {uses}, "
                f"{sum(u.audio.size for u in held_out) / rate:.1f} s of audio at {rate} Hz "
                f"through {type(extractor).__name__}; greedy decoding of at most "
                f"{self.max_new_tokens} tokens after the prompt "
                f"{tokenizer.convert_ids_to_tokens(self.prompt)}"
            ),
            tokenizer=tokenizer_summary(tokenizer),
            # calibration audio first, as a folder without train/ is read: the same 10 s
            workload_inputs={"audio": torch.from_numpy(_workload_audio(cal + held_out, rate))},
        )

    def _reference_rows(
        self, utterances: Sequence[Utterance], tokenizer: Any, *, labelled: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`SpeechRecognizer` rows of ``utterances`` decoding the prompt and the reference
        transcript, and (``labelled``) their next-token targets: calibration and QAT rows."""
        texts = [u.text if labelled else "" for u in utterances]
        ids = [self.prompt + self._encode(tokenizer, text) for text in texts]
        x = pack_inputs(self.features([u.audio for u in utterances]), ids)
        if not labelled:
            return x, None
        return x, next_token_targets(ids, len(self.prompt), tokenizer.eos_token_id)

    def _encode(self, tokenizer: Any, text: str) -> list[int]:
        ids = tokenizer(f" {text}" if text else "", add_special_tokens=False)["input_ids"]
        return ids[: self.max_new_tokens - 1]

    def features(self, audio: Sequence[np.ndarray]) -> torch.Tensor:
        """Log-mel features (n, M, F) of ``audio`` as the deployed runtimes compute them
        (`log_mel`)."""
        return log_mel(self.processor.feature_extractor, audio)

    # --- decoding --------------------------------------------------------------------------
    def transcribe(
        self, model: nn.Module, features: torch.Tensor, encoded: Any = None
    ) -> list[list[int]]:
        """Greedy transcripts of ``features`` (n, M, F): each one's ids after the prompt, up
        to and including the end of text. ``encoded``: the encoder's output on ``features``,
        if already computed (then the encoder does not run again)."""
        whisper = _recognizer(model).whisper
        config = generation_config(whisper, self.prompt, self.max_new_tokens)
        inputs = {"input_features": features} if encoded is None else {"encoder_outputs": encoded}
        with _quiet():
            sequences = whisper.generate(**inputs, generation_config=config)
        if isinstance(sequences, dict) or hasattr(sequences, "sequences"):
            sequences = sequences["sequences"]
        eos = config.eos_token_id
        eos = eos[0] if isinstance(eos, list) else eos
        out = []
        for row in sequences.tolist():
            if row[: len(self.prompt)] == self.prompt:
                row = row[len(self.prompt) :]
            ids = []
            for token in row:
                ids.append(token)
                if token == eos:
                    break
            out.append(ids[: self.max_new_tokens])
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self.processor.tokenizer.decode(list(ids), skip_special_tokens=True)

    # --- evaluation ------------------------------------------------------------------------
    def outputs(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """`pack_outputs` of ``model`` on rows of `SpeechRecognizer` inputs: its logits
        teacher-forced on the rows' decoder ids, scored from the prompt's last position to the
        last id (each predicts the next transcript token, the last one the end of text), and its
        own greedy transcripts."""
        recognizer = _recognizer(model)
        features, ids = recognizer.split(inputs)
        # the encoder (most of the work for 30 s of audio) runs once for both decoder passes
        encoded = recognizer.whisper.get_encoder()(input_features=features)
        out = recognizer.whisper(
            encoder_outputs=encoded, decoder_input_ids=recognizer.decoder_ids(ids), use_cache=False
        )
        logits = named_output(out, self.output)  # (n, L, V)
        start = len(self.prompt) - 1
        lengths = (ids >= 0).sum(dim=1)  # (n,) prompt + transcript
        steps = logits.shape[1] - start
        scored = torch.arange(steps)[None, :] < (lengths - start)[:, None]  # (n, T)
        known = []
        if recognizer.whisper is self._float_whisper:
            known = [self._float_transcripts.get(_row_key(row)) for row in inputs]
        if known and all(t is not None for t in known):
            transcripts = [list(t) for t in known if t is not None]
        else:
            transcripts = self.transcribe(recognizer, features, encoded)
        width = max(1, max(len(t) for t in transcripts))
        generated = torch.full((len(transcripts), width), PAD, dtype=torch.long)
        for i, t in enumerate(transcripts):
            generated[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        return pack_outputs(logits[:, start:].float(), scored, generated)

    def stats(self, outputs: torch.Tensor, targets: torch.Tensor | None) -> SampleStats:
        n = outputs.shape[0]
        if targets is None:
            return SampleStats(n_samples=n)
        _, _, transcripts = unpack_outputs(outputs)
        errors, words = torch.empty(n, dtype=torch.float64), torch.empty(n, dtype=torch.float64)
        for i, (ids, index) in enumerate(zip(transcripts, targets.tolist(), strict=True)):
            errors[i], words[i] = word_errors(self.references[index], self.decode(ids))
        return SampleStats(n_samples=n, word_errors=errors, words=words)

    def fidelity(
        self, ref: torch.Tensor, quant: torch.Tensor, targets: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        ref_logits, scored, _ = unpack_outputs(ref)
        q_logits, _, _ = unpack_outputs(quant)
        mask = torch.where(scored, 0, IGNORE)
        return token_fidelity(ref_logits, q_logits, mask, ignore_index=IGNORE)

    # --- latency ---------------------------------------------------------------------------
    def workloads(self, data: TaskData) -> dict[str, Workload]:
        audio = data.workload_inputs["audio"].numpy()
        extractor = self.processor.feature_extractor
        rate = int(extractor.sampling_rate)
        window = int(extractor.n_samples)

        def make(model: nn.Module) -> Callable[[], Any]:
            def run() -> list[list[int]]:
                chunks = [audio[i : i + window] for i in range(0, len(audio), window)]
                with torch.inference_mode():
                    return self.transcribe(model, self.features(chunks))

            run.audio_seconds = len(audio) / rate  # type: ignore[attr-defined]
            return run

        return {"transcribe_10s": make}


# --- helpers --------------------------------------------------------------------------------


def _recognizer(model: nn.Module) -> SpeechRecognizer:
    return model if isinstance(model, SpeechRecognizer) else SpeechRecognizer(model)


def _row_key(row: torch.Tensor) -> bytes:
    return hashlib.blake2b(row.contiguous().numpy().tobytes(), digest_size=16).digest()


TRAIN_FOLDER = "train"
EVAL_FOLDER = "eval"


def data_folders(data: Path) -> tuple[Path, Path | None]:
    """``(evaluated, training folder or None)`` of ``--data``: a folder with a `TRAIN_FOLDER`
    subfolder trains on it and evaluates its `EVAL_FOLDER` subfolder if it has one, else its
    own transcript CSV; a CSV, a ``.zip`` or a folder without ``train/`` has no training
    folder."""
    train = data / TRAIN_FOLDER
    if not data.is_dir() or not train.is_dir():
        return data, None
    evaluated = data / EVAL_FOLDER
    return (evaluated if evaluated.is_dir() else data), train


def check_disjoint(
    evaluated: Sequence[Utterance], train: Sequence[Utterance], eval_dir: Path, train_dir: Path
) -> None:
    """Refuse training utterances that say an evaluated sentence (compared after
    `normalise_text`): QAT on them would be scored on what it learnt by heart."""
    said = {normalise_text(u.text) for u in evaluated}
    shared = [u for u in train if normalise_text(u.text) in said]
    if shared:
        raise TaskError(
            f"{len(shared)} of the {len(train)} training utterances in {train_dir} say a "
            f"sentence that is also evaluated in {eval_dir} (first: {shared[0].path.name}, "
            f"{shared[0].text!r}); remove them from one of the two transcript CSVs"
        )


def next_token_targets(rows: Sequence[Sequence[int]], prompt: int, eos: int) -> torch.Tensor:
    """Targets (n, L) of decoder inputs ``rows`` (prompt, then transcript): position j predicts
    row[j + 1] from the prompt's last position on, the row's last position the end of text;
    -100 elsewhere (the prompt, the padding)."""
    targets = torch.full((len(rows), max(len(r) for r in rows)), IGNORE, dtype=torch.long)
    for i, row in enumerate(rows):
        targets[i, prompt - 1 : len(row) - 1] = torch.tensor(row[prompt:], dtype=torch.long)
        targets[i, len(row) - 1] = eos
    return targets


def load_processor(model_dir: Path | None) -> Any:
    """The directory's ``WhisperProcessor`` (feature extractor and tokenizer), local files
    only, no custom code."""
    if model_dir is None or not any((model_dir / f).is_file() for f in PROCESSOR_FILES):
        raise TaskError(
            f"{model_dir or 'the model'} has no feature extractor (preprocessor_config.json or "
            "processor_config.json); "
            "save the WhisperProcessor beside the model (processor.save_pretrained(dir))"
        )
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(
            str(model_dir), local_files_only=True, trust_remote_code=False
        )
    except Exception as exc:  # transformers raises many kinds; the user needs the message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TaskError(f"{model_dir}: cannot load its processor: {first}") from None
    if not hasattr(processor, "feature_extractor") or not hasattr(processor, "tokenizer"):
        raise TaskError(
            f"{model_dir}: its processor ({type(processor).__name__}) lacks a feature extractor "
            "or a tokenizer; save a WhisperProcessor beside the model"
        )
    return processor


def prompt_ids(model: SpeechRecognizer, tokenizer: Any) -> list[int]:
    """The decoder prompt of the module docstring, as token ids."""
    whisper = model.whisper
    config = whisper.config
    vocab = tokenizer.get_vocab()
    start = vocab.get("<|startoftranscript|>", config.decoder_start_token_id)
    if start is None:
        raise TaskError("the model has no decoder start token (<|startoftranscript|>)")
    prompt = [int(start)]
    multilingual = getattr(getattr(whisper, "generation_config", None), "is_multilingual", None)
    if multilingual is None:
        multilingual = int(config.vocab_size) != ENGLISH_ONLY_VOCAB
    if multilingual and all(t in vocab for t in PROMPT_TOKENS):
        prompt += [int(vocab[t]) for t in PROMPT_TOKENS]
    if NO_TIMESTAMPS in vocab:
        prompt.append(int(vocab[NO_TIMESTAMPS]))
    return prompt


def generation_config(whisper: nn.Module, prompt: Sequence[int], max_new_tokens: int) -> Any:
    """The model's generation config (its suppressed tokens kept) made greedy, bounded, and
    forced to ``prompt`` (so no language is detected and no timestamps predicted)."""
    config = copy.deepcopy(whisper.generation_config)
    config.decoder_start_token_id = prompt[0]
    config.forced_decoder_ids = [[i, t] for i, t in enumerate(prompt[1:], start=1)] or None
    config.language, config.task = None, None
    config.return_timestamps = False
    config.do_sample, config.num_beams = False, 1
    config.max_new_tokens, config.max_length = max_new_tokens, None
    for name in ("temperature", "top_p", "top_k"):
        if hasattr(config, name):
            setattr(config, name, None)
    if getattr(config, "eos_token_id", None) is None:
        config.eos_token_id = whisper.config.eos_token_id
    return config


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """``generate`` warns about deprecated-but-needed settings (``forced_decoder_ids``) and
    mask inference on every call; stdout carries JSON and stderr a progress bar."""
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


def _noise(rate: int, seconds: float) -> list[Utterance]:
    gen = np.random.default_rng(0)
    return [
        Utterance(
            Path(f"noise-{i}"),
            "",
            0.1 * gen.standard_normal(int(rate * seconds)).astype(np.float32),
        )
        for i in range(NOISE_UTTERANCES)
    ]


def _workload_audio(utterances: Sequence[Utterance], rate: int) -> np.ndarray:
    """`WORKLOAD_SECONDS` of audio: the utterances one after another, repeated as needed."""
    audio = np.concatenate([u.audio for u in utterances])
    samples = int(WORKLOAD_SECONDS * rate)
    return np.tile(audio, math.ceil(samples / audio.size))[:samples].astype(np.float32)
