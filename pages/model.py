"""Model: choose a built-in model or load your own, see its layers and float metric; the first
open of the default model starts the default sweep (`explorer.sweep.default`) whose points
appear as they finish; "Start here" walks a newcomer through the pages (`explorer.guide`).

The title and the model picker are drawn first, from modules that import neither torch nor
pandas; the functions that draw the rest import them when they run. Streamlit sends each element
as it is drawn, so on the first run after ``streamlit run`` the picker is usable while torch loads
and the model opens (issue 5: the first page is interactive within 5 s on a 2-core machine).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

from explorer.errors import ExplorerError
from explorer.guide import GUIDE, GUIDE_TITLE
from explorer.models.catalog import BUILTIN_NAMES, DEFAULT_MODEL, ModelSource
from explorer.ui import state

if TYPE_CHECKING:
    from explorer.sweep.context import ModelContext
    from explorer.sweep.space import PlanEntry

AUTO_SWEEP = "auto_sweep_started"
FLASH = "model.flash"
GUIDE_OPEN = "model.guide_open"


def _choose_builtin() -> None:
    state.set_source(ModelSource(model=st.session_state["model.builtin"]))


def _start_default_sweep(source: ModelSource, entries: list[PlanEntry]) -> None:
    from explorer.sweep.default import DEFAULT_RUN
    from explorer.ui.widgets import start_sweep

    try:
        start_sweep(source, entries, DEFAULT_RUN, id_prefix="default-")
    except RuntimeError as exc:  # another sweep of this run started meanwhile
        st.warning(str(exc))
    state.save_run_settings({AUTO_SWEEP: True})


def _job_running() -> bool:
    job = state.job()
    return job is not None and not job.finished


def _go(page: str) -> None:
    # switch_page clears the URL's query parameters unless given: keep this session's run id
    st.switch_page(page, query_params={"run": state.run_id()})


def guide_ui() -> None:
    """The five steps of `explorer.guide.GUIDE`, each with a button to its page; open on a
    run's first visit (before its default sweep started), folded afterwards."""
    if GUIDE_OPEN not in st.session_state:
        st.session_state[GUIDE_OPEN] = not state.run_settings().get(AUTO_SWEEP)
    with st.expander(GUIDE_TITLE, expanded=st.session_state[GUIDE_OPEN], icon=":material/flag:"):
        for number, step in enumerate(GUIDE, start=1):
            text, button = st.columns([5, 1], vertical_alignment="center")
            text.markdown(f"**{number} · {step.title}** — {step.do}  \n{step.see}")
            if number > 1 and button.button(
                f"Open {step.title}", key=f"model.guide.{step.title.lower()}"
            ):
                _go(step.page)


def picker_ui(source: ModelSource) -> str:
    """The built-in model picker (choosing one makes it the current model), and a button back
    to the plain built-in when uploads replaced its weights or data. Returns the name shown."""
    names = list(BUILTIN_NAMES)
    current_builtin = source.model if source.model in BUILTIN_NAMES else DEFAULT_MODEL
    chosen = st.selectbox(
        "Built-in model",
        names,
        index=names.index(current_builtin),
        key="model.builtin",
        on_change=_choose_builtin,
        help="Models that ship with their weights, data and a card of float results.",
    )
    plain = ModelSource(model=chosen)
    if source != plain and st.button(f"Use built-in {chosen}", key="model.use_builtin"):
        state.set_source(plain)
        st.rerun()
    return chosen


def card_ui(name: str) -> None:
    """A built-in's description and facts (task, parameters, the float metric of its card)."""
    from explorer.models.registry import builtin_models
    from explorer.ui.labels import model_facts

    spec = builtin_models()[name]
    st.markdown(spec.description)
    try:
        card = spec.card()
    except ExplorerError:
        card = {}
    params = card.get("params") or spec.params()
    st.caption(model_facts(spec.task, params, spec.metric, card.get("float")))


