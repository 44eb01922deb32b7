"""The default sweep: what a new user's first open of the app computes, and what ``explorer sweep``
runs without dimension options.

It is chosen to teach the trade-off in under a minute on two cores, and was chosen by measuring
(``benchmarks/sweep_time.py``; numbers in the commit that set it). On the default model,
``mobile-cnn`` (2,000 evaluation images, so a difference of a few points lies outside the 95 %
intervals), it shows:

- the bit-width cliff: weights in 8, 4, 3 and 2 bits per output channel, roughly 98 %, 92 %,
  78 % and 11 % against 98 % in float (8 bits is free, 4 bits costs a little, 3 bits a lot,
  2 bits is near chance; Krishnamoorthi 2018, arXiv 1806.08342, and `docs/trends.md`);
- per-tensor against per-channel scales at the same widths: per-tensor collapses to chance even
  at 8 bits, because folded batch norm leaves a few depthwise channels hundreds of times wider
  than the rest (see `explorer.models.mobile`);
- one QAT recovery arrow: the 3-bit per-channel model trained for `DEFAULT_QAT_STEPS` steps from
  its PTQ point regains most of the loss (about 97 %), more than 4-bit PTQ keeps.

`default_entries` expands it against a model: the app's worker, the command line and the test
of the default sweep all call it, so they evaluate the same rows.

Imports: `explorer.sweep.space`, `explorer.sweep.runner`, `explorer.models.whisper_plans`.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from explorer.sweep.runner import RunSettings
from explorer.sweep.space import PlanEntry, Skipped, SweepSpec, baselines, entry_for_plan, expand

DEFAULT_QAT_STEPS = 50

DEFAULT_SPEC = SweepSpec(weight_bits=(8, 4, 3, 2), granularity=("tensor", "channel"))
"""The post-training part: weight-only round to nearest, 8/4/3/2 bits, per tensor and per
channel (8 configurations besides the fp32 and bf16 baselines)."""

DEFAULT_QAT = replace(
    DEFAULT_SPEC,
    weight_bits=(3,),
    granularity=("channel",),
    method=("qat",),
    qat_steps=DEFAULT_QAT_STEPS,
)
"""The one QAT row: 3-bit per-channel weights, trained from the PTQ row of the same config."""

SUMMARY = (
    "Weights in 8, 4, 3 and 2 bits, with one scale per tensor and one per output channel, plus "
    f"one 3-bit model trained for {DEFAULT_QAT_STEPS} steps (QAT) and the fp32 and bf16 "
    "baselines: where quantization is free, where it falls off a cliff, and how much training "
    "wins back, computed here as you watch."
)
"""What the default sweep holds, in a sentence the app shows next to it."""

DEFAULT_RUN = RunSettings(repeats=10, n_boot=500)
"""Run settings of the app's sweeps: the default sweep uses them, and the Sweep page starts from
them, so rows of the same configuration are found in the store, not recomputed."""


def default_entries(model: nn.Module | None = None) -> tuple[list[PlanEntry], list[Skipped]]:
    """The default sweep's entries, in order (the baselines, the PTQ grid, then the QAT row),
    resolved against ``model`` as `expand` does; baselines appear once. A Whisper model gets
    its own (`whisper_entries`)."""
    if getattr(getattr(model, "config", None), "model_type", None) == "whisper":
        return whisper_entries(model)
    entries, skipped = expand(DEFAULT_SPEC, model)
    qat_entries, qat_skipped = expand(DEFAULT_QAT, model)
    entries += [entry for entry in qat_entries if entry.kind != "baseline"]
    return entries, skipped + qat_skipped


def whisper_entries(model: nn.Module) -> tuple[list[PlanEntry], list[Skipped]]:
    """A Whisper model's default sweep: the baselines, W8 and W8A8, W4 g32 and g128, the
    encoder at 8 bits with the decoder at 4, and W4 g128 trained by QAT on the training audio
    (`explorer.models.whisper_plans`: its steps and rate, chosen by measuring; last, since each
    step runs a 30 s window forward and backward)."""
    from explorer.models.whisper_plans import PREFIX, QAT_LR, QAT_STEPS, default_plans, qat_plan

    prefix = PREFIX if hasattr(model, PREFIX.rstrip(".")) else ""
    qat = entry_for_plan(qat_plan(), qat_steps=QAT_STEPS, qat_lr=QAT_LR)
    return baselines() + [entry_for_plan(p) for p in default_plans(prefix)] + [qat], []
