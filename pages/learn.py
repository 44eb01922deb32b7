"""Learn: what quantizing a layer does to its weights, shown on the current model's own layers.

The histogram of one layer's weights with the grid of values the chosen format can represent and
its clipping range, the rounding error, one scale per tensor against per channel against per
group, the SQNR at every bit width, and fake quantization against the real integer kernel."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from explorer.errors import ExplorerError
from explorer.lesson import (
    compare_granularities,
    fake_vs_real,
    kernel_options,
    layer_names,
    layer_weights,
    lesson,
    sqnr_by_bits,
)
from explorer.plots import histogram_figure
from explorer.quant.config import CALIBRATIONS, QuantConfig
from explorer.ui import state
from explorer.ui.labels import sqnr_text

GROUP_SIZES = (16, 32, 64, 128, 256)
CALIBRATION_NAMES = {
    "minmax": "min-max (keep every weight)",
    "percentile": "percentile (clip the rarest 0.01 %)",
    "mse": "MSE-optimal (clip where it lowers the error)",
}
ACTIVATIONS = {
    "weights only (activations stay float)": None,
    "W8A8, dynamic per-token activations": ("dynamic", "token"),
    "W8A8, static per-tensor activations": ("static", "tensor"),
}
DEFAULT_KERNEL = "the layer's default"


def controls_ui(weight_shape: tuple[int, int]) -> dict[str, Any]:
    n, k = weight_shape
    left, middle, right = st.columns(3)
    with left:
        bits = st.select_slider(
            "Bits per weight",
            options=[2, 3, 4, 5, 6, 7, 8],
            value=4,
            key="learn.bits",
            help="b bits give 2^b representable values: 256 at 8 bits, 16 at 4, only 4 at 2.",
        )
        symmetric = st.toggle(
            "Symmetric grid",
            value=True,
            key="learn.symmetric",
            help="Symmetric: the grid is centred on 0 (zero point 0). Asymmetric: the grid is "
            "shifted to cover exactly [min, max], with a zero point saying which code means 0.",
        )
    with middle:
        granularity = st.radio(
            "One scale per …",
            ("tensor", "channel", "group"),
            index=1,
            horizontal=True,
            key="learn.granularity",
            help="How many weights share one scale: the whole layer, each output channel (row), "
            "or each group of consecutive inputs within a row.",
        )
        group_size = None
        if granularity == "group":
            sizes = [g for g in GROUP_SIZES if k % g == 0 and g < k]
            if not sizes:
                st.error(f"No group size in {list(GROUP_SIZES)} divides this layer's {k} inputs.")
                st.stop()
            group_size = st.selectbox(
                "Group size",
                sizes,
                index=sizes.index(32) if 32 in sizes else 0,
                key="learn.group_size",
            )
    with right:
        calibration = st.selectbox(
            "Calibration (clipping range)",
            CALIBRATIONS,
            format_func=CALIBRATION_NAMES.get,
            key="learn.calibration",
        )
        one_channel = granularity != "tensor" or st.checkbox(
            "Show one channel on the shared grid",
            value=False,
            key="learn.one_channel",
            help="Per-tensor: a channel with a narrow range uses only a few of the grid's levels.",
        )
        channel = None
        group = 0
        if one_channel:
            channel = int(
                st.number_input("Channel", 0, n - 1, 0, key="learn.channel", help=f"0 … {n - 1}")
            )
        if granularity == "group" and group_size:
            group = int(
                st.number_input(
                    "Group within the channel", 0, k // group_size - 1, 0, key="learn.group"
                )
            )
    return {
        "bits": bits,
        "granularity": granularity,
        "group_size": group_size,
        "symmetric": symmetric,
        "calibration": calibration,
        "channel": channel,
        "group": group,
    }


def histogram_ui(layer: str, weight: Any, settings: dict[str, Any]) -> dict[str, Any]:
    result = lesson(weight, **settings, name=layer)
    figure = histogram_figure(result).update_layout(height=620)
    st.plotly_chart(figure, key="learn.histogram")
    a, b, c, d, e = st.columns(5)
    a.metric("Scale (step)", f"{result['scale']:.3g}", help="Distance between two neighbours.")
    b.metric("Zero point", result["zero"], help="The integer code that stands for 0.0.")
    c.metric("Levels", result["levels"])
    d.metric("SQNR, whole layer", sqnr_text(result["sqnr_db"]))
    e.metric("Weights clipped", f"{100 * result['clipped_share']:.3f} %")
    st.caption(
        f"Each code q from {result['codes'][0]} to {result['codes'][1]} stands for "
        "**scale × (q − zero point)**, so the format can only represent the "
        f"{result['levels']} values drawn as grey lines between "
        f"{result['clip'][0]:.3g} and {result['clip'][1]:.3g} (shaded). Every weight is rounded "
        "to the nearest line: the rounding error (red, below) is at most half a step. Weights "
        "beyond the shaded range are *clipped* to its edge; min-max calibration never clips, "
        "percentile and MSE clip a few outliers to buy a finer step for everyone else. "
        f"Worst error in the layer: {result['max_abs_error']:.3g}."
    )
    return result


def granularity_ui(weight: Any, settings: dict[str, Any]) -> None:
    st.subheader("One scale for how many weights?")
    rows = compare_granularities(
        weight, settings["bits"], settings["symmetric"], settings["calibration"]
    )
    table = pd.DataFrame(
        {
            "granularity": [r["name"] for r in rows],
            "scales stored": [r["scales"] for r in rows],
            "SQNR (dB)": [r["sqnr_db"] for r in rows],
            "max |error|": [r["max_abs_error"] for r in rows],
            "bytes": [r["bytes"] for r in rows],
            "bits / weight": [r["bits_per_weight"] for r in rows],
        }
    )
    left, right = st.columns([3, 2])
    left.dataframe(
        table,
        hide_index=True,
        key="learn.granularities",
        column_config={
            "SQNR (dB)": st.column_config.NumberColumn(format="%.1f"),
            "max |error|": st.column_config.NumberColumn(format="%.3g"),
            "bits / weight": st.column_config.NumberColumn(format="%.2f"),
        },
    )
    right.bar_chart(table, x="granularity", y="SQNR (dB)", sort=False, height=240)
    st.caption(
        "A per-tensor scale has to cover the widest channel, so channels with a narrow range "
        "fall on only a few levels. One scale per channel fits each row's own range, and groups "
        "of 32 or 128 weights fit still closer, at the price of storing more scales (the bytes "
        "and bits per weight above count them). Higher SQNR is better: +6 dB halves the error."
    )


def bits_ui(weight: Any, settings: dict[str, Any]) -> None:
    st.subheader("Why 2 bits is hard")
    rows = sqnr_by_bits(
        weight,
        settings["granularity"],
        settings["group_size"],
        settings["symmetric"],
        settings["calibration"],
    )
    table = pd.DataFrame(
        {"bits": [r["bits"] for r in rows], "SQNR (dB)": [r["sqnr_db"] for r in rows]}
    )
    st.line_chart(table, x="bits", y="SQNR (dB)", height=220)
    st.caption(
        "Each extra bit doubles the number of levels and halves the step, which buys about "
        "6 dB of SQNR. Going down, the grid thins out fast: 2 bits leave 4 levels (symmetric: "
        "−2, −1, 0, +1 steps), so most weights round to 0 or to one step, and the error is about "
        "as large as the weights themselves."
    )


def _activation_config(settings: dict[str, Any], activations: str) -> QuantConfig:
    act = ACTIVATIONS[activations]
    extra: dict[str, Any] = {}
    if act is not None:
        extra = {"act_bits": 8, "act_mode": act[0], "act_granularity": act[1]}
    return QuantConfig(
        weight_bits=settings["bits"],
        granularity=settings["granularity"],
        group_size=settings["group_size"],
        symmetric=settings["symmetric"],
        calibration=settings["calibration"],
        **extra,
    )


def fake_vs_real_ui(ctx: Any, layer: str, settings: dict[str, Any]) -> None:
    st.subheader("Fake quantization against the real integer kernel")
    st.caption(
        "Papers and quantization-aware training *simulate* quantization: weights (and "
        "activations) are rounded onto the grid but stay floats, and a float matmul runs. A real "
        "kernel stores the integer codes and multiplies integers. Here both run the same "
        "layer on calibration inputs."
    )
    left, middle, right = st.columns(3)
    activations = left.selectbox("Activations", list(ACTIVATIONS), key="learn.acts")
    config = _activation_config(settings, activations)
    options = kernel_options(ctx, layer, config)
    kernel = middle.selectbox(
        "Kernel",
        [DEFAULT_KERNEL, *options, "reference"],
        key="learn.kernel",
        help="The real kernels that compute this format on this machine, or the float "
        "reference path (what a layer without a real kernel runs).",
    )
    samples = right.slider("Calibration samples", 1, 64, 8, key="learn.samples")
    with st.spinner("Running the layer both ways …"):
        out = fake_vs_real(
            ctx, layer, config, rows=samples, kernel=None if kernel == DEFAULT_KERNEL else kernel
        )
    a, b, c, d = st.columns(4)
    a.metric("Kernel", out["kernel"])
    b.metric("max |fake − real|", f"{out['max_abs_diff']:.2e}")
    c.metric("relative difference", f"{out['rel_diff']:.2e}")
    d.metric("fake vs real", sqnr_text(out["fake_vs_real_sqnr_db"]))
    st.dataframe(
        pd.DataFrame(
            {
                "output": ["fake-quantized (float simulation)", f"real ({out['kernel']})"],
                "SQNR vs float (dB)": [out["sqnr_fake_db"], out["sqnr_real_db"]],
            }
        ),
        hide_index=True,
        key="learn.fake_table",
        column_config={"SQNR vs float (dB)": st.column_config.NumberColumn(format="%.2f")},
    )
    if out["simulated"] and out["candidates"]:
        st.info(
            "The float reference path is the fake-quantized computation itself (float weights "
            "on the grid, a float matmul), so it agrees with the simulation up to float rounding. "
            "Pick a real kernel to see integer execution."
        )
        return
    if out["simulated"]:
        st.info(
            f"{out['config']} has no real kernel for this layer on this machine: the layer runs "
            "the float reference path, which is the fake-quantized computation itself. A sweep "
            "measures its accuracy this way and marks its latency *simulated*."
        )
        return
    if out["kernel"].endswith("-bf16"):
        st.caption(
            f"**{out['kernel']}** multiplies in bf16: it rounds the activations (and scales) to "
            "8 significant bits, so it agrees with the float simulation to about 3 digits, still "
            "far below the quantization error (compare the two SQNRs)."
        )
    st.caption(
        "Both paths use the same integer codes and scales; they differ only in the order and "
        "precision of the float operations (the integer kernel sums exact integer products and "
        "scales once at the end). So the gap is tiny next to the quantization error itself: the "
        "two SQNRs against float agree, and fake quantization is a faithful stand-in for "
        f"accuracy, though never for speed. Shape of the output: {out['output_shape']}."
    )


def main() -> None:
    st.title("Learn")
    st.caption(
        "Quantizing stores each weight as a small integer code plus a shared *scale* (a float "
        "that says how far apart the representable values are). Pick a layer of the current "
        "model and a format to see which values it can represent and what rounding does."
    )
    try:
        ctx = state.context()
        names = layer_names(ctx)
    except (ExplorerError, ValueError) as exc:
        st.error(f"Could not load the model: {exc}")
        return
    if not names:
        st.info("This model has no layer that can be quantized (linear or convolution).")
        return
    shapes = {name: tuple(layer_weights(ctx, name).shape) for name in names}
    largest = max(names, key=lambda n: shapes[n][0] * shapes[n][1])
    layer = st.selectbox(
        f"Layer of {ctx.name}",
        names,
        index=names.index(largest),
        key="learn.layer",
        help="The largest layer is shown first: it holds the most weights.",
        format_func=lambda n: f"{n}  ({shapes[n][0]} × {shapes[n][1]} weights)",
    )
    weight = layer_weights(ctx, layer)
    settings = controls_ui(shapes[layer])
    try:
        histogram_ui(layer, weight, settings)
        granularity_ui(weight, settings)
        bits_ui(weight, settings)
    except (ExplorerError, ValueError) as exc:
        st.error(str(exc))
    try:
        fake_vs_real_ui(ctx, layer, settings)
    except (ExplorerError, ValueError) as exc:
        st.error(str(exc))


main()