def upload_ui(source: ModelSource) -> None:
    """Weights for a built-in, a zipped Hugging Face model (or, where the operator allows, a
    directory on the server) and evaluation data; a checked upload becomes the current model."""
    from explorer.uploads import (
        MAX_UPLOAD_BYTES,
        SUFFIXES,
        check_context,
        error_message,
        load_upload,
        local_models_enabled,
        local_source,
    )

    with st.expander("Load your own model or data"):
        st.caption(
            f"Files up to {MAX_UPLOAD_BYTES // 1024**2} MB. They are read as data only "
            "(safetensors, no pickle), checked, and kept for this session's run; other sessions "
            "never see them."
        )
        weights_tab, hf_tab, data_tab = st.tabs(
            ["Weights for a built-in model", "Hugging Face model (zip)", "Evaluation data"]
        )
        request: tuple[str, UploadedFile, str | None] | None = None
        with weights_tab:
            architecture = st.selectbox(
                "Architecture", list(BUILTIN_NAMES), key="upload.architecture"
            )
            weights = st.file_uploader(
                "State dict (safetensors)",
                type=[s.lstrip(".") for s in SUFFIXES["weights"]],
                key="upload.weights",
            )
            if weights is not None and st.button("Load weights", key="upload.weights.load"):
                request = ("weights", weights, architecture)
        with hf_tab:
            st.caption(
                "Zip the folder that `save_pretrained` wrote: `config.json` and "
                "`model.safetensors`. Without uploaded data the model is compared with its float "
                "self on random tokens."
            )
            archive = st.file_uploader("Zipped model folder", type=["zip"], key="upload.hf")
            if archive is not None and st.button("Load model", key="upload.hf.load"):
                request = ("hf-zip", archive, None)
            if local_models_enabled():  # the operator's setting: the server's files are theirs
                st.caption("Or a directory on this server (enabled by the operator):")
                local_model = st.text_input("Model directory (absolute path)", key="local.model")
                local_data = st.text_input("Data file or folder (optional)", key="local.data")
                if local_model and st.button("Open local model", key="local.load"):
                    try:
                        with st.spinner("Checking the model …"):
                            local = local_source(local_model, local_data)
                            check_context(state.context(local))
                    except (ExplorerError, ValueError, OSError) as exc:
                        st.error(f"Could not open {local_model}: {exc}")
                    else:
                        state.set_source(local)
                        st.session_state[FLASH] = f"Opened {local_model}."
                        st.rerun()
        with data_tab:
            st.caption(
                "Evaluation and calibration data for the current model: safetensors or npz with "
                "`inputs` (and `labels`), CSV with a `label` column (or named text columns), "
                "UTF-8 text or JSONL with a `text` field, or a zipped image folder (one subfolder "
                "per class) for image classifiers. The first samples calibrate, the rest evaluate."
            )
            dataset = st.file_uploader(
                "Data file", type=[s.lstrip(".") for s in SUFFIXES["data"]], key="upload.data"
            )
            if dataset is not None and st.button("Use this data", key="upload.data.load"):
                request = ("data", dataset, None)
        if request is not None:
            kind, uploaded, arch = request
            try:
                with st.spinner("Checking the upload …"):
                    new_source, _ = load_upload(
                        kind,
                        uploaded.getvalue(),
                        uploaded.name,
                        state.run_dir(),
                        base=source,
                        architecture=arch,
                        open_fn=state.context,
                    )
            except (ExplorerError, ValueError, OSError) as exc:
                st.error(f"Could not use {uploaded.name}: {error_message(exc, state.run_dir())}")
            else:
                state.set_source(new_source)
                st.session_state[FLASH] = f"Loaded {uploaded.name}."
                st.rerun()


