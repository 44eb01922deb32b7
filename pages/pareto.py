"""Pareto: every stored configuration of the model as a point of quality against size, against
latency and in three axes; clicking a point (or choosing it below) opens its layer view. The page
opens on quality against size in the newcomer's view (`pareto_figure(..., explain=True)`): the
front stands out, the float line and the bit-width cliff are named in words."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from explorer.errors import ExplorerError
from explorer.inspect import result_table
from explorer.plots import (
    deployed_figure,
    float_metric,
    latency_axis,
    metric_of,
    pareto_3d_figure,
    pareto_figure,
    selected_keys,
    series_of,
    setting_figure,
)
from explorer.sweep.context import ModelContext
from explorer.sweep.references import (
    faster_whisper_rows,
    faster_whisper_support,
    reference_settings,
    stored_faster_whisper_rows,
)
from explorer.ui import state
from explorer.ui.labels import row_headline
from explorer.ui.rows import headline_ui, row_picker_ui, rows_or_stop

ROW_BOX = "pareto.row"
AUTO_OPEN = "pareto.auto_open"
OPEN_LAYERS = "pareto.open_layers"
CHARTS = ("pareto.size", "pareto.latency", "pareto.formats")
TABLE = "pareto.table"
LAYERS_PAGE = "pages/layers.py"
REFERENCE_BUTTON = "pareto.faster_whisper"


def _select(key: str | None, *, open_layers: bool) -> None:
    if key:
        state.select_row(key)
        if open_layers and st.session_state.get(AUTO_OPEN, True):
            st.session_state[OPEN_LAYERS] = True


def _on_chart_select(chart: str) -> None:
    """A click on a point: select its row (and open its layer view if the toggle says so)."""
    keys = selected_keys(st.session_state.get(chart))
    _select(keys[0] if keys else None, open_layers=True)


def _on_table_select(keys: list[str]) -> None:
    chosen = st.session_state[TABLE].selection.rows
    _select(keys[chosen[0]] if chosen else None, open_layers=False)


def _at_workload(row: dict[str, Any], workload: str) -> dict[str, Any]:
    timing = (row.get("latency") or {}).get(workload)
    if not isinstance(timing, dict):
        return {**row, "latency_ms": None}
    return {
        **row,
        "latency_ms": timing.get("median_ms"),
        "latency_kind": timing.get("kind", row.get("latency_kind")),
        "latency_workload": workload,
    }


def _filter(label: str, options: list[Any], *, key: str, help: str) -> list[Any]:
    """A multiselect that remembers what the user *hid*, so that options appearing later (a
    sweep adds a series) are shown rather than filtered out."""
    hidden = st.session_state.setdefault(f"{key}.hidden", [])
    st.session_state[key] = [o for o in options if o not in hidden]

    def changed() -> None:
        st.session_state[f"{key}.hidden"] = [o for o in options if o not in st.session_state[key]]

    return st.multiselect(label, options, key=key, on_change=changed, help=help)


def _open_layers() -> None:
    # switch_page clears the URL's query parameters unless given: keep this session's run id
    st.switch_page(LAYERS_PAGE, query_params={"run": state.run_id()})


def intro_ui() -> None:
    st.title("Pareto fronts")
    st.markdown(
        "Each point is one way of quantizing the model, measured on this machine. The **front** "
        "(the ringed points joined by the line) is the best quality you can get at each size: "
        "every other point is beaten by one on the front."
    )
    with st.expander("How to read these plots"):
        st.caption(
            "A point on the **front** is one that no other point beats on both axes at once: "
            "nothing else is both smaller (or faster) and more accurate; on the size plot the "
            "points off the front are drawn faint. The dashed line is the float model. **Hollow** "
            "markers are *simulated* latencies: that configuration has no real kernel here, so it "
            "was timed on the next wider one (an upper bound). **Bars** are 95 % confidence "
            "intervals from resampling the evaluation set; **arrows** lead from a post-training "
            "(PTQ) point to the same configuration after quantization-aware training (QAT). "
            "Colours and marker shapes tell how a point was made: post-training quantization by "
            "its algorithm (RTN rounds to nearest; GPTQ and AWQ compensate the rounding error "
            "using calibration data) or QAT; the fp32 and bf16 baselines are marked for "
            "reference. Hover over a point to see its configuration and what it cost to "
            "calibrate or train; click it to open its layers."
        )


def filters_ui(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
    """Series, weight-bit and workload filters. Returns the rows shown and the workload whose
    latency the latency axis plots (None without timings); stops the page when none is shown."""
    series = list(dict.fromkeys(series_of(row) for row in rows))
    bits = sorted({row["weight_bits"] for row in rows if isinstance(row.get("weight_bits"), int)})
    workloads = list(dict.fromkeys(w for row in rows for w in (row.get("latency") or {})))
    left, middle, right = st.columns([2, 2, 1])
    with left:
        shown_series = _filter(
            "Series",
            series,
            key="pareto.series",
            help="How each configuration was produced: post-training quantization (PTQ) by "
            "its algorithm (round to nearest, GPTQ, AWQ, SmoothQuant), quantization-aware "
            "training (QAT), or a mixed per-layer plan; the baselines are fp32 and bf16.",
        )
    with middle:
        shown_bits = _filter(
            "Weight bits",
            bits,
            key="pareto.bits",
            help="Baselines and mixed-precision plans are always shown.",
        )
    with right:
        workload = (
            st.radio(
                "Latency of",
                workloads,
                key="pareto.workload",
                help="The workload whose time the latency axis shows (one sample, a batch, ...).",
            )
            if len(workloads) > 1
            else (workloads[0] if workloads else None)
        )
        st.toggle(
            "Click opens layers",
            value=True,
            key=AUTO_OPEN,
            help="Clicking a point opens its per-layer view; off: it only selects the point.",
        )
    visible = [
        row
        for row in rows
        if series_of(row) in shown_series
        and (not isinstance(row.get("weight_bits"), int) or row["weight_bits"] in shown_bits)
    ]
    if not visible:
        st.warning("No configuration matches these filters.")
        st.stop()
    return visible, workload


def references_ui(ctx: ModelContext, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """faster-whisper beside a built-in Whisper's rows (`explorer.sweep.references`): its
    stored points, or a button that measures them; why not, where it cannot run. Returns the
    reference rows to draw."""
    if ctx.task != "speech":
        return []
    reason = faster_whisper_support(ctx)
    if reason:
        st.caption(f"No faster-whisper points: {reason}.")
        return []
    threads, settings = reference_settings(rows)
    found = stored_faster_whisper_rows(ctx, threads=threads, settings=settings)
    if found is None and st.button(
        "Measure faster-whisper (float32 and int8) on the same audio",
        key=REFERENCE_BUTTON,
        icon=":material/compare_arrows:",
        help="Transcribes the evaluated utterances with faster-whisper (CTranslate2) at "
        f"compute_type float32 and int8 with {threads} threads and times the same 10 s clip; "
        "kept in the cache, so it runs once.",
    ):
        with st.status("Transcribing with faster-whisper …", expanded=True) as status:
            bar = st.progress(0.0, text="starting …")

            def progress(done: int, total: int, text: str) -> None:
                bar.progress(min(1.0, done / max(total, 1)), text=text)

            try:
                found = faster_whisper_rows(
                    ctx, threads=threads, settings=settings, progress=progress
                )
                status.update(label="faster-whisper measured", state="complete", expanded=False)
            except ExplorerError as exc:
                status.update(label="faster-whisper could not run", state="error")
                st.error(f"Cannot run faster-whisper: {exc}")
    if found:
        st.caption(
            "Black crosses: **faster-whisper** (CTranslate2, the runtime voice-note apps ship) "
            f"on the same utterances with {threads} threads, float32 and int8 — reference "
            "points, never on the front; bars: the interval of the difference from the "
            "explorer's float model."
        )
    return found or []


def plots_ui(
    visible: list[dict[str, Any]],
    workload: str | None,
    selected: str | None,
    ctx: ModelContext,
) -> None:
    """The four views of the shown rows: quality against size (the newcomer's view), against
    latency (a speech model's real-time factor, with faster-whisper beside it), in three axes,
    and by storage format."""
    timed = [_at_workload(row, workload) for row in visible] if workload else visible
    speed = latency_axis(timed, workload)
    try:
        size_tab, latency_tab, three_tab, formats_tab, deployed_tab = st.tabs(
            [
                "Quality vs size",
                "Quality vs latency",
                "Three axes",
                "Algorithms by format",
                "Deployed vs explorer",
            ]
        )
        with size_tab:
            st.plotly_chart(
                pareto_figure(visible, x="size_bytes", selected_key=selected, explain=True),
                key=CHARTS[0],
                on_select=lambda: _on_chart_select(CHARTS[0]),
                selection_mode="points",
            )
        with latency_tab:
            references = references_ui(ctx, visible)
            st.plotly_chart(
                pareto_figure(timed, x=speed, selected_key=selected, references=references),
                key=CHARTS[1],
                on_select=lambda: _on_chart_select(CHARTS[1]),
                selection_mode="points",
            )
            if workload:
                st.caption(
                    f"Latency of the **{workload}** workload: median of repeated timed runs."
                )
        with three_tab:
            st.plotly_chart(
                pareto_3d_figure(timed, selected_key=selected, latency=speed), key="pareto.3d"
            )
            st.caption(
                "Size, latency and quality at once: drag to turn the view. A configuration can "
                "be on this three-way front while missing both flat ones."
            )
        with formats_tab:
            st.plotly_chart(
                setting_figure(visible, selected_key=selected),
                key=CHARTS[2],
                on_select=lambda: _on_chart_select(CHARTS[2]),
                selection_mode="points",
            )
            st.caption(
                "Configurations that store weights in the same format have the same size, so on "
                "the size plot they share one x. Here each format is one column and the ways of "
                "reaching it (round to nearest, GPTQ, AWQ, QAT) stand side by side."
            )
        with deployed_tab:
            st.plotly_chart(deployed_figure(visible, workload), key="pareto.deployed")
            st.caption(
                "Each configuration measured both by the explorer's own kernels and in a "
                "deployment runtime (sweep with a target such as ONNX Runtime): the runtime's "
                "latency against the explorer's. Below the dashed diagonal the runtime is faster "
                "than our kernels suggest: what users will see after deployment."
            )
    except (ExplorerError, ValueError) as exc:
        st.error(f"Cannot draw these results: {exc}")


def configuration_ui(rows: list[dict[str, Any]], selected: str | None) -> None:
    """Pick a configuration (or see the clicked one) with its headline numbers and a button to
    its layer view."""
    st.subheader("Configurations")
    choice, go = st.columns([3, 1], vertical_alignment="bottom")
    with choice:
        picked = row_picker_ui(
            rows,
            selected,
            box=ROW_BOX,
            label="Selected configuration",
            placeholder="Choose a configuration (or click a point)",
        )
    with go:
        if st.button(
            "Open layers", key="pareto.open", disabled=picked is None, icon=":material/layers:"
        ):
            _open_layers()
    if picked is not None:
        metric_path, sense = metric_of(rows)
        row = next(r for r in rows if r["key"] == picked)
        headline_ui(row_headline(row, metric_path.split(".", 1)[-1], float_metric(rows), sense))


def table_ui(rows: list[dict[str, Any]]) -> None:
    """Every row in a table; clicking a table row selects it."""
    keys = [row["key"] for row in rows]
    table = pd.DataFrame(result_table(rows))
    st.dataframe(
        table.drop(columns=["key"]),
        hide_index=True,
        key=TABLE,
        on_select=lambda: _on_table_select(keys),
        selection_mode="single-row",
        column_config={
            "size_kib": st.column_config.NumberColumn("size (KiB)", format="%.1f"),
            "calibrate_s": st.column_config.NumberColumn(
                "calibration (s)",
                format="%.1f",
                help="PTQ: input statistics, the algorithm (GPTQ, AWQ, SmoothQuant) and "
                "activation ranges.",
            ),
            "train_s": st.column_config.NumberColumn(
                "QAT training (s)", format="%.1f", help="QAT: prepare, train, convert."
            ),
            "latency_ms": st.column_config.NumberColumn("latency (ms)", format="%.3f"),
            "bits_per_weight": st.column_config.NumberColumn("bits/weight", format="%.2f"),
            "value": st.column_config.NumberColumn("value", format="%.4f"),
            "ci_lo": st.column_config.NumberColumn("Δ 95% lo", format="%.4f"),
            "ci_hi": st.column_config.NumberColumn("Δ 95% hi", format="%.4f"),
        },
    )
    st.caption(
        "Click a table row to select it. `pareto`: on the size-against-quality front. The "
        "interval columns are the 95 % interval of the change against float (of the SQNR itself "
        "for models without labels)."
    )


def main() -> None:
    if st.session_state.pop(OPEN_LAYERS, False):
        _open_layers()
    intro_ui()
    _, ctx, rows = rows_or_stop(": its points appear here as each configuration finishes.")
    selected = state.selected_row_key()
    if selected not in {row["key"] for row in rows}:
        selected = None
    visible, workload = filters_ui(rows)
    plots_ui(visible, workload, selected, ctx)
    configuration_ui(rows, selected)
    table_ui(rows)


main()
