"""The guided path a newcomer follows through the app ("Start here" on the Model page): five
steps, Model → Sweep → Pareto → Layers → Learn, each naming its page, what to do there and what
it shows. The texts speak of the default model and its default sweep
(`explorer.sweep.default`), which the first open of the app computes.

Plain data, so the Model page draws it before torch is imported.

Imports: `explorer.models.catalog` (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass

from explorer.models.catalog import DEFAULT_MODEL


@dataclass(frozen=True)
class GuideStep:
    """One step: the page file (as `st.navigation` registers it), its navigation title, what to
    do there and what to look for."""

    page: str
    title: str
    do: str
    see: str


GUIDE_TITLE = "Start here: the app in five steps"

GUIDE: tuple[GuideStep, ...] = (
    GuideStep(
        page="pages/model.py",
        title="Model",
        do=f"You are here. The default model, {DEFAULT_MODEL}, is being quantized nine ways below "
        "(the default sweep: under a minute, its points appear as they finish).",
        see="Its layer table: the 3×3 depthwise convolutions (one input channel each) are the "
        "layers a single per-tensor scale will break.",
    ),
    GuideStep(
        page="pages/sweep.py",
        title="Sweep",
        do="Add configurations of your own, e.g. 4-bit weights in groups of 32 (granularity "
        "`group32`), or 8-bit activations.",
        see="Each finished configuration appears on the live front as it is measured.",
    ),
    GuideStep(
        page="pages/pareto.py",
        title="Pareto",
        do="Read the trade-off: accuracy against size, the float model as a dashed line.",
        see="8 bits is free, 4 bits costs a little, below that accuracy falls off a cliff; "
        "per-tensor scales are at chance at every width; the arrow shows training (QAT) "
        "win back most of the 3-bit loss. Click a point to open its layers.",
    ),
    GuideStep(
        page="pages/layers.py",
        title="Layers",
        do="See one configuration layer by layer, and change a single layer with the "
        "what-if editor.",
        see="Which layers lose the most signal (SQNR) and which take the time; try keeping the "
        "most sensitive layer at 8 bits and see how much accuracy that wins back.",
    ),
    GuideStep(
        page="pages/learn.py",
        title="Learn",
        do="Pick a layer and a bit width.",
        see="Why: the grid of values a format can represent, how one wide channel stretches a "
        "per-tensor scale, and why 2 bits is hard.",
    ),
)
"""The five steps, in order."""
