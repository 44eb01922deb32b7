"""A causal LM at 0.5 B scale on this machine: load time, one RTN row, progress, peak memory.

Builds a randomly initialised Qwen2-shaped causal LM (by default 24 layers, hidden 896, 14 heads
with 2 key/value heads, MLP 4864, tied embeddings, vocabulary 151,936: about 494 M parameters)
in a temporary directory, stored in bf16 with ``save_pretrained``, with a small byte-level BPE
tokenizer trained there with ``tokenizers`` on generated text (the model's vocabulary is wider
than the tokenizer's: ids the tokenizer never produces are simply never seen). Then, as the
sweep does it:

1. ``open_context``: the safe Hugging Face loader, the task's data (tokenised, windowed);
2. ``evaluate_entry`` for one RTN configuration (``--config w8``: W8 per channel, or ``w4g128``)
   on ``--eval-tokens`` tokens (16,384, the task's budget, by default), with a tqdm bar and its
   estimate of the time left on stderr, one step per window. The float reference of such a
   vocabulary is streamed (`explorer.sweep.context.FloatReference`): its first window runs
   alone as a check, then every window runs float and quantized side by side.

A thread samples the resident memory every 20 ms and keeps each phase's peak (phases are
marked by wrapping the runner's functions: instrumentation only, the work is the sweep's).
Prints a table (load, quantize, kernel choice, evaluate, latency, per-layer seconds, peak RSS
per phase, float and quantized model bytes, the load average) and, last, one JSON line.

Usage: python benchmarks/hf_scale.py [--layers 24] [--vocab 151936] [--eval-tokens 16384]
       [--config w8|w4g128] [--repeats 5] [--no-per-layer] [--arch qwen2|llama]
       (a 4-layer 256-wide Llama: --arch llama --layers 4 --hidden 256 --intermediate 688
       --heads 4 --kv-heads 2 --vocab 4096 --tokenizer-vocab 4096)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

WORDS = 4000  # a generated lexicon: enough distinct words for a few thousand BPE merges


def _text(n_words: int, seed: int) -> str:
    """Sentences of made-up words with a Zipf-like frequency, so BPE finds structure."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    lexicon = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(WORDS)]
    weights = [1.0 / (i + 1) for i in range(WORDS)]
    words = rng.choices(lexicon, weights, k=n_words)
    out, line = [], []
    for w in words:
        line.append(w)
        if len(line) >= rng.randint(6, 18):
            out.append(" ".join(line).capitalize() + ".")
            line = []
    return "\n".join(out) + "\n"


