"""whisper-tiny-en: the conversion check, and float, 8-bit, 4-bit, mixed and QAT models next to
faster-whisper float32 and int8, in one run with the same threads.

On the synthetic evaluation audio (`explorer.models.whisper_audio`: 200 espeak-ng utterances,
8 voices, 3 speeds, 3 pitches, pink noise at none/30/20/15 dB SNR):

1. Conversion check. Our converted Hugging Face model (float32, ``generate`` greedy, no
   timestamps, fed the speech task's log-mels: `explorer.models.whisper_features.log_mel`, the
   clip's frames zero-padded as the runtimes do) against the original CTranslate2 files:
   faster-whisper float32 end to end (its own feature extraction, greedy, no timestamps, no
   VAD, no fallback): |WER(ours) - WER(faster-whisper)| <= 0.5 points, and how many transcripts
   are identical; and ``ctranslate2.models.Whisper`` float32 greedy on our log-mels (the weight
   mapping alone).
2. Quantization, every plan of `explorer.models.whisper_plans` through
   `explorer.nn.quantize_model` and its real kernels (the two input convolutions stay float):
   W8 weight-only and W8A8 (dynamic per-token int8 activations), W4 g128 and g32 by round to
   nearest, W4 g128 by GPTQ (calibrated on 32 training utterances, teacher-forced on their
   reference transcripts), the mixed plans (encoder 8 / decoder 4, the reverse, W4 g128 with the
   first encoder block and the output projection at 8), and W4 g128 trained by QAT for
   ``--qat-steps`` steps of ``--qat-batch`` utterances of the 120 *training* utterances (disjoint
   from the evaluation ones), teacher-forced next-token cross-entropy, Adam at ``--qat-lr``.
   WER with a paired-bootstrap 95 % interval of the difference from float over utterances,
   and the linear layers' bytes as stored.
3. Latency. Transcribing the 10 s clip end to end (feature extraction, encoder, greedy decoding):
   median of ``--repeats`` runs after one warm-up, under the machine-wide timing lock, as time and
   real-time factor (seconds / 10); ``--clock cpu`` times in the process's CPU time instead,
   which with ``--threads 1`` is what a quiet machine would show. Before timing, each quantized
   layer's kernel is chosen by timing the candidates on the rows it gets in that transcription
   (`select_kernels`, as the sweep does; ``--no-select`` keeps the default kernels); the row
   records how many encoder and decoder layers run each kernel. faster-whisper float32 and int8
   run the same clip with the same number of threads.

Each system is built, timed, then evaluated, and the JSON (``--out``) is written after each one,
so a run cut short keeps the systems it finished.

WER: the speech task's count (`explorer.tasks.speech.word_errors`: ``jiwer`` on text normalised
by `normalise_text`: lower case, apostrophes removed, other punctuation a space, whitespace
collapsed), pooled over utterances (total errors / total reference words), in percent.

Prints a table, then one JSON document (the last line on stdout).

Usage: python benchmarks/whisper_tiny.py [--limit 200] [--threads 2] [--repeats 5] [--batch 8]
       [--systems float,W8,...] [--qat-steps 200] [--no-select] [--clock wall|cpu] [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explorer.measure.latency import time_callable, timing_lock  # noqa: E402
from explorer.measure.size import size_bytes  # noqa: E402
from explorer.models.whisper_features import log_mel  # noqa: E402
from explorer.models.whisper_plans import UNIFORM, W4G128, mixed_plans  # noqa: E402
from explorer.nn.convert import quantize_model, select_kernels  # noqa: E402
from explorer.nn.modules import QuantModule  # noqa: E402
from explorer.quant.config import Plan, QuantConfig  # noqa: E402
from explorer.targets import faster_whisper as faster_whisper_target  # noqa: E402
from explorer.tasks.speech import (  # noqa: E402
    SpeechRecognizer,
    next_token_targets,
    pack_inputs,
    prompt_ids,
    transcript_limit,
)
from explorer.tasks.speech import word_errors as utterance_errors  # noqa: E402

CALIBRATION = 32
"""Training utterances that calibrate GPTQ (the speech task calibrates on as many)."""
ORDER = (
    "float",
    "faster-whisper float32",
    "W8",
    "W8A8",
    "faster-whisper int8",
    "W4 g128",
    "W4 g32",
    "W4 g128 GPTQ",
    "enc8-dec4",
    "enc4-dec8",
    "ends8",
    "W4 g128 QAT",
)
"""Every system, in the order run (accuracy first where a run is cut short)."""


def word_errors(refs: list[str], hyps: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per utterance: edit errors (S + D + I) and reference words (the speech task's count)."""
    counts = [utterance_errors(ref, hyp) for ref, hyp in zip(refs, hyps, strict=True)]
    errors, words = zip(*counts, strict=True)
    return np.array(errors, dtype=np.float64), np.array(words, dtype=np.float64)


