"""Sweep: pick the dimensions and the layers, run them in a worker process, watch the front
grow, cancel at will; finished rows stay in the results store and download as CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from explorer.errors import ExplorerError
from explorer.inspect import layer_table, result_table
from explorer.sweep.runner import RunSettings
from explorer.sweep.space import SweepSpec, SweepSpecError, expand
from explorer.ui import state
from explorer.ui.tables import results_frame
from explorer.ui.widgets import (
    run_settings_ui,
    start_sweep,
    sweep_job_ui,
    sweep_spec_ui,
    targets_ui,
)


def settings_ui(ctx: Any) -> tuple[SweepSpec | None, RunSettings | None, int, list[str]]:
    """The sweep's dimensions and layers and its run settings, with how many configurations
    they give and which combinations are skipped (and why), and the targets they run on.
    Returns the spec and settings (None where invalid), the configuration count without the
    baselines, and the targets."""
    layers = [r["name"] for r in layer_table(ctx.model) if r["quantizable"]]
    spec = settings = None
    try:
        spec = sweep_spec_ui(layers, qat_lr=ctx.qat_lr)
    except SweepSpecError as exc:
        st.error(f"These settings cannot be swept: {exc}")
    targets = targets_ui(ctx.model)
    try:
        settings = run_settings_ui()
    except ExplorerError as exc:
        st.error(f"Invalid run settings: {exc}")
    if spec is None:
        return spec, settings, 0, targets
    try:
        entries, skipped = expand(spec, ctx.model)
    except (ExplorerError, ValueError) as exc:
        st.error(f"These settings cannot be swept: {exc}")
        return None, settings, 0, targets
    count = len(entries) - 2  # the fp32 and bf16 baselines are always evaluated
    st.caption(
        f"{count} configuration{'s' if count != 1 else ''} plus the fp32 and bf16 baselines; "
        "rows already in the results store are reused, not recomputed."
        + (f" Each runs on {len(targets)} targets." if len(targets) > 1 else "")
    )
    if skipped:
        with st.expander(f"{len(skipped)} combination(s) will be skipped"):
            for item in skipped:
                st.markdown(f"- `{item.label}`: {item.reason}")
    if count == 0:
        st.warning("No combination can be evaluated with these settings; see why above.")
    return spec, settings, count, targets


def run_ui(
    source: Any,
    metric: str | None,
    spec: SweepSpec | None,
    settings: RunSettings | None,
    count: int,
    targets: list[str],
) -> None:
    """The Run button (off while a sweep of this session runs) and the latest sweep's progress
    (its front drawn with ``metric``)."""
    job = state.job()
    running = job is not None and not job.finished
    if st.button(
        "Run sweep",
        type="primary",
        disabled=spec is None or settings is None or count == 0 or running,
        key="sweep.run",
        icon=":material/play_arrow:",
    ):
        try:
            start_sweep(source, spec, settings, targets=targets)
        except RuntimeError as exc:
            st.error(str(exc))
        else:
            st.rerun()  # draw the page again with the sweep running (Run disabled)
    elif running:
        st.caption("A sweep is running in this session: cancel it or wait for it to finish.")
    if job is not None:
        st.subheader("Latest sweep")
        if job.source != source:
            st.caption("This sweep is of another model than the one chosen now.")
        sweep_job_ui(job, metric=metric, key="sweep.job")


def results_ui(source: Any, ctx: Any) -> None:
    """The model's stored rows as a table, and as CSV to download."""
    st.subheader("Results")
    try:
        rows = state.rows_for(source)
    except ExplorerError as exc:
        st.error(f"The results store cannot be read: {exc}")
        rows = []
    if not rows:
        st.info("No results for this model yet: run a sweep.")
        return
    table = result_table(rows, ctx.metric)
    st.caption(
        f"{len(rows)} stored rows of this model. *On the front*: no other row is both smaller "
        "and at least as good. A *simulated* latency is an upper bound: layers without a real "
        "kernel at that bit width were timed on the next wider one."
    )
    st.dataframe(
        results_frame(table),
        hide_index=True,
        column_config={
            "size KiB": st.column_config.NumberColumn(format="%.1f"),
            "bits/weight": st.column_config.NumberColumn(format="%.2f"),
            "latency ms": st.column_config.NumberColumn(format="%.3f"),
            "calibration s": st.column_config.NumberColumn(
                format="%.1f",
                help="What PTQ costs before deployment: input statistics, the PTQ algorithm "
                "(GPTQ, AWQ, SmoothQuant) and static activation ranges. Round-to-nearest of the "
                "weights alone needs no calibration.",
            ),
            "QAT training s": st.column_config.NumberColumn(
                format="%.1f",
                help="What QAT costs before deployment: preparing, training for its step "
                "budget and converting to the stored format.",
            ),
        },
        key="sweep.results",
    )
    try:
        csv_text = state.store().to_csv_text(rows)
    except ExplorerError as exc:
        st.error(f"The results cannot be exported: {exc}")
    else:
        st.download_button(
            "Download CSV",
            data=csv_text,
            file_name=f"{Path(ctx.name).name}-results.csv",
            mime="text/csv",
            key="sweep.csv",
            icon=":material/download:",
        )


def main() -> None:
    st.title("Sweep")
    st.caption(
        "Choose the settings to try. Every combination of the values you pick is quantized, "
        "evaluated against the float model and timed on real integer kernels, one after the "
        "other in the background; you can keep using the app while it runs."
    )
    source = state.current_source()
    try:
        ctx = state.context(source)
    except (ExplorerError, ValueError, OSError) as exc:
        st.error(f"The model cannot be loaded: {exc}. Choose another one on the Model page.")
        st.stop()
    st.markdown(f"Model: **{Path(ctx.name).name}** ({ctx.task}).")
    spec, settings, count, targets = settings_ui(ctx)
    run_ui(source, ctx.metric, spec, settings, count, targets)
    results_ui(source, ctx)


main()