def build(directory: Path, args: argparse.Namespace) -> dict[str, float]:
    """The model and tokenizer in ``directory``, the evaluation text beside them."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    t0 = time.perf_counter()
    text = _text(args.words, seed=0)
    (directory / "text.txt").write_text(text)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=args.tokenizer_vocab,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(text.splitlines(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.save_pretrained(directory)
    t1 = time.perf_counter()

    config_class, model_class = (
        (LlamaConfig, LlamaForCausalLM) if args.arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    )
    config = config_class(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
        eos_token_id=fast.eos_token_id,
    )
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = model_class(config).to(torch.bfloat16).eval()
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(directory, safe_serialization=True)
    del model
    return {"tokenizer_s": t1 - t0, "build_s": time.perf_counter() - t1, "params": params}


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PhasePeaks:
    """Peak resident memory per phase, sampled every ``interval`` seconds by a daemon thread."""

    def __init__(self, interval: float = 0.02) -> None:
        self.phase = "start"
        self.peaks: dict[str, int] = {}
        self.interval = interval
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            rss, phase = _rss_bytes(), self.phase
            self.peaks[phase] = max(self.peaks.get(phase, 0), rss)
            time.sleep(self.interval)

    def wrap(self, owner: Any, name: str, phase: str) -> None:
        """Mark calls of ``owner.name`` as ``phase`` (the outer phase resumes after)."""
        inner: Callable[..., Any] = getattr(owner, name)

        def marked(*args: Any, **kwargs: Any) -> Any:
            outer, self.phase = self.phase, phase
            t0, cpu0 = time.perf_counter(), time.process_time()
            try:
                return inner(*args, **kwargs)
            finally:
                self.peaks[phase] = max(self.peaks.get(phase, 0), _rss_bytes())
                self.phase = outer
                seconds, peak = time.perf_counter() - t0, self.peaks[phase] / 2**30
                cpu = time.process_time() - cpu0  # all threads: on a shared machine, the work
                # as it happens, so that a run stopped early still tells its phases
                print(
                    f"{name}: {seconds:.1f} s wall, {cpu:.1f} s CPU ({phase}; peak {peak:.2f} GiB)",
                    file=sys.stderr,
                )

        setattr(owner, name, marked)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("qwen2", "llama"), default="qwen2")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--intermediate", type=int, default=4864)
    parser.add_argument("--heads", type=int, default=14)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--tokenizer-vocab", type=int, default=8192)
    parser.add_argument("--words", type=int, default=40_000, help="generated text, in words")
    parser.add_argument("--eval-tokens", type=int, default=16_384)
    parser.add_argument("--config", choices=("w8", "w4g128"), default="w8")
    parser.add_argument("--repeats", type=int, default=5, help="latency repeats per workload")
    parser.add_argument("--no-per-layer", action="store_true")
    args = parser.parse_args()

    import torch
    from tqdm import tqdm

    import explorer.sweep.runner as runner
    import explorer.tasks.causal_lm as causal_lm
    from explorer.sweep.context import FloatReference, ModelSource, open_context
    from explorer.sweep.runner import RunSettings, evaluate_entry, peak_rss_bytes
    from explorer.sweep.space import SweepSpec, expand

    causal_lm.EVAL_TOKENS = args.eval_tokens  # the budget this run scores
    peaks = PhasePeaks()
    for owner, name, phase in (
        (runner, "build_quantized", "quantize"),
        (runner, "select_kernels", "kernel choice and latency"),
        (runner, "measure_callable", "kernel choice and latency"),
        (runner, "per_layer", "per-layer"),
        (FloatReference, "compute", "float check"),
        (FloatReference, "evaluate", "evaluate"),
    ):
        peaks.wrap(owner, name, phase)
    load_avg = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="hf_scale_") as tmp:
        directory = Path(tmp)
        peaks.phase = "build"
        built = build(directory, args)
        rss_after_build = peak_rss_bytes()

        peaks.phase = "load"
        t0 = time.perf_counter()
        ctx = open_context(ModelSource(model=str(directory), data=str(directory / "text.txt")))
        load_s = time.perf_counter() - t0
        print(
            f"loaded in {load_s:.1f} s, peak RSS {peak_rss_bytes() / 2**30:.2f} GiB",
            file=sys.stderr,
        )

        bits, granularity = (8, "channel") if args.config == "w8" else (4, "group128")
        entries, _ = expand(SweepSpec(weight_bits=(bits,), granularity=(granularity,)))
        entry = next(e for e in entries if e.kind == "uniform")
        settings = RunSettings(
            n_boot=1000,
            warmup=1,
            repeats=args.repeats,
            per_layer=not args.no_per_layer,
            calibration_samples=32,
        )
        bars: dict[str, tqdm] = {}
        phase = [f"{entry.label} evaluate (float + quantized per window)"]

        def progress(done: int, total: int) -> None:
            bar = bars.get(phase[0])
            if bar is None:
                bar = bars[phase[0]] = tqdm(
                    total=total, desc=phase[0], unit="batch", file=sys.stderr, leave=True
                )
            bar.set_postfix(rss=f"{_rss_bytes() / 2**30:.2f}G", refresh=False)
            bar.update(done - bar.n)
            if done == total:
                bar.close()

        t0 = time.perf_counter()
        ctx.compute_reference(progress)
        reference_s = time.perf_counter() - t0
        peaks.phase = "row (other)"
        t0 = time.perf_counter()
        row = evaluate_entry(ctx, entry, settings, progress=progress)
        row_s = time.perf_counter() - t0
        peaks.phase = "end"

    seconds = row["seconds"]
    result = {
        "model": f"{'Llama' if args.arch == 'llama' else 'Qwen2'}ForCausalLM (random init, bf16)",
        "params": built["params"],
        "layers": args.layers,
        "hidden": args.hidden,
        "vocab": args.vocab,
        "config": entry.label,
        "tokens_evaluated": row["tokens_evaluated"],
        "threads": torch.get_num_threads(),
        "load_average_at_start": [round(x, 2) for x in load_avg],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "build_s": round(built["build_s"], 1),
        "load_s": round(load_s, 1),
        "float_reference_s": round(reference_s, 1),
        "row_s": round(row_s, 1),
        "process_cpu_s": round(time.process_time(), 1),  # every thread, build included
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "peak_rss_bytes": row["peak_rss_bytes"],
        "peak_rss_after_build_bytes": rss_after_build,
        "peak_rss_by_phase_bytes": dict(peaks.peaks),
        "streamed_reference": ctx.reference.streamed,
        "model_bytes": row["model_bytes"],
        "size_bytes": row["size_bytes"],
        "perplexity": row["metrics"].get("perplexity"),
        "perplexity_ci": row["metrics_ci"].get("perplexity"),
        "latency_ms": {k: v["median_ms"] for k, v in row["latency"].items()},
    }
    gib = 2**30
    lines = [
        ("parameters", f"{built['params'] / 1e6:.0f} M"),
        ("tokens evaluated", f"{row['tokens_evaluated']:,}"),
        ("build (not timed as load)", f"{built['build_s']:.1f} s"),
        ("load (open_context)", f"{load_s:.1f} s"),
        ("float check / reference", f"{reference_s:.1f} s"),
        *((f"row: {k}", f"{v:.1f} s") for k, v in seconds.items()),
        ("row total", f"{row_s:.1f} s"),
        ("peak RSS (whole process)", f"{row['peak_rss_bytes'] / gib:.2f} GiB"),
        *((f"peak RSS: {k}", f"{v / gib:.2f} GiB") for k, v in peaks.peaks.items()),
        ("float model", f"{row['model_bytes']['float'] / gib:.2f} GiB"),
        ("quantized model", f"{row['model_bytes']['quantized'] / gib:.2f} GiB"),
        ("load average (start/end)", f"{load_avg[0]:.1f} / {os.getloadavg()[0]:.1f}"),
    ]
    for name, value in lines:
        print(f"{name:<28} {value}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
