"""tiny-lm's ``CARD.md``: the card's numbers written as prose and tables."""

from __future__ import annotations

import json
from typing import Any

from explorer.models.registry import ASSETS
from explorer.models.tinylm.model import DECODE_GOAL, INT4_PLANS, NAME


def card_markdown(card: dict[str, Any]) -> str:
    """``CARD.md``: what the model is, its data and licence, and the numbers of ``card``."""
    arch, tr = card["architecture"], card["training"]
    bpb = card["bits_per_byte"]
    corpus_path = ASSETS / NAME / "corpus.json"
    corpus = json.loads(corpus_path.read_text()) if corpus_path.exists() else {}
    lines = [
        "# tiny-lm",
        "",
        "A `LlamaForCausalLM` (RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention) "
        "with its own byte-level BPE tokenizer, trained here; a standard Hugging Face directory "
        "(`config.json`, `model.safetensors`, `tokenizer.json`) that `LlamaForCausalLM."
        "from_pretrained` and `AutoTokenizer` open. Reproduce: `explorer train tiny-lm`.",
        "",
        f"- {card['params']:,} parameters: {arch['num_hidden_layers']} layers, hidden "
        f"{arch['hidden_size']}, {arch['num_attention_heads']} heads, "
        f"{arch['num_key_value_heads']} KV heads, SwiGLU {arch['intermediate_size']}, context "
        f"{arch['max_position_embeddings']} tokens, vocabulary {arch['vocab_size']} (byte-level "
        "BPE trained with `tokenizers` on the training split), tied embeddings. Every matrix's "
        "input width is a multiple of 256, so llama.cpp's k-quants apply to every tensor.",
        f"- Weights: {card['weights_dtype']} (`model.safetensors`); the float reference is those "
        "values in fp32.",
        "",
        "## Data",
        "",
        f"`corpus.txt.gz`: the docstrings and comments of the CPython {corpus.get('python', '?')} "
        f"standard library ({corpus.get('files', '?')} `.py` files; tests, codec tables and "
        f"site-packages excluded), {corpus.get('bytes', 0):,} bytes of UTF-8 text, sha256 "
        f"`{corpus.get('sha256', '?')}`, built by `scripts/build_corpus.py`. Licence: PSF License "
        "Agreement version 2 (permissive; `LICENSE-PSF.txt`). Splits (`explorer/models/"
        "corpus.py`): 32 equal stretches, each ending in 2 calibration rows and 4 eval rows of "
        "257 bytes; the rest is training text.",
        "",
        "## Training",
        "",
        f"{tr['steps_taken']} steps of {tr['batch_size']} x {arch['max_position_embeddings']} "
        f"tokens ({tr['tokens']:,} tokens; the train split holds {tr['train_split_tokens']:,}), "
        f"AdamW (betas {tuple(tr['betas'])}, weight decay {tr['weight_decay']} on matrices), "
        f"peak learning rate {tr['lr']} after {tr['warmup']} warm-up steps, cosine decay to "
        f"{tr['min_lr']}, gradient clipping {tr['grad_clip']}, seed {card['seed']}, "
        f"{tr['threads']} thread(s) on a 2-core machine: {card['train_seconds'] / 60:.1f} minutes "
        f"(torch {card['torch']}; load average {tr['load_average_at_start']:.2f} when training "
        "started: other processes share this machine).",
        "",
        "## Perplexity (eval split, per token)",
        "",
        f"{card['eval_tokens']:,} next-token predictions covering {card['eval_bytes']:,} UTF-8 "
        f"bytes, evaluated in {card['eval_seconds']:.1f} s. Bits per byte = total NLL in bits / "
        "bytes of the predicted tokens (the byte-level GPT that was tiny-lm before: 5.45 per-byte "
        "perplexity = 2.45 bits per byte). PTQ is round-to-nearest, symmetric, min-max, "
        "weight-only, every linear layer (the tied head included).",
        "",
        "| weights | perplexity per token | vs float | bits per byte |",
        "| --- | --- | --- | --- |",
    ]
    for key, label in (
        ("float", "float (bf16 values in fp32)"),
        ("w8_channel", "int8 per-channel"),
        ("w4_g32", "int4 group 32"),
        ("w4_g128", "int4 group 128"),
        ("w4_channel", "int4 per-channel"),
    ):
        if key in card:
            lines.append(
                f"| {label} | {card[key]:.4f} | {100 * (card[key] / card['float'] - 1):+.2f} % "
                f"| {bpb[key]:.4f} |"
            )
    if card.get("latency"):
        lines += ["", *latency_markdown(card["latency"])]
    return "\n".join(lines) + "\n"


