"""`tiny-lm`: a small `LlamaForCausalLM` with its own byte-level BPE tokenizer, trained here on
the prose of CPython's standard library (PSF licence).

It is a standard Hugging Face directory (``assets/tiny-lm``: ``config.json``,
``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``) that
``LlamaForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` open, with the parts
real Llamas have: RMSNorm, rotary positions, a SwiGLU MLP (gate, up, down) and grouped-query
attention. It loads through the same safe Hugging Face loader as a user's directory, its rows
are computed by the causal-LM task (perplexity per token, KL mean and 99th percentile, same top
token) and its ``decode`` / ``prefill`` workloads use the model's own KV cache
(`explorer.models.hf_workloads`). Until session 7 tiny-lm was a hand-written byte-level GPT
(2.45 bits per byte); this model replaced it, and every trend test that held on the GPT holds
here with thresholds re-derived.

The package holds one concept per module: `model` (the architecture and shared constants),
`data` (splits, tokenizer, metrics, latency workloads), `train` (training and the card's
measurements) and `card` (``CARD.md``). This module registers the model and re-exports their
public names, so ``explorer.models.tinylm`` stays the path the catalog, the tests and users'
scripts import.

Imports `explorer.errors`, `explorer.quant`, `explorer.nn` and `explorer.models`; the card's
latency table imports `explorer.measure.latency` inside `measure_workloads` (a card is a
measurement; nothing else here depends on the measurement layer).
"""

from __future__ import annotations

from pathlib import Path

from explorer.models.registry import BuiltinModel, register
from explorer.models.tinylm.card import card_markdown, kernels_line, latency_markdown
from explorer.models.tinylm.data import (
    WORKLOAD_INPUTS,
    encode,
    evaluate,
    load_split,
    load_tokenizer,
    nll_bits,
    perplexity,
    prompt,
    random_batch,
    rows,
    split_bytes,
    split_ids,
    split_text,
    token_bytes,
    train_tokenizer,
    workloads,
)
from explorer.models.tinylm.model import (
    ARCHITECTURE,
    BOS,
    CONTEXT,
    DECODE_CONTEXT,
    DECODE_GOAL,
    EOS,
    EVAL_BATCH,
    INT4_PLANS,
    INT8_PLANS,
    LATENCY_CONFIGS,
    NAME,
    PTQ_CONFIGS,
    VOCAB,
    LogitsOnly,
    build,
    llama_config,
    load,
)
from explorer.models.tinylm.train import (
    CARD_PTQ,
    TrainConfig,
    TrainLog,
    fit,
    linear_weight_bytes,
    measure_workloads,
    ptq_metrics,
    remeasure_latency,
    train,
    write_card,
)

__all__ = [
    "ARCHITECTURE",
    "BOS",
    "CARD_PTQ",
    "CONTEXT",
    "DECODE_CONTEXT",
    "DECODE_GOAL",
    "EOS",
    "EVAL_BATCH",
    "INT4_PLANS",
    "INT8_PLANS",
    "LATENCY_CONFIGS",
    "NAME",
    "PTQ_CONFIGS",
    "TINY_LM",
    "VOCAB",
    "WORKLOAD_INPUTS",
    "LogitsOnly",
    "TrainConfig",
    "TrainLog",
    "build",
    "card_markdown",
    "encode",
    "evaluate",
    "fit",
    "kernels_line",
    "latency_markdown",
    "linear_weight_bytes",
    "llama_config",
    "load",
    "load_split",
    "load_tokenizer",
    "measure_workloads",
    "nll_bits",
    "perplexity",
    "prompt",
    "ptq_metrics",
    "random_batch",
    "remeasure_latency",
    "rows",
    "split_bytes",
    "split_ids",
    "split_text",
    "token_bytes",
    "train",
    "train_tokenizer",
    "workloads",
    "write_card",
]


def _train(out_dir: Path, seed: int) -> dict[str, float]:
    return train(out_dir, seed)


TINY_LM = register(
    BuiltinModel(
        name=NAME,
        task="lm",
        metric="perplexity",
        description=(
            "Llama-architecture language model (RMSNorm, rotary, SwiGLU, grouped-query "
            "attention; 4 layers, 512 wide) with a 4,096-token BPE tokenizer, trained here on "
            "the prose of CPython's standard library; metric: perplexity per token"
        ),
        build=build,
        load_split=load_split,
        train=_train,
        workloads=workloads,
        loader=load,
        extra={"context": CONTEXT, "decode_context": DECODE_CONTEXT},
        # Fine-tuning wants a far gentler peak than training's 2e-3 (measured on the byte-level
        # GPT this model replaced: at 3e-4 QAT was worse than RTN for its first 20 steps).
        qat_lr=1e-4,
        qat_batch=8,
    )
)
