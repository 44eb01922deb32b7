"""whisper-tiny-en: the conversion check, and float vs W8 vs W8A8 next to faster-whisper.

On the synthetic evaluation audio (`explorer.models.whisper_audio`: 200 espeak-ng utterances,
8 voices, 3 speeds, 3 pitches, pink noise at none/30/20/15 dB SNR):

1. Conversion check. Our converted Hugging Face model (float32, ``generate`` greedy, no
   timestamps) against the original CTranslate2 files: (a) ``ctranslate2.models.Whisper`` float32
   greedy on *the same* log-mel features (the mapping alone: tokens should agree), and (b)
   faster-whisper float32 end to end (its own feature extraction, greedy, no timestamps, no VAD,
   no fallback), and (c) our model on faster-whisper's log-mels. The acceptance is
   |WER(ours) - WER(faster-whisper)| <= 0.5 points, checked on the same features (c): the two
   feature extractors pad the 30 s window differently, which alone moves a few words.
2. Quantization. W8 weight-only (per channel, symmetric, RTN) and W8A8 (dynamic per-token int8
   activations) of every ``nn.Linear`` (the two input convolutions stay float), through
   `explorer.nn.quantize_model` and its real int8 kernels; WER with a paired-bootstrap 95 %
   interval of the difference from float over utterances, and the linear layers' bytes as stored.
3. Latency. Transcribing the 10 s clip end to end (feature extraction, encoder, greedy decoding):
   median of ``--repeats`` runs after one warm-up, under the machine-wide timing lock, as time and
   real-time factor (seconds / 10). faster-whisper float32 and int8 run the same clip with the
   same number of threads.

WER: the speech task's count (`explorer.tasks.speech.word_errors`: ``jiwer`` on text normalised
by `normalise_text`: lower case, apostrophes removed, other punctuation a space, whitespace
collapsed), pooled over utterances (total errors / total reference words), in percent.

Prints a table, then one JSON document (the last line on stdout).

Usage: python benchmarks/whisper_tiny.py [--limit 200] [--threads 2] [--repeats 5] [--batch 8]
       [--out FILE]
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
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explorer.measure.latency import time_callable, timing_lock  # noqa: E402
from explorer.measure.size import size_bytes  # noqa: E402
from explorer.nn.convert import quantize_model  # noqa: E402
from explorer.nn.modules import QuantModule  # noqa: E402
from explorer.quant.config import Plan, QuantConfig  # noqa: E402
from explorer.tasks.speech import word_errors as utterance_errors  # noqa: E402

MAX_NEW_TOKENS = 128
FORMATS: dict[str, QuantConfig | None] = {
    "float": None,
    "W8": QuantConfig(weight_bits=8, granularity="channel"),
    "W8A8": QuantConfig(weight_bits=8, granularity="channel", act_bits=8, act_mode="dynamic"),
}


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
    model: nn.Module, processor: Any, audio: list[np.ndarray], batch: int
) -> list[str]:
    texts: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(audio), batch):
            chunk = audio[start : start + batch]
            features = processor(chunk, sampling_rate=16_000, return_tensors="pt").input_features
            ids = model.generate(features, max_new_tokens=MAX_NEW_TOKENS)
            texts += processor.batch_decode(ids, skip_special_tokens=True)
    return [t.strip() for t in texts]


def ct2_transcribe(
    ct2_model: Any, processor: Any, audio: list[np.ndarray], batch: int
) -> list[str]:
    """CTranslate2 greedy on our feature extractor's log-mels: the mapping check alone."""
    import ctranslate2

    tok = processor.tokenizer
    prompt = tok.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])
    texts: list[str] = []
    for start in range(0, len(audio), batch):
        chunk = audio[start : start + batch]
        features = processor(chunk, sampling_rate=16_000, return_tensors="np").input_features
        out = ct2_model.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features)),
            [prompt] * len(chunk),
            beam_size=1,
            max_length=MAX_NEW_TOKENS + len(prompt),
        )
        texts += [tok.decode(r.sequences_ids[0], skip_special_tokens=True).strip() for r in out]
    return texts


