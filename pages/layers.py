"""Layers: one configuration layer by layer (setting, kernel, SQNR, share of latency, bytes, and
each layer's measured time next to the time its bytes predict), the per-layer sensitivity heat
map, a what-if editor that changes one layer and re-evaluates, and two configurations side by
side."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from explorer.errors import ExplorerError
from explorer.export.gguf import gguf_names
from explorer.inspect import algorithm_summary, calibration_seconds
from explorer.measure.readrate import BYTES_BOUND_RATIO, CACHE_RATIO, COMPUTE_MACS_PER_BYTE
from explorer.nn.convert import quantizable_layers
from explorer.plots import (
    compare_layers_figure,
    float_metric,
    layer_figure,
    metric_of,
    sensitivity_heatmap,
)
from explorer.sweep.sensitivity import DEFAULT_SETTINGS
from explorer.ui import state
from explorer.ui.labels import (
    LAYER_CHART_LABELS,
    SENSITIVITY_LABELS,
    SETTING_CHOICES,
    change_headline,
    compare_rows,
    row_headline,
)
from explorer.ui.rows import headline_ui, row_labels, row_picker_ui, rows_or_stop
from explorer.ui.tables import layer_report_frame
from explorer.ui.widgets import DEFAULT_RUN
from explorer.whatif import (
    cached_sensitivity,
    evaluate_whatif,
    layer_changes,
    load_or_measure_sensitivity,
    settings_for_row,
)

ROW_BOX = "layers.row"
WHATIF = "layers.whatif.result"
COMPARE_A = "layers.compare.a"
COMPARE_B = "layers.compare.b"


def value_picker_ui(label: str, choices: dict[str, str], default: str, *, key: str) -> str:
    """A segmented control over ``choices`` (value: label); ``default`` while none is picked."""
    picked = st.segmented_control(
        label, list(choices), default=default, format_func=choices.__getitem__, key=key
    )
    return picked or default


def configuration_ui(rows: list[dict[str, Any]], ctx: Any) -> tuple[dict[str, Any], str]:
    """Pick a configuration (the one selected app-wide by default) and show its headline
    numbers, per-layer table (with llama.cpp's tensor names when llama.cpp runs the model) and
    chart. Returns the row and its metric's sense."""
    by_key = {row["key"]: row for row in rows}
    metric_path, sense = metric_of(rows)
    selected = state.selected_row_key()
    if selected not in by_key:
        selected = next(
            (r["key"] for r in rows if r.get("kind") != "baseline" and r.get("layers")),
            next(iter(by_key)),
        )
    key = row_picker_ui(
        rows,
        selected,
        box=ROW_BOX,
        label="Configuration",
        help="The configuration shown below; clicking a point on the Pareto page selects it too.",
    )
    row = by_key[key]
    headline_ui(row_headline(row, metric_path.split(".", 1)[-1], float_metric(rows), sense))
    simulated = row.get("latency_kind") == "simulated"
    if simulated:
        st.caption(
            "Simulated latency: some layers have no real kernel at this width, so the model was "
            "timed with the next wider real kernel in their place; the time is an upper bound and "
            "per-layer shares are not measured."
        )

    layers_df = layer_report_frame(row, gguf_names(ctx.model))
    if layers_df.empty:
        st.info("This configuration has no per-layer report (it was run without one).")
        return row, sense
    if "ggml type" in layers_df:
        st.caption(
            "llama.cpp quantized the float model itself: *ggml type* is each tensor's type in "
            "the GGUF file it ran (llama.cpp falls back to another type where a tensor's rows "
            "do not fit the asked one's blocks); *setting* is the explorer's own plan, float."
        )
    st.dataframe(
        layers_df,
        hide_index=True,
        key="layers.table",
        column_config={
            "weight SQNR (dB)": st.column_config.NumberColumn(format="%.1f"),
            "output SQNR (dB)": st.column_config.NumberColumn(format="%.1f"),
            "share of latency": st.column_config.ProgressColumn(
                format="percent", min_value=0.0, max_value=1.0
            ),
            "bytes": st.column_config.NumberColumn(format="%d"),
            "ms per call": st.column_config.NumberColumn(format="%.4f"),
            "bytes per call": st.column_config.NumberColumn(format="%d"),
            "ms predicted from bytes": st.column_config.NumberColumn(format="%.4f"),
            "measured ÷ predicted": st.column_config.NumberColumn(format="%.2f"),
        },
    )
    if "verdict" in layers_df:
        byte_time_ui(row)
    # a simulated row has no per-layer times: open on what it does have
    opening = "output_sqnr_db" if simulated else "latency_share"
    shown = value_picker_ui("Chart", LAYER_CHART_LABELS, opening, key="layers.value")
    st.plotly_chart(layer_figure(row, value=shown), key="layers.figure")
    st.caption(
        "Bars are coloured by the kernel that runs the layer; hatched bars have no real kernel "
        "at this width and are computed on the reference path (their timing is simulated)."
    )
    if row.get("isa"):
        st.caption(
            f"Our native kernels ran on the **{row['isa']}** instruction-set path "
            f"(kernel build `{row.get('native_build')}`)"
            + (
                f"; the int8 convolution kernels on the **{row['conv_isa']}** path."
                if row.get("conv_isa")
                else "."
            )
        )
    return row, sense


def byte_time_ui(row: dict[str, Any]) -> None:
    """How to read the table's measured-against-bytes columns, with the row's read rate."""
    rate = row.get("read_rate") or {}
    st.caption(
        f"**Why is a layer slower than its bytes?** *ms per call* is the layer's measured time "
        f"in one call of the **{row.get('latency_workload') or 'primary'}** workload (median of "
        f"the profiled runs). *ms predicted from bytes* is the time this machine takes to "
        f"stream its *bytes per call* (weights as stored with their scales, zero points and "
        f"bias, plus the activations it reads and writes at that workload's shape) at "
        f"**{rate.get('bytes_per_s', 0) / 1e9:.1f} GB/s**, the streaming read rate measured "
        f"when this row was ({rate.get('method')}, {rate.get('buffer_bytes', 0) / 2**20:g} MiB, "
        f"{rate.get('threads')} threads). A ratio up to {BYTES_BOUND_RATIO:g} means the layer "
        f"is **bound by bytes**: fewer bits make it faster. Well above that with few "
        f"multiply-adds per byte (a decode step), the time goes into **overhead**: a fixed cost "
        f"per call (Python and dispatch, quantizing activations, allocating outputs) or a "
        f"kernel that reads its bytes slower than a plain streaming read. Fewer bytes do not "
        f"cut it: that is how an int8 layer ends up slower than float. With "
        f"{COMPUTE_MACS_PER_BYTE:g} or more multiply-adds per byte (prefill, convolutions) it is "
        f"**compute-bound**. Below {CACHE_RATIO:g} its bytes came **from cache**, faster than "
        f"memory streams them (a model that fits in the last-level cache)."
    )


def sensitivity_ui(ctx: Any) -> None:
    """The per-layer sensitivity heat map: shown when measured before, else a Measure button."""
    st.subheader("Which layers are sensitive?")
    st.caption(
        "Each cell quantizes *one* layer alone at one setting while every other layer stays "
        "float, and measures the damage on calibration data: red cells are layers that lose the "
        "most accuracy (or fidelity) at that setting; grey cells are settings that do not fit "
        "the layer."
    )
    sens_cols = st.columns([3, 1, 1], vertical_alignment="bottom")
    settings = sens_cols[0].multiselect(
        "Settings", SETTING_CHOICES, default=list(DEFAULT_SETTINGS), key="layers.sens.settings"
    )
    samples = sens_cols[1].select_slider(
        "Samples",
        (64, 128, 256, 512),
        value=256,
        key="layers.sens.samples",
        help="Calibration samples the damage is measured on: more is steadier, and slower.",
    )
    sens_dir = state.run_dir() / "sensitivity"
    table = cached_sensitivity(ctx, settings, sens_dir, samples=samples) if settings else None
    if table is None and sens_cols[2].button(
        "Measure", key="layers.sens.run", disabled=not settings, icon=":material/grid_on:"
    ):
        with st.status("Quantizing each layer alone at each setting …", expanded=True) as status:
            bar = st.progress(0.0)

            def progress(done: int, total: int, text: str) -> None:
                bar.progress(min(1.0, done / max(total, 1)), text=text)

            try:
                table = load_or_measure_sensitivity(
                    ctx, settings, sens_dir, samples=samples, progress=progress
                )
                status.update(label=f"Measured in {table['seconds']:.1f} s", state="complete")
            except (ExplorerError, ValueError) as exc:
                status.update(label="Sensitivity could not be measured", state="error")
                st.error(str(exc))
    if table is not None:
        value_name = value_picker_ui(
            "Colour by", SENSITIVITY_LABELS, "metric_drop", key="layers.sens.value"
        )
        st.plotly_chart(sensitivity_heatmap(table, value=value_name), key="layers.heatmap")


def whatif_ui(source: Any, ctx: Any, row: dict[str, Any], sense: str) -> dict[str, Any] | None:
    """Change one layer's setting and evaluate again (or find the stored row); shows the new
    row against ``row``. Returns the last what-if result of this page, if any."""
    st.subheader("What if one layer changed?")
    st.caption(
        "Pick a layer and a new setting: this configuration is evaluated again with only that "
        "layer changed. The float reference, the calibration statistics and the kernel choices "
        "are reused; if this exact configuration was evaluated before, its stored row is shown "
        "at once."
    )
    layer_names = list(quantizable_layers(ctx.folded))
    current = {lay.get("name"): lay.get("config") or "fp32" for lay in row.get("layers") or []}
    w_cols = st.columns([2, 2, 1], vertical_alignment="bottom")
    layer = w_cols[0].selectbox(
        "Layer",
        layer_names,
        format_func=lambda n: f"{n} (now {current.get(n, '?')})",
        key="layers.whatif.layer",
    )
    setting = w_cols[1].selectbox(
        "New setting",
        SETTING_CHOICES,
        key="layers.whatif.setting",
        help="A setting ending in gptq or awq quantizes the layer with that post-training "
        "algorithm (linear layers only, calibrated on the calibration data) instead of rounding "
        "to nearest; smoothquant needs 8-bit activations.",
    )
    if w_cols[2].button("Re-evaluate", key="layers.whatif.run", icon=":material/replay:"):
        with st.status(f"Evaluating with {layer} at {setting} …") as status:
            try:
                new = evaluate_whatif(
                    ctx,
                    row,
                    layer,
                    setting,
                    state.store(),
                    state.owner_for(source),
                    settings_for_row(ctx, row, candidates=(DEFAULT_RUN,)),
                )
                st.session_state[WHATIF] = {"from": row["key"], "row": new}
                status.update(
                    label="Found in the store" if new["reused"] else "Evaluated and stored",
                    state="complete",
                )
            except (ExplorerError, ValueError) as exc:
                status.update(label="Cannot evaluate that change", state="error")
                st.error(str(exc))

    result = st.session_state.get(WHATIF)
    if result is not None and result["from"] == row["key"]:
        new = result["row"]
        st.markdown(f"**{new.get('label')}** — against **{row.get('label')}**:")
        headline_ui(change_headline(row, new, sense))
        algorithms, calibrate = algorithm_summary(new), calibration_seconds(new)
        if algorithms and calibrate is not None:
            st.caption(
                f"Layers by PTQ algorithm: {algorithms}; calibration took {calibrate:.1f} s."
            )
        changes = pd.DataFrame(layer_changes(row, new))
        if not changes.empty:
            st.dataframe(changes, hide_index=True, key="layers.whatif.changes")
        if st.button("Show this configuration", key="layers.whatif.select"):
            state.select_row(new["key"])
            st.rerun()
    return result


def compare_ui(rows: list[dict[str, Any]], key: str, result: dict[str, Any] | None) -> None:
    """Two configurations side by side: A opens on ``key``, B on the what-if result (if it is
    stored) or another row."""
    st.subheader("Two configurations side by side")
    by_key = {row["key"]: row for row in rows}
    keys = list(by_key)
    if len(keys) < 2:
        st.info("Compare needs at least two evaluated configurations.")
        return
    labels = row_labels(rows)
    if st.session_state.get(COMPARE_A) not in by_key:
        st.session_state[COMPARE_A] = key
    if st.session_state.get(COMPARE_B) not in by_key:
        fresh = result["row"]["key"] if result and result["row"]["key"] in by_key else None
        st.session_state[COMPARE_B] = fresh or next(k for k in keys if k != key)
    c_cols = st.columns(2)
    key_a = c_cols[0].selectbox("A", keys, format_func=labels.__getitem__, key=COMPARE_A)
    key_b = c_cols[1].selectbox("B", keys, format_func=labels.__getitem__, key=COMPARE_B)
    row_a, row_b = by_key[key_a], by_key[key_b]
    st.dataframe(
        pd.DataFrame(compare_rows(row_a, row_b)), hide_index=True, key="layers.compare.table"
    )
    compared = value_picker_ui(
        "Compare", LAYER_CHART_LABELS, "output_sqnr_db", key="layers.compare.value"
    )
    st.plotly_chart(
        compare_layers_figure(row_a, row_b, value=compared), key="layers.compare.figure"
    )


def main() -> None:
    st.title("Layers")
    st.caption(
        "One configuration, layer by layer: which setting and kernel each layer got, how "
        "faithful its weights and outputs stay to float (SQNR, in dB: every 6 dB is about one "
        "more bit of precision), how much of the model's time it takes and how many bytes it "
        "stores."
    )
    source, ctx, rows = rows_or_stop(
        ", then pick a configuration here or click a point on the Pareto page."
    )
    row, sense = configuration_ui(rows, ctx)
    sensitivity_ui(ctx)
    result = whatif_ui(source, ctx, row, sense)
    compare_ui(rows, row["key"], result)


main()