def wer(errors: np.ndarray, words: np.ndarray) -> float:
    return float(errors.sum() / words.sum())


def paired_interval(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], n_boot: int = 2000
) -> list[float]:
    """95 % interval of WER(a) - WER(b) (points), resampling utterances jointly."""
    rng = np.random.default_rng(0)
    idx = rng.integers(len(a[0]), size=(n_boot, len(a[0])))
    words = b[1][idx].sum(1)
    delta = (a[0][idx].sum(1) - b[0][idx].sum(1)) / words
    return [float(100 * np.quantile(delta, 0.025)), float(100 * np.quantile(delta, 0.975))]


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as f:
        pcm = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def read_folder(folder: Path, limit: int | None) -> tuple[list[np.ndarray], list[str]]:
    with open(folder / "transcripts.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:limit]
    return [read_wav(folder / r["file"]) for r in rows], [r["text"] for r in rows]


def hf_transcribe(
    model: nn.Module, extractor: Any, audio: list[np.ndarray], batch: int, limit: int
) -> list:
    """Greedy transcripts (token ids) of our model, on the speech task's log-mels, of at most
    ``limit`` tokens (`transcript_limit`: where faster-whisper stops too)."""
    ids: list = []
    with torch.inference_mode():
        for start in range(0, len(audio), batch):
            features = log_mel(extractor, audio[start : start + batch])
            ids += model.generate(features, max_new_tokens=limit).tolist()
    return ids


def ct2_transcribe(
    ct2_model: Any, extractor: Any, tok: Any, audio: list, batch: int, max_length: int
) -> list:
    """CTranslate2 greedy on our log-mels: the weight mapping alone, features held equal.
    ``max_length``: faster-whisper's, the decoder's positions (CTranslate2 then stops where
    `transcript_limit` does)."""
    import ctranslate2

    prompt = tok.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])
    texts: list[str] = []
    for start in range(0, len(audio), batch):
        features = log_mel(extractor, audio[start : start + batch]).numpy()
        out = ct2_model.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features)),
            [prompt] * len(features),
            beam_size=1,
            max_length=max_length,
        )
        texts += [tok.decode(r.sequences_ids[0], skip_special_tokens=True).strip() for r in out]
    return texts


def linear_bytes(model: nn.Module) -> int:
    """Bytes as stored of the linear layers, float or quantized (the output projection, tied to
    the token embedding in float, counted as a layer of its own)."""
    layers = (m for m in model.modules() if isinstance(m, nn.Linear | QuantModule))
    return sum(size_bytes(m) for m in layers)


