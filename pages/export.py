"""Export: download a chosen configuration as its plan (JSON), its quantized weights
(safetensors), a Python snippet that reapplies it, and the Pareto plot as HTML; a row measured in
ONNX Runtime also offers the measured ``model.onnx`` and a script that runs it."""

from __future__ import annotations

from typing import Any

import streamlit as st

from explorer.bundle import export_bundle, plan_json, row_snippet, target_bundle, zip_bundle
from explorer.errors import ExplorerError
from explorer.export import WEIGHTS_FILE
from explorer.measure.display import format_metric
from explorer.plots import pareto_figure, to_html
from explorer.ui import state
from explorer.ui.rows import row_labels, row_picker_ui

ROW_BOX = "export.row"
BUNDLES = "export.bundles"  # {row key: {file name: bytes}}, this session's built exports


def row_ui(rows: list[dict[str, Any]]) -> dict[str, Any]:
    selected = state.selected_row_key()
    if selected not in {r["key"] for r in rows}:
        quantized = [r["key"] for r in rows if r.get("kind") != "baseline"]
        selected = quantized[-1] if quantized else rows[-1]["key"]
    key = row_picker_ui(
        rows,
        selected,
        box=ROW_BOX,
        label="Configuration",
        help="The row selected on the Pareto or Layers page, or any other stored result.",
    )
    return next(r for r in rows if r["key"] == key)


def summary_ui(row: dict[str, Any]) -> None:
    metric = row.get("metric_name")
    value = (row.get("metrics") or {}).get(metric) if metric else None
    a, b, c = st.columns(3)
    size = row.get("size_bytes")
    a.metric("Size as stored", format_metric("size_bytes", size))
    if metric and isinstance(value, int | float):
        b.metric(metric.capitalize(), format_metric(metric, value))
    latency = row.get("latency_ms")
    if isinstance(latency, int | float):
        kind = row.get("latency_kind") or "measured"
        c.metric(f"Latency ({kind})", format_metric("latency_ms", latency))


def _bundle(ctx: Any, row: dict[str, Any]) -> dict[str, bytes]:
    """This session's export of ``row``: built once (quantized or QAT-trained, then written)."""
    bundles: dict[str, dict[str, bytes]] = st.session_state.setdefault(BUNDLES, {})
    if row["key"] not in bundles:
        folder = state.run_dir() / "exports" / row["key"][:16]
        what = (
            "Training (QAT) and exporting" if row.get("qat_steps") else "Quantizing and exporting"
        )
        with st.spinner(f"{what} {row.get('label') or 'the configuration'} …"):
            bundles[row["key"]] = export_bundle(ctx, row, folder)
    return bundles[row["key"]]


def runtime_files_ui(ctx: Any, row: dict[str, Any]) -> None:
    """The file the row's runtime measured (``model.onnx`` for ONNX Runtime) and its script."""
    target = row.get("target")
    st.subheader(f"The measured {target} model")
    bundles: dict[str, dict[str, bytes]] = st.session_state.setdefault(BUNDLES, {})
    key = f"{row['key']}.{target}"
    try:
        if key not in bundles:
            folder = state.run_dir() / "exports" / f"{row['key'][:16]}-{target}"
            with st.spinner(f"Building the {target} model …"):
                bundles[key] = target_bundle(ctx, row, folder)
    except (ExplorerError, ValueError) as exc:
        st.error(f"Could not build the {target} model: {exc}")
        return
    files = bundles[key]
    for i, (name, data) in enumerate(files.items()):
        st.download_button(
            f"Download {name} ({len(data) / 1024:,.1f} KiB)",
            data,
            file_name=name,
            mime="text/x-python" if name.endswith(".py") else "application/octet-stream",
            key=f"export.runtime.{i}",
        )
    if files:
        st.caption(
            "This configuration's latency and accuracy were measured by running exactly this "
            "file in the runtime, with the same weights as the explorer's quantized model. The "
            "script runs it with the measured settings: `python run_onnx.py inputs.npy "
            "labels.npy` prints the accuracy (or perplexity)."
        )