def current_model_ui(source: ModelSource) -> ModelContext:
    """The current model: what it is, its float metric, parameters, size, task and layers.
    Stops the page when it cannot be loaded."""
    from explorer.inspect import float_metric, layer_table
    from explorer.measure.display import format_metric
    from explorer.models.registry import builtin_models
    from explorer.ui.labels import describe_source
    from explorer.ui.tables import model_layers_frame

    st.subheader("Current model")
    st.markdown(f"Working on the {describe_source(source, BUILTIN_NAMES)}.")
    models = builtin_models()
    plain_builtin = source == ModelSource(model=source.model) and source.model in models
    try:
        ctx = state.context(source)
        card_float = models[source.model].card().get("float") if plain_builtin else None
        metric = (ctx.metric, card_float) if card_float is not None else float_metric(ctx)
    except (ExplorerError, ValueError, OSError) as exc:
        st.error(f"The model cannot be loaded: {exc}")
        st.stop()
    for warning in getattr(ctx, "warnings", ()):  # e.g. a head the checkpoint lacks, random
        st.warning(warning)

    table = layer_table(ctx.model)
    a, b, c = st.columns(3)
    if metric is None:
        a.metric("Float metric", "fidelity only")
        a.caption("No labels: configurations are compared with the float model's outputs.")
    else:
        name, value = metric
        a.metric(
            f"Float {name}",
            format_metric(name, value),
            help=f"The unquantized model on {len(ctx.eval_split[0]):,} evaluation samples.",
        )
    b.metric("Parameters", f"{sum(r['parameters'] for r in table):,}")
    c.metric("Float size", format_metric("size_bytes", sum(r["float_bytes"] for r in table)))

    task = ctx.task_summary()
    st.markdown(
        f"**Task:** {task['task']} ({task['how']}) · **Metric:** "
        f"{task['metric'] or 'fidelity only'}"
    )
    st.caption(f"Measured: {task['measures']}.")
    if task["tokenizer"]:
        st.caption(f"Tokenizer: {task['tokenizer']} (the model directory's own).")
    if task["data"]:
        st.caption(f"Evaluation data: {task['data']}.")
    st.dataframe(
        model_layers_frame(table),
        hide_index=True,
        column_config={"float KiB": st.column_config.NumberColumn(format="%.1f")},
        key="model.layers",
    )
    st.caption(
        "Quantizable layers (linear and convolution) are the ones a sweep can store in fewer "
        "bits; the others stay in float."
    )
    return ctx


def default_sweep_ui(source: ModelSource, ctx: ModelContext) -> None:
    """The default sweep: started once per run on the default model when the store lacks some
    of its rows, or by its button; its progress while it runs, the stored front afterwards."""
    from explorer.inspect import pending_entries, sweep_progress
    from explorer.sweep.default import DEFAULT_RUN, SUMMARY
    from explorer.ui.widgets import front_figure_ui, sweep_job_ui

    st.subheader("Default sweep")
    st.caption(SUMMARY)
    default_sweep = state.default_sweep(source)
    is_default = source == ModelSource(model=DEFAULT_MODEL)
    if is_default and not state.run_settings().get(AUTO_SWEEP) and not _job_running():
        # Once per run: start only if the store lacks some of the default sweep's rows.
        if pending_entries(ctx, default_sweep, DEFAULT_RUN, state.store()):
            _start_default_sweep(source, default_sweep)
        else:
            state.save_run_settings({AUTO_SWEEP: True})

    if st.button("Run default sweep", disabled=_job_running(), key="model.run_default"):
        _start_default_sweep(source, default_sweep)
        st.rerun()
    job = state.job()
    if job is not None and job.source == source and not job.finished:
        sweep_job_ui(job, metric=ctx.metric, key="model.job")
        return
    if job is not None and job.source == source:
        progress = sweep_progress(job.history)
        if progress.error:
            st.error(f"The last sweep stopped: {progress.error}")
    try:
        rows = state.rows_for(source)
    except ExplorerError as exc:
        st.error(f"The results store cannot be read: {exc}")
        rows = []
    if rows:
        front_figure_ui(rows, metric=ctx.metric, title="Stored results", key="model.front")
    elif job is not None and not job.finished:
        st.info("A sweep of another model is running; follow it on the Sweep page.")
    else:
        st.info("No results for this model yet: run the default sweep or pick your own.")


def main() -> None:
    st.title("Model")
    st.caption(
        "Pick the model to quantize. Everything on the other pages (sweeps, Pareto fronts, layer "
        "views) is computed on this machine for the model chosen here."
    )
    if FLASH in st.session_state:
        st.success(st.session_state.pop(FLASH))
    guide_ui()
    source = state.current_source()
    pick, card_col = st.columns([1, 2])
    with pick:
        chosen = picker_ui(source)
    # The functions below import torch (and pandas) only now that the picker is on screen.
    with card_col:
        card_ui(chosen)
    upload_ui(source)
    ctx = current_model_ui(source)
    default_sweep_ui(source, ctx)


main()