def kernel_counts(model: nn.Module) -> dict[str, dict[str, int]]:
    """How many quantized layers of the encoder and of the decoder run each kernel."""
    out: dict[str, dict[str, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantModule):
            part = "encoder" if ".encoder." in name else "decoder"
            out.setdefault(part, {}).setdefault(module.kernel_name, 0)
            out[part][module.kernel_name] += 1
    return out


def cpu_times(fn: Any, repeats: int) -> tuple[float, float, float]:
    """Median, 10th and 90th percentile (ms) of ``fn()``'s CPU time (every thread of this
    process: ours and CTranslate2's), after one warm-up call. With one thread this is the wall
    time a quiet machine would show, without the time other jobs take the core away."""
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        samples.append(1e3 * (time.process_time() - t0))
    q = np.quantile(samples, [0.5, 0.1, 0.9])
    return float(q[0]), float(q[1]), float(q[2])


class Speech:
    """The float model, its processor and the prompt, and what quantizing and training need:
    `SpeechRecognizer` rows (log-mels, then decoder ids) of training utterances with their
    next-token targets (teacher forcing on the reference transcripts)."""

    def __init__(self, hf_dir: Path, train: tuple[list[np.ndarray], list[str]]) -> None:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        model = WhisperForConditionalGeneration.from_pretrained(hf_dir, local_files_only=True)
        self.recognizer = SpeechRecognizer(model.float().eval())
        self.processor = WhisperProcessor.from_pretrained(hf_dir, local_files_only=True)
        tok = self.processor.tokenizer
        self.prompt = prompt_ids(self.recognizer, tok)
        self.positions = int(model.config.max_target_positions)
        self.limit = transcript_limit(self.positions, len(self.prompt))
        audio, texts = train
        ids = [
            self.prompt + tok(f" {t}", add_special_tokens=False)["input_ids"][: self.limit - 1]
            for t in texts
        ]
        self.train_x = pack_inputs(log_mel(self.processor.feature_extractor, audio), ids)
        self.train_y = next_token_targets(ids, len(self.prompt), tok.eos_token_id)

    def quantized(self, plan: Plan) -> nn.Module:
        """``plan`` applied to the wrapped model (GPTQ calibrated on `CALIBRATION` utterances);
        the Whisper model inside."""
        configs = [plan.default, *(c for _, c in plan.rules)]
        calibrated = any(c is not None and c.algorithm != "rtn" for c in configs)
        calibration = self.train_x[:CALIBRATION] if calibrated else None
        return quantize_model(self.recognizer, plan, calibration_data=calibration).whisper

    def qat(self, config: QuantConfig, steps: int, lr: float, batch: int) -> nn.Module:
        """``config`` trained for ``steps`` steps of ``batch`` training utterances (seeded),
        from the float weights, then converted as PTQ would be."""
        from explorer.nn.qat import train_qat

        generator = torch.Generator().manual_seed(0)
        torch.manual_seed(0)

        def batches(_step: int) -> tuple[torch.Tensor, torch.Tensor]:
            idx = torch.randint(len(self.train_x), (batch,), generator=generator)
            return self.train_x[idx], self.train_y[idx]

        def loss(out: Any, targets: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(out.logits.flatten(0, 1), targets.flatten())  # -100 ignored

        qat = train_qat(
            self.recognizer,
            Plan.uniform(config.with_(method="qat")),
            batches,
            steps,
            lr=lr,
            loss_fn=loss,
        )
        return qat.eval().whisper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200, help="evaluation utterances")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--systems", default=",".join(ORDER), help="which systems to run, in this order"
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time the 10 s transcription in wall time, or in this process's CPU time (for a "
        "shared machine, with --threads 1)",
    )
    parser.add_argument("--qat-steps", type=int, default=200)
    parser.add_argument("--qat-lr", type=float, default=1e-5)
    parser.add_argument("--qat-batch", type=int, default=1)
    parser.add_argument(
        "--no-select",
        action="store_true",
        help="keep each quantized layer's default kernel instead of timing the candidates on "
        "the 10 s transcription (the benchmark's behaviour before: W8 slower than float)",
    )
    parser.add_argument("--no-ct2", action="store_true", help="skip CTranslate2 on our features")
    parser.add_argument("--out", help="also write the JSON document here, after each step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threads = args.threads

    import ctranslate2
    import faster_whisper

    from explorer.models.whisper_audio import speech_audio
    from explorer.models.whisper_convert import bundled_ct2_dir, converted_whisper

    t0 = time.perf_counter()
    hf_dir = converted_whisper()
    convert_s = time.perf_counter() - t0
    audio_dir = speech_audio()
    audio, refs = read_folder(audio_dir / "eval", args.limit)
    clip, _ = read_folder(audio_dir / "long10s", None)
    clip_s = clip[0].size / 16_000
    print(f"{len(audio)} utterances, {sum(a.size for a in audio) / 16_000:.0f} s", file=sys.stderr)
    speech = Speech(hf_dir, read_folder(audio_dir / "train", None))
    extractor, tok = speech.processor.feature_extractor, speech.processor.tokenizer
    ct2_dir = str(bundled_ct2_dir())
    result: dict[str, Any] = {
        "threads": threads,
        "utterances": len(audio),
        "reference_words": 0,
        "clip_seconds": clip_s,
        "convert_s": convert_s,
        "kernel_selection": not args.no_select,
        "clock": args.clock,
        "max_new_tokens": speech.limit,
        "qat": {"steps": args.qat_steps, "lr": args.qat_lr, "batch": args.qat_batch},
        "versions": {
            "torch": torch.__version__,
            "ctranslate2": ctranslate2.__version__,
            "faster_whisper": faster_whisper.__version__,
        },
        "load_average": [],
        "rows": [],
    }
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    texts: dict[str, list[str]] = {}
    rows: dict[str, dict[str, Any]] = {}

    def save() -> None:
        result["rows"] = list(rows.values())
        result["load_average"].append(Path("/proc/loadavg").read_text().split()[:3])
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1))

    def ours(name: str) -> tuple[Any, dict[str, Any]]:
        """A system of ours: (transcribe clips → texts, extra fields)."""
        t = time.perf_counter()
        mixed = mixed_plans()
        if name == "float":
            model = speech.recognizer.whisper
        elif name in UNIFORM:
            model = speech.quantized(Plan.uniform(UNIFORM[name]))
        elif name == "W4 g128 GPTQ":
            model = speech.quantized(Plan.uniform(W4G128.with_(algorithm="gptq")))
        elif name in mixed:
            model = speech.quantized(mixed[name])
        elif name == "W4 g128 QAT":
            model = speech.qat(W4G128, args.qat_steps, args.qat_lr, args.qat_batch)
        else:
            raise SystemExit(f"--systems: unknown {name!r}; known: {', '.join(ORDER)}")
        build_s = time.perf_counter() - t

        def transcribe(clips: list[np.ndarray]) -> list[str]:
            ids = hf_transcribe(model, extractor, clips, args.batch, speech.limit)
            return [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]

        extra: dict[str, Any] = {"build_s": build_s}
        if name != "float" and not args.no_select:
            select_kernels(model, run=lambda: transcribe(clip))
        extra |= {
            "linear_bytes": linear_bytes(model),
            "model_bytes": size_bytes(model),
            "kernels": kernel_counts(model),
        }
        return transcribe, extra

    def runtime(compute_type: str) -> tuple[Any, dict[str, Any]]:
        fw = faster_whisper_target.load(Path(ct2_dir), compute_type, threads)
        return (lambda clips: [faster_whisper_target.transcribe(fw, a) for a in clips]), {
            "compute_type": compute_type
        }

    order = [name.strip() for name in args.systems.split(",") if name.strip()]
    for name in order:
        if name.startswith("faster-whisper "):
            transcribe, extra = runtime(name.removeprefix("faster-whisper "))
        else:
            transcribe, extra = ours(name)
        rows[name] = {"name": name, **extra}
        with timing_lock():
            if args.clock == "cpu":
                median, p10, p90 = cpu_times(lambda t=transcribe: t(clip), args.repeats)
            else:
                latency = time_callable(lambda t=transcribe: t(clip), 1, args.repeats)
                median, p10, p90 = latency.median_ms, latency.p10_ms, latency.p90_ms
        rows[name] |= {
            "latency_ms": median,
            "latency_p10_ms": p10,
            "latency_p90_ms": p90,
            "rtf": median / 1e3 / clip_s,
        }
        t = time.perf_counter()
        hyps = transcribe(audio)
        scores[name], texts[name] = word_errors(refs, hyps), hyps
        rows[name] |= {
            "wer": 100 * wer(*scores[name]),
            "eval_s": time.perf_counter() - t,
            "errors": scores[name][0].astype(int).tolist(),  # per utterance, to pair runs
            "texts": hyps,
        }
        if name != "float" and "float" in scores:
            rows[name]["wer_delta_ci"] = paired_interval(scores[name], scores["float"])
        print(
            f"{name:22} WER {rows[name]['wer']:6.2f} %  RTF {rows[name]['rtf']:.3f}",
            file=sys.stderr,
            flush=True,
        )
        save()
        if name == "float" and not args.no_ct2:
            ct2_model = ctranslate2.models.Whisper(
                ct2_dir, device="cpu", compute_type="float32", intra_threads=threads
            )
            ct2_hyps = ct2_transcribe(
                ct2_model, extractor, tok, audio, args.batch, speech.positions
            )
            same = sum(a == b for a, b in zip(ct2_hyps, hyps, strict=True))
            result["ct2_same_features"] = {
                "wer": 100 * wer(*word_errors(refs, ct2_hyps)),
                "identical_transcripts": same,
            }
            print(f"ctranslate2 on our features: {result['ct2_same_features']}", file=sys.stderr)
            del ct2_model
        if name == "faster-whisper float32" and "float" in texts:
            same = sum(a == b for a, b in zip(texts["float"], hyps, strict=True))
            float_wer = rows["float"]["wer"]
            result["conversion_check"] = {
                "ours_float_wer": float_wer,
                "faster_whisper_float32_wer": rows[name]["wer"],
                "difference_points": float_wer - rows[name]["wer"],
                "identical_transcripts": same,
                "passes": abs(float_wer - rows[name]["wer"]) <= 0.5,
            }
        save()

    result["reference_words"] = int(next(iter(scores.values()))[1].sum())
    result["examples"] = [
        {"ref": refs[i], **{k: v[i] for k, v in texts.items()}} for i in range(min(3, len(refs)))
    ]
    save()
    print(
        f"{'':22} {'WER %':>7} {'delta 95% CI':>16} {'RTF 10 s':>9} {'linear MB':>10} "
        f"{'model MB':>9}"
    )
    for r in result["rows"]:
        ci = r.get("wer_delta_ci")
        shown = "" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"
        mb = f"{r['linear_bytes'] / 1e6:.1f}" if "linear_bytes" in r else ""
        total = f"{r['model_bytes'] / 1e6:.1f}" if "model_bytes" in r else ""
        print(f"{r['name']:22} {r['wer']:7.2f} {shown:>16} {r['rtf']:9.3f} {mb:>10} {total:>9}")
    check = result.get("conversion_check")
    if check:
        print(
            f"conversion check: ours {check['ours_float_wer']:.2f} vs faster-whisper float32 "
            f"{check['faster_whisper_float32_wer']:.2f} %, {check['identical_transcripts']}/"
            f"{len(audio)} identical transcripts ({'pass' if check['passes'] else 'FAIL'})"
        )
    if "ct2_same_features" in result:
        same = result["ct2_same_features"]["identical_transcripts"]
        print(f"CTranslate2 on our features: {same}/{len(audio)} identical transcripts")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
