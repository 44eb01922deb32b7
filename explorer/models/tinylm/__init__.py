"""`tiny-lm`: a byte-level GPT trained here on the prose of CPython's standard library.

The model is the decoder-only transformer of GPT-2 as nanoGPT writes it (Karpathy, nanoGPT
``model.py``): a token embedding, pre-LayerNorm blocks of causal self-attention and a 4x GELU
MLP, a final LayerNorm and a linear head. The shape is nanoGPT's ``shakespeare_char`` baby GPT
(384 wide, 6 heads of 64, 256 bytes of context) with 4 layers instead of 6: 7.3 M parameters.
The vocabulary is the 256 byte values, so there is no tokenizer: any UTF-8 text is a sequence of
tokens.

Positions are rotary (RoFormer, Su et al. 2021; as nanochat's ``gpt.py`` does) rather than
nanoGPT's learned table: each query and key is rotated by an angle proportional to its position,
so attention scores depend on relative distance, and "look at the previous byte" is easy to learn
from the start. Measured here with the same recipe, the learned table kept the model near the
unigram loss (2.7 nats per byte) for the first 100 steps, rotary reached 2.4 by step 100; with
a training budget of minutes that difference decides the model's quality.

Every projection is an ``nn.Linear`` named as users will write patterns against it
(``blocks.0.attn.qkv``, ``blocks.0.attn.proj``, ``blocks.0.mlp.fc1``, ``blocks.0.mlp.fc2``,
``lm_head``), and every in/out width is a multiple of 128, so per-group quantization with groups
of 32, 64 or 128 applies to every layer and the native int4/int8 kernels (K a multiple of 32)
run them all.

Generation uses a KV cache, as nanochat's ``engine.py`` does: `TinyLM.prefill` runs the prompt
once and stores each layer's keys and values; `TinyLM.decode_step` then feeds one token, attends
to the cached keys and values, and appends its own. The ``decode`` latency workload is exactly
one such step at batch 1 with 128 cached tokens: one matrix-vector product per layer, so its
time is the time to stream the weights, which is where int8 and int4 weights pay off. The
``prefill`` workload runs 128 prompt tokens at once (matrix-matrix products, compute-bound).

Why this size. The fp32 weights of the linear layers (28.7 MB) are about the last-level cache of
the machine it was sized on (32 MiB L3; `explorer.machine` reads this machine's) and do not stay
there between decode steps, so fp32 decoding streams them from memory; the int8 (7.2 MB) and
int4 (3.7 to 4 MB with scales) copies stay cached. A model a few times smaller would fit the
cache even in fp32, and its decode step would be bound by per-call overhead (trend 12,
docs/trends.md). The weights ship as bf16 (14.6 MB, under the 16 MB per-file limit); the float
reference is those bf16 values in fp32.

Training (`train`): fixed seeds, AdamW, linear warm-up and cosine decay, random 256-byte windows
of the training split. The card (``card.json``, ``CARD.md``) records the float perplexity on the
eval split, round-to-nearest PTQ perplexities, and decode / prefill latencies measured on the
real kernels.

Imports `explorer.errors`, `explorer.quant`, `explorer.nn` and `explorer.models`; the card's
latency table imports `explorer.measure.latency` inside `measure_workloads` (a card is a
measurement; nothing else here depends on the measurement layer).

The package holds one concept per module: `model` (the architecture and shared constants),
`data` (splits, perplexity, latency workloads), `train` (training and the card's measurements)
and `card` (``CARD.md``). This module registers the model and re-exports their public names, so
``explorer.models.tinylm`` stays the path the catalog, the tests and users' scripts import.
"""

from __future__ import annotations

from explorer.machine import cpu_features  # re-exported: the old home of the CPU facts
from explorer.models.registry import BuiltinModel, register
from explorer.models.tinylm.card import (
    card_markdown,
    latency_markdown,
)
from explorer.models.tinylm.data import (
    WORKLOAD_INPUTS,
    decode_workload,
    load_split,
    perplexity,
    prefill_workload,
    random_batch,
    split_bytes,
    workloads,
)
from explorer.models.tinylm.model import (
    CONTEXT,
    DECODE_CONTEXT,
    DECODE_GOAL,
    EVAL_BATCH,
    INT4_PLANS,
    INT8_PLANS,
    LATENCY_CONFIGS,
    MAX_FILE_BYTES,
    MLP,
    NAME,
    PTQ_CONFIGS,
    Block,
    CausalSelfAttention,
    KVCache,
    TinyLM,
    TinyLMConfig,
    apply_rotary,
    build,
    rotary_tables,
)
from explorer.models.tinylm.train import (
    CHECKPOINT_EVERY,
    TrainConfig,
    TrainLog,
    fit,
    linear_weight_bytes,
    measure_workloads,
    ptq_perplexities,
    remeasure_latency,
    save_weights,
    train,
    write_card,
)

__all__ = [
    "Block",
    "CHECKPOINT_EVERY",
    "CONTEXT",
    "CausalSelfAttention",
    "DECODE_CONTEXT",
    "DECODE_GOAL",
    "EVAL_BATCH",
    "INT4_PLANS",
    "INT8_PLANS",
    "KVCache",
    "LATENCY_CONFIGS",
    "MAX_FILE_BYTES",
    "MLP",
    "NAME",
    "PTQ_CONFIGS",
    "TINY_LM",
    "TinyLM",
    "TinyLMConfig",
    "TrainConfig",
    "TrainLog",
    "WORKLOAD_INPUTS",
    "apply_rotary",
    "build",
    "card_markdown",
    "cpu_features",
    "decode_workload",
    "fit",
    "latency_markdown",
    "linear_weight_bytes",
    "load_split",
    "measure_workloads",
    "perplexity",
    "prefill_workload",
    "ptq_perplexities",
    "random_batch",
    "remeasure_latency",
    "rotary_tables",
    "save_weights",
    "split_bytes",
    "train",
    "workloads",
    "write_card",
]

TINY_LM = register(
    BuiltinModel(
        name=NAME,
        task="lm",
        description=(
            "Byte-level GPT (4 layers, 384 wide, 7.3 M parameters) trained on the docstrings "
            "and comments of CPython's standard library; metric: per-byte perplexity"
        ),
        build=build,
        load_split=load_split,
        train=train,
        workloads=workloads,
        metric="perplexity",
        extra={"context": CONTEXT, "decode_context": DECODE_CONTEXT},
        # Fine-tuning wants a far gentler peak than training's 2e-3. W4 g128, 128 held-out
        # rows, RTN 5.4699: QAT at 1e-4 gives 5.4064 / 5.3580 / 5.3027 / 5.2303 after 20 / 50
        # / 100 / 200 steps; at 3e-4, 5.5052 (worse than RTN) / 5.4162 / 5.2939 after 20 / 50
        # / 100. A step of 8 rows x 256 bytes takes about 0.85 s on 2 cores.
        qat_lr=1e-4,
        qat_batch=8,
    )
)