def fw_transcribe(fw_model: Any, audio: np.ndarray) -> str:
    segments, _ = fw_model.transcribe(
        audio,
        language="en",
        beam_size=1,
        best_of=1,
        temperature=0.0,
        without_timestamps=True,
        condition_on_previous_text=False,
        vad_filter=False,
    )
    return " ".join(s.text.strip() for s in segments)


def hf_on_fw_features(model: nn.Module, processor: Any, fw_model: Any, audio: list) -> list[str]:
    """Our model on faster-whisper's own log-mels: the mel of the speech alone, then padded
    with zeros to 3,000 frames (transformers instead takes the mel of the audio padded with
    silence to 30 s, which gives other values in the padded frames)."""
    from faster_whisper.audio import pad_or_trim

    texts = []
    with torch.inference_mode():
        for clip in audio:
            mel = fw_model.feature_extractor(clip)  # (80, frames + 1)
            window = torch.from_numpy(np.ascontiguousarray(pad_or_trim(mel[:, :-1])[None]))
            ids = model.generate(window.float(), max_new_tokens=MAX_NEW_TOKENS)
            texts.append(processor.batch_decode(ids, skip_special_tokens=True)[0].strip())
    return texts


def linear_bytes(model: nn.Module) -> int:
    """Bytes as stored of the linear layers, float or quantized (the output projection, tied to
    the token embedding in float, counted as a layer of its own)."""
    layers = (m for m in model.modules() if isinstance(m, nn.Linear | QuantModule))
    return sum(size_bytes(m) for m in layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200, help="evaluation utterances")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--systems",
        default="float,faster-whisper float32,W8,faster-whisper int8,W8A8",
        help="which systems to run, in this order (comma-separated; float first)",
    )
    parser.add_argument("--no-ct2", action="store_true", help="skip CTranslate2 on our features")
    parser.add_argument("--latency-only", action="store_true", help="skip word error rates")
    parser.add_argument("--out", help="also write the JSON document here, after each step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threads = args.threads

    import ctranslate2
    import faster_whisper
    from faster_whisper import WhisperModel
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from explorer.models.whisper_audio import speech_audio
    from explorer.models.whisper_convert import bundled_ct2_dir, converted_whisper

    t0 = time.perf_counter()
    hf_dir = converted_whisper()
    convert_s = time.perf_counter() - t0
    audio_dir = speech_audio()
    audio, refs = read_folder(audio_dir / "eval", args.limit)
    clip, _ = read_folder(audio_dir / "long10s", None)
    seconds = clip[0].size / 16_000
    print(f"{len(audio)} utterances, {sum(a.size for a in audio) / 16_000:.0f} s", file=sys.stderr)

    model = WhisperForConditionalGeneration.from_pretrained(hf_dir, local_files_only=True).eval()
    processor = WhisperProcessor.from_pretrained(hf_dir, local_files_only=True)
    ct2_dir = str(bundled_ct2_dir())
    result: dict[str, Any] = {
        "threads": args.threads,
        "utterances": len(audio),
        "clip_seconds": seconds,
        "convert_s": convert_s,
        "versions": {
            "torch": torch.__version__,
            "ctranslate2": ctranslate2.__version__,
            "faster_whisper": faster_whisper.__version__,
        },
        "rows": [],
    }
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    texts: dict[str, list[str]] = {}
    rows: dict[str, dict[str, Any]] = {}

    def save() -> None:
        result["rows"] = list(rows.values())
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1))

    # Each system: (transcribe a list of clips) and its extra fields. Accuracy of every system
    # first, then every latency, so that a run cut short still has its word error rates.
    systems: dict[str, Any] = {}
    for name, config in FORMATS.items():
        qmodel = model if config is None else quantize_model(model, Plan.uniform(config))
        systems[name] = (
            lambda clips, m=qmodel: hf_transcribe(m, processor, clips, args.batch),
            {"linear_bytes": linear_bytes(qmodel), "model_bytes": size_bytes(qmodel)},
            qmodel,
        )
    for compute_type in ("float32", "int8"):
        fw = WhisperModel(ct2_dir, device="cpu", compute_type=compute_type, cpu_threads=threads)
        systems[f"faster-whisper {compute_type}"] = (
            lambda clips, fw=fw: [fw_transcribe(fw, a) for a in clips],
            {"compute_type": compute_type},
            fw,
        )
    order = [name.strip() for name in args.systems.split(",")]
    unknown = [name for name in order if name not in systems]
    if unknown or order[0] != "float":
        raise SystemExit(f"--systems: float first, then any of {', '.join(systems)}")
    for name in [] if args.latency_only else order:
        transcribe, extra, _ = systems[name]
        t = time.perf_counter()
        hyps = transcribe(audio)
        scores[name], texts[name] = word_errors(refs, hyps), hyps
        rows[name] = {"name": name, "wer": 100 * wer(*scores[name]), **extra}
        rows[name]["eval_s"] = time.perf_counter() - t
        if name != "float" and "float" in scores:
            rows[name]["wer_delta_ci"] = paired_interval(scores[name], scores["float"])
        print(f"{name:22} WER {rows[name]['wer']:6.2f} %", file=sys.stderr, flush=True)
        save()
        if name == "float" and not args.no_ct2:
            ct2_model = ctranslate2.models.Whisper(
                ct2_dir, device="cpu", compute_type="float32", intra_threads=threads
            )
            ct2_hyps = ct2_transcribe(ct2_model, processor, audio, args.batch)
            same = sum(a == b for a, b in zip(ct2_hyps, hyps, strict=True))
            result["ct2_same_features"] = {
                "wer": 100 * wer(*word_errors(refs, ct2_hyps)),
                "identical_transcripts": same,
            }
            print(f"ctranslate2 on our features: {result['ct2_same_features']}", file=sys.stderr)
            del ct2_model
            fw_float = systems["faster-whisper float32"][2]
            on_fw = hf_on_fw_features(model, processor, fw_float, audio)
            result["float_on_faster_whisper_features"] = {
                "wer": 100 * wer(*word_errors(refs, on_fw))
            }
            print(
                f"ours on faster-whisper's features: {result['float_on_faster_whisper_features']}",
                file=sys.stderr,
            )
    for name in order:
        transcribe = systems[name][0]
        with timing_lock():
            latency = time_callable(lambda t=transcribe: t(clip), 1, args.repeats)
        rows.setdefault(name, {"name": name, **systems[name][1]})
        rows[name] |= {
            "latency_ms": latency.median_ms,
            "latency_p10_ms": latency.p10_ms,
            "latency_p90_ms": latency.p90_ms,
            "rtf": latency.median_ms / 1e3 / seconds,
        }
        print(f"{name:22} RTF {rows[name]['rtf']:.3f}", file=sys.stderr, flush=True)
        save()

    if args.latency_only:
        print(json.dumps(result))
        return
    float_wer, fw_wer = rows["float"]["wer"], rows["faster-whisper float32"]["wer"]
    same_features = result.get("float_on_faster_whisper_features", {}).get("wer")
    result["conversion_check"] = {
        "ours_float_wer": float_wer,
        "faster_whisper_float32_wer": fw_wer,
        "difference_points": float_wer - fw_wer,
        "ours_on_faster_whisper_features_wer": same_features,
        "passes": same_features is not None and abs(same_features - fw_wer) <= 0.5,
    }
    result["examples"] = [
        {"ref": refs[i], **{k: v[i] for k, v in texts.items()}} for i in range(min(3, len(refs)))
    ]

    print(f"{'':18} {'WER %':>7} {'delta 95% CI':>16} {'RTF 10 s':>9} {'linear MB':>10}")
    for r in result["rows"]:
        ci = r.get("wer_delta_ci")
        shown = "" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"
        mb = f"{r['linear_bytes'] / 1e6:.1f}" if "linear_bytes" in r else ""
        print(f"{r['name']:18} {r['wer']:7.2f} {shown:>16} {r['rtf']:9.3f} {mb:>10}")
    check = result["conversion_check"]
    print(
        f"conversion check: ours {check['ours_float_wer']:.2f} (on faster-whisper's features "
        f"{check['ours_on_faster_whisper_features_wer']}) vs faster-whisper "
        f"{check['faster_whisper_float32_wer']:.2f} ({'pass' if check['passes'] else 'FAIL'})"
    )
    if "ct2_same_features" in result:
        same = result["ct2_same_features"]["identical_transcripts"]
        print(f"CTranslate2 on our features: {same}/{len(audio)} identical transcripts")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