def latency_markdown(latency: dict[str, Any]) -> list[str]:
    lines = [
        "## Latency",
        "",
        "`decode`: one decode step at batch 1 with 128 cached tokens; `prefill`: 128 tokens at "
        "batch 1. Each layer's kernel is chosen by timing on the workload's row count. "
        f"Measured with `measure_callable` (warm-up, median; {latency['method']}; other "
        "processes share this machine, load average "
        f"{latency['load_average_at_start']:.2f} at the start). Speedups against torch fp32 "
        "and bf16. Weight MB: the bytes of the linear layers' weights as stored (codes, scales), "
        "which a decode step reads once.",
        "",
        kernels_line(latency),
    ]
    for n_threads, result in latency["threads"].items():
        plans = result["plans"]
        lines += [
            "",
            f"### {n_threads} thread{'s' if n_threads != '1' else ''}",
            "",
            "| plan | weight MB | decode ms | x fp32 | prefill ms | x fp32 "
            "| kernels (decode / prefill) |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, row in plans.items():
            kernels = " / ".join(
                ", ".join(f"{k} x{n}" for k, n in row[w]["kernels"].items()) or "torch"
                for w in ("decode", "prefill")
            )
            lines.append(
                f"| {name} | {row['weight_bytes'] / 1e6:.1f} | {row['decode']['ms']:.3f} "
                f"| {row['decode']['speedup_vs_fp32']:.2f} "
                f"| {row['prefill']['ms']:.2f} | {row['prefill']['speedup_vs_fp32']:.2f} "
                f"| {kernels} |"
            )
        best = result["best"]
        lines.append("")
        for key, item in best.items():
            lines.append(
                f"- best {key.replace('_', ' ')}: {item['plan']}, {item['ms']:.3f} ms, "
                f"{item['speedup_vs_fp32']:.2f}x fp32, {item['speedup_vs_bf16']:.2f}x bf16"
            )
        goal = min(best["int8_decode"]["speedup_vs_fp32"], best["int4_decode"]["speedup_vs_fp32"])
        lines.append(
            f"- decode goal (best int8 and best int4 at least {DECODE_GOAL}x fp32): "
            + ("met" if goal >= DECODE_GOAL else f"not met (the slower of the two is {goal:.2f}x)")
        )
    fastest_fp32 = min(r["plans"]["fp32"]["decode"]["ms"] for r in latency["threads"].values())
    for label in ("int8", "int4"):
        fastest = min(r["best"][f"{label}_decode"]["ms"] for r in latency["threads"].values())
        lines.append(
            f"- best {label} decode at any thread count against the fastest fp32 decode at any "
            f"thread count: {fastest_fp32 / fastest:.2f}x"
        )
    return [*lines, "", *_reading(latency)]


def kernels_line(latency: dict[str, Any]) -> str:
    """The kernel build the latencies were measured on (`explorer.kernels.native.build_stamp`),
    or that a card measured before builds were recorded does not know it."""
    if "kernels" not in latency:
        return (
            "Kernel build: not recorded (measured before cards were stamped, so later kernel "
            "changes are not in these numbers until `remeasure_latency` measures them again)."
        )
    stamp = latency["kernels"]
    if stamp is None:
        return "Kernel build: none (the native library was unavailable; torch's kernels only)."
    return f"Kernel build: native library `{stamp['build']}`, instruction set {stamp['isa']}."


def _reading(latency: dict[str, Any]) -> list[str]:
    """How to read the latency table of the highest thread count, from its own numbers."""
    n_threads = max(latency["threads"], key=int)
    plans = latency["threads"][n_threads]["plans"]

    def mb(name: str) -> str:
        return f"{plans[name]['weight_bytes'] / 1e6:.1f} MB"

    def x(name: str, workload: str = "decode") -> str:
        return f"{plans[name][workload]['speedup_vs_fp32']:.2f}x"

    cpu = latency.get("cpu") or {}
    isa = (
        f"{cpu.get('model', 'this CPU')}: AVX2 {'yes' if cpu.get('avx2') else 'no'}, AVX-512 "
        f"{'yes' if cpu.get('avx512') else 'no'}, VNNI {'yes' if cpu.get('vnni') else 'no'}, "
        f"bf16 arithmetic {'yes' if cpu.get('bf16') else 'no'}"
        if cpu
        else "CPU features not recorded"
    )
    int4 = min(INT4_PLANS, key=lambda n: plans[n]["decode"]["ms"])
    int4_vs_int8 = plans[int4]["decode"]["ms"] / plans["w8_channel"]["decode"]["ms"]
    prefill_best = max(
        (n for n in plans if n not in ("fp32", "bf16")),
        key=lambda n: plans[n]["prefill"]["speedup_vs_fp32"],
    )
    return [
        f"**Reading the numbers** ({n_threads} threads; {isa}). A decode step reads every "
        f"linear weight once: {mb('fp32')} in fp32, close to the last-level cache "
        f"({latency.get('llc') or 'size not recorded'}) that the KV "
        "cache, the activations and other processes share, so much of it comes from memory "
        f"every step; {mb('w8_channel')} in int8 and {mb(int4)} in int4 ({int4}) stay cached; bf16 "
        f"({mb('bf16')}) gets {x('bf16')} from halving the bytes alone. int8 weight-only gets "
        f"{x('w8_channel')}; int4 reads about half of int8's bytes but takes "
        f"{int4_vs_int8:.2f}x int8's time ({x(int4)}), because the int4 kernels unpack nibbles "
        "with extra instructions before each fp32 multiply-add, so at one row they are bound "
        "by instructions as much as by bytes. W8A8 with per-token dynamic scales "
        f"({x('w8a8_token')} at decode) also quantizes each activation row before its integer "
        "products in every layer, a fixed cost that one row cannot amortize. Prefill "
        "multiplies 128 rows by each weight and is compute-bound: the weight-only kernels "
        "multiply in fp32 after converting the codes, W8A8 multiplies int16 pairs, and the best "
        f"quantized prefill is {prefill_best} at {x(prefill_best, 'prefill')} of torch's fp32 "
        f"GEMM; bf16 prefill ({x('bf16', 'prefill')}) shows the missing bf16 arithmetic.",
    ]