def main() -> None:
    st.title("Export")
    st.caption(
        "Take a configuration with you: its plan, the quantized weights exactly as they were "
        "measured (packed integer codes, scales and zero points), a Python snippet that loads "
        "them or reapplies the plan, and the Pareto plot."
    )
    try:
        ctx = state.context()
        rows = state.rows_for()
    except (ExplorerError, ValueError) as exc:
        st.error(f"Could not load the model or its results: {exc}")
        return
    if not rows:
        st.info(
            "No results for this model yet: run a sweep on the **Model** or **Sweep** page, "
            "then come back to export a configuration."
        )
        return
    row = row_ui(rows)
    shown = row_labels(rows)[row["key"]]  # as the select box shows it
    summary_ui(row)
    name = (row.get("label") or "plan").replace(" ", "-").replace("/", "-")

    st.subheader("Plan")
    st.caption(
        "The per-layer quantization plan as JSON, with its QAT budget: "
        "`explorer export --plan plan.json --model …` rebuilds the model from it."
    )
    try:
        plan_bytes = plan_json(row)
        snippet = row_snippet(ctx, row)
    except (ExplorerError, ValueError) as exc:
        st.error(f"This row cannot be exported: {exc}")
        return
    st.download_button(
        "Download the plan (JSON)",
        plan_bytes,
        file_name=f"plan-{name}.json",
        mime="application/json",
        key="export.plan",
    )

    st.subheader("Quantized weights")
    try:
        files = _bundle(ctx, row)
    except (ExplorerError, ValueError) as exc:
        st.error(f"Could not build the quantized model: {exc}")
        files = None
    if files is not None:
        left, right = st.columns(2)
        # The label names the row: while a rerun for a newly chosen row builds its export, the
        # previous row's button stays on the page and still serves the previous weights. In
        # backticks, since a label is Markdown and a row's label may hold a glob (`features.*`).
        left.download_button(
            f"Download the weights of `{shown}` "
            f"({len(files[WEIGHTS_FILE]) / 1024:,.1f} KiB safetensors)",
            files[WEIGHTS_FILE],
            file_name=WEIGHTS_FILE,
            mime="application/octet-stream",
            key="export.weights",
        )
        right.download_button(
            "Download the whole export (zip)",
            zip_bundle(files, folder=f"export-{name}"),
            file_name=f"export-{name}.zip",
            mime="application/zip",
            key="export.zip",
        )
        st.caption(
            "The safetensors file holds exactly the stored tensors (nothing executable) and "
            "carries its plan in its metadata, so `load_export(float_model, 'model.safetensors')` "
            "rebuilds the quantized model on its own (that metadata is why the file is a little "
            "larger than the size as stored). The zip adds plan.json, reapply.py and a README."
        )

    if (row.get("target") or "native") != "native":
        runtime_files_ui(ctx, row)

    st.subheader("Python snippet")
    st.caption(
        "Put it next to the exported files: (a) loads the export bit for bit, (b) quantizes the "
        "float model afresh with the same plan."
    )
    st.download_button(
        "Download reapply.py",
        snippet.encode(),
        file_name="reapply.py",
        mime="text/x-python",
        key="export.snippet",
    )
    st.code(snippet, language="python")

    st.subheader("Pareto plot")
    try:
        figure = pareto_figure(rows, selected_key=row["key"])
        html = to_html(figure)
    except (ExplorerError, ValueError) as exc:
        st.error(f"Could not draw the Pareto plot: {exc}")
        return
    st.download_button(
        "Download the Pareto plot (HTML, opens offline)",
        html.encode(),
        file_name=f"pareto-{ctx.name}.html",
        mime="text/html",
        key="export.pareto",
    )
    st.caption("For a PNG, use the camera button in the plot's toolbar (top right of the chart).")
    with st.expander("Show the plot"):
        st.plotly_chart(figure, key="export.figure")


main()
