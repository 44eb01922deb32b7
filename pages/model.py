"""Model: choose a built-in model or load your own, see its layers and float metric; the first
open of the default model starts the default sweep (`explorer.sweep.default`) whose points
appear as they finish; "Start here" walks a newcomer through the pages (`explorer.guide`).

The title and the model picker are drawn first, from modules that import neither torch nor
pandas; the rest of the page imports them afterwards. Streamlit sends each element as it is
drawn, so on the first run after ``streamlit run`` the picker is usable while torch loads and the
model opens (issue 5: the first page is interactive within 5 s on a 2-core machine).
"""

from __future__ import annotations

import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

from explorer.errors import ExplorerError
from explorer.guide import GUIDE, GUIDE_TITLE
from explorer.models.catalog import BUILTIN_NAMES, DEFAULT_MODEL, ModelSource
from explorer.ui import state

AUTO_SWEEP = "auto_sweep_started"
FLASH = "model.flash"
GUIDE_OPEN = "model.guide_open"


def _describe(source: ModelSource) -> str:
    if source.model in BUILTIN_NAMES and source.weights is None and source.data is None:
        return f"built-in **{source.model}**"
    parts = []
    if source.model in BUILTIN_NAMES:
        parts.append(f"built-in architecture **{source.model}**")
    elif source.model:
        parts.append("uploaded Hugging Face model")
    if source.weights:
        parts.append("uploaded weights")
    if source.data:
        parts.append("uploaded data")
    return ", ".join(parts)


def _choose_builtin() -> None:
    state.set_source(ModelSource(model=st.session_state["model.builtin"]))


def _start_default_sweep(source: ModelSource, entries: list[PlanEntry]) -> None:
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


st.title("Model")
st.caption(
    "Pick the model to quantize. Everything on the other pages (sweeps, Pareto fronts, layer "
    "views) is computed on this machine for the model chosen here."
)
if FLASH in st.session_state:
    st.success(st.session_state.pop(FLASH))
guide_ui()

source = state.current_source()
names = list(BUILTIN_NAMES)
current_builtin = source.model if source.model in BUILTIN_NAMES else DEFAULT_MODEL

# --- choose a built-in model ------------------------------------------------------------------
pick, card_col = st.columns([1, 2])
with pick:
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

# Everything below needs torch (and pandas), imported only now that the picker is on screen.
import pandas as pd  # noqa: E402

from explorer.inspect import float_metric, layer_table, pending_entries, sweep_progress  # noqa: E402
from explorer.models.registry import builtin_models  # noqa: E402
from explorer.sweep.default import DEFAULT_RUN, SUMMARY  # noqa: E402
from explorer.sweep.space import PlanEntry  # noqa: E402
from explorer.ui.widgets import front_figure_ui, start_sweep, sweep_job_ui  # noqa: E402
from explorer.uploads import (  # noqa: E402
    MAX_UPLOAD_BYTES,
    SUFFIXES,
    check_context,
    error_message,
    load_upload,
    local_models_enabled,
    local_source,
)

UPLOAD_LIMIT_MB = MAX_UPLOAD_BYTES // 1024**2
models = builtin_models()

with card_col:
    spec = models[chosen]
    st.markdown(spec.description)
    try:
        card = spec.card()
    except ExplorerError:
        card = {}
    params = card.get("params") or spec.params()
    facts = [spec.task, f"{params:,} parameters"]
    if isinstance(card.get("float"), int | float):
        value = card["float"]
        shown = f"{value:.2%}" if spec.metric == "accuracy" else f"{value:.3f}"
        facts.append(f"float {spec.metric} {shown} (from its card)")
    st.caption(" · ".join(facts))

# --- load your own -----------------------------------------------------------------------------
with st.expander("Load your own model or data"):
    st.caption(
        f"Files up to {UPLOAD_LIMIT_MB} MB. They are read as data only (safetensors, no pickle), "
        "checked, and kept for this session's run; other sessions never see them."
    )
    weights_tab, hf_tab, data_tab = st.tabs(
        ["Weights for a built-in model", "Hugging Face model (zip)", "Evaluation data"]
    )
    request: tuple[str, UploadedFile, str | None] | None = None
    with weights_tab:
        architecture = st.selectbox("Architecture", names, key="upload.architecture")
        weights = st.file_uploader(
            "State dict (safetensors)",
            type=[s.lstrip(".") for s in SUFFIXES["weights"]],
            key="upload.weights",
        )
        if weights is not None and st.button("Load weights", key="upload.weights.load"):
            request = ("weights", weights, architecture)
    with hf_tab:
        st.caption(
            "Zip the folder that `save_pretrained` wrote: `config.json` and `model.safetensors`. "
            "Without uploaded data the model is compared with its float self on random tokens."
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
            "`inputs` (and `labels`), CSV with a `label` column (or named text columns), UTF-8 "
            "text or JSONL with a `text` field, or a zipped image folder (one subfolder per "
            "class) for image classifiers. The first samples calibrate, the rest evaluate."
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

# --- the current model -----------------------------------------------------------------------
st.subheader("Current model")
st.markdown(f"Working on the {_describe(source)}.")
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
total_params = sum(r["parameters"] for r in table)
total_bytes = sum(r["float_bytes"] for r in table)
a, b, c = st.columns(3)
if metric is None:
    a.metric("Float metric", "fidelity only")
    a.caption("No labels: configurations are compared with the float model's outputs.")
else:
    name, value = metric
    a.metric(
        f"Float {name}",
        f"{value:.2%}" if name == "accuracy" else f"{value:.3f}",
        help=f"The unquantized model on {len(ctx.eval_split[0]):,} evaluation samples.",
    )
b.metric("Parameters", f"{total_params:,}")
c.metric("Float size", f"{total_bytes / 1024:,.1f} KiB")

task = ctx.task_summary()
st.markdown(
    f"**Task:** {task['task']} ({task['how']}) · **Metric:** {task['metric'] or 'fidelity only'}"
)
st.caption(f"Measured: {task['measures']}.")
if task["tokenizer"]:
    st.caption(f"Tokenizer: {task['tokenizer']} (the model directory's own).")
if task["data"]:
    st.caption(f"Evaluation data: {task['data']}.")

frame = pd.DataFrame(
    {
        "layer": [r["name"] for r in table],
        "type": [r["type"] for r in table],
        "shape": [" × ".join(str(d) for d in r["shape"]) for r in table],
        "parameters": [r["parameters"] for r in table],
        "float KiB": [r["float_bytes"] / 1024 for r in table],
        "quantizable": [r["quantizable"] for r in table],
    }
)
st.dataframe(
    frame,
    hide_index=True,
    column_config={"float KiB": st.column_config.NumberColumn(format="%.1f")},
    key="model.layers",
)
st.caption(
    "Quantizable layers (linear and convolution) are the ones a sweep can store in fewer bits; "
    "the others stay in float."
)

# --- the default sweep -------------------------------------------------------------------------
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
else:
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
