"""The quantization plans whisper-tiny-en is shown with: its default sweep's rows and the
benchmark's (``benchmarks/whisper_tiny.py``), in one place so that both compute the same plans.

Layer names are those of the model as the sweep runs it (the speech task's
``SpeechRecognizer`` wraps the ``WhisperForConditionalGeneration`` as ``whisper``; `PREFIX`):
``whisper.model.encoder.layers.N``, ``whisper.model.decoder.layers.N`` and the output
projection ``whisper.proj_out``. The two
input convolutions of the encoder stay float in every plan (they are 0.3 % of the weights).

- ``W8``: int8 weights per output channel, symmetric, round to nearest; ``W8A8`` adds dynamic
  per-token int8 activations.
- ``W4 g32`` and ``W4 g128``: int4 weights with one scale per group of 32 or 128 inputs (384 and
  1,536, Whisper tiny's widths, are multiples of both).
- Mixed: the encoder at W8 and the decoder at W4 g128 (``enc8-dec4``), the reverse
  (``enc4-dec8``, the output projection with the decoder), and W4 g128 with the first encoder
  block and the output projection kept at W8 (``ends8``), where uniform low-bit quantization is
  commonly said to hurt most.
- ``W4 g128 QAT``: W4 g128 trained from its PTQ point for `QAT_STEPS` steps of `QAT_BATCH`
  utterance at a peak rate of `QAT_LR` on the training audio (the speech task's
  ``train_split``: for whisper-tiny-en the 120 synthetic training utterances, none of whose
  sentences is evaluated), teacher-forced next-token cross-entropy on the reference transcript.
  A step runs the encoder forward and backward over a whole 30 s window: about 9 CPU-seconds
  on our 2-core AMD EPYC (batch 2: 15 s), measured with 2 threads under load; so 200 steps (1.7
  passes over the 120 utterances) cost about half an hour of one core, about as much as
  evaluating two rows on the 200 evaluation utterances. The rate is the one that fine-tunes a
  pretrained model (1e-3, the default for models trained here, is for small models trained from
  scratch).

Imports: `explorer.quant.config`.
"""

from __future__ import annotations

from explorer.quant.config import Plan, QuantConfig

PREFIX = "whisper."
"""Where the Whisper model sits in `SpeechRecognizer` (empty for a bare Whisper model)."""

W8 = QuantConfig(weight_bits=8, granularity="channel")
W8A8 = W8.with_(act_bits=8, act_mode="dynamic", act_granularity="token")
W4G32 = QuantConfig(weight_bits=4, granularity="group", group_size=32)
W4G128 = QuantConfig(weight_bits=4, granularity="group", group_size=128)

UNIFORM: dict[str, QuantConfig] = {"W8": W8, "W8A8": W8A8, "W4 g32": W4G32, "W4 g128": W4G128}
"""Uniform configurations by the name the benchmark shows."""

DEFAULT_MIXED = "enc8-dec4"
"""The mixed plan of the default sweep."""

QAT_STEPS = 200
QAT_LR = 1e-4
QAT_BATCH = 1
"""The default sweep's QAT row (module docstring): steps, peak learning rate, utterances a step."""


def mixed_plans(prefix: str = PREFIX) -> dict[str, Plan]:
    """Mixed plans by short name (module docstring), for layers named under ``prefix``."""
    encoder, decoder = f"{prefix}model.encoder.*", f"{prefix}model.decoder.*"
    head, first = f"{prefix}proj_out", f"{prefix}model.encoder.layers.0.*"
    return {
        "enc8-dec4": Plan(default=W4G128, rules=((encoder, W8),)),
        "enc4-dec8": Plan(default=W4G128, rules=((decoder, W8), (head, W8))),
        "ends8": Plan(default=W4G128, rules=((first, W8), (head, W8))),
    }


def default_plans(prefix: str = PREFIX) -> list[Plan]:
    """The default sweep's post-training plans (the fp32 and bf16 baselines come with every
    sweep): W8, W8A8, W4 g32, W4 g128 and the `DEFAULT_MIXED` plan; `qat_plan` follows them."""
    return [Plan.uniform(c) for c in UNIFORM.values()] + [mixed_plans(prefix)[DEFAULT_MIXED]]


def qat_plan() -> Plan:
    """The default sweep's QAT row: W4 g128 trained (`QAT_STEPS` steps at `QAT_LR`)."""
    return Plan.uniform(W4G128.with_(method="qat"))
