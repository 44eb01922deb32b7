"""Widget groups shared by the pages: each draws its widgets and returns a config object or plain
values; the computing happens in `explorer` (house style: Streamlit's demo apps' ``*_ui()``).

- `sweep_spec_ui` → `SweepSpec` (raises `SweepSpecError` for a combination that cannot be built);
- `run_settings_ui` → `RunSettings`;
- `sweep_job_ui`: the progress bar, cancel button and live partial front of a running sweep,
  refreshed every 1.5 s in a fragment while it runs (the sweep itself lives in a worker process
  kept by `explorer.ui.state`, so widget clicks never stop it);
- `front_figure_ui`: the Pareto scatter of some rows, or a table where the figure is missing.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pandas as pd
import streamlit as st

from explorer.inspect import result_table, sweep_progress
from explorer.quant.config import ACT_GRANULARITIES, ACT_MODES, CALIBRATIONS
from explorer.sweep.context import ModelSource
from explorer.sweep.default import DEFAULT_RUN
from explorer.sweep.runner import RunSettings
from explorer.sweep.space import DEFAULT_QAT_STEPS, PlanEntry, SweepSpec
from explorer.sweep.worker import SweepProcess
from explorer.ui import state

WEIGHT_BITS = (8, 7, 6, 5, 4, 3, 2)
GRANULARITIES = ("tensor", "channel", "group32", "group64", "group128")
ACT_BITS = ("none", "8", "4")
POLL_SECONDS = 1.5

_CALIBRATION_HELP = (
    "How the clipping range of each weight tensor is chosen: min-max keeps every value, "
    "percentile clips rare outliers, MSE picks the range with the least rounding error."
)


def sweep_spec_ui(
    model_layers: Sequence[str], *, key: str = "spec", qat_lr: float | None = None
) -> SweepSpec:
    """Widgets for every sweep dimension; the combinations are their cross product.
    ``qat_lr``: the model's default QAT rate, named in the learning-rate field's help."""
    weights, acts, method = st.columns(3)
    with weights:
        st.markdown("**Weights**")
        bits = st.multiselect(
            "Weight bits",
            WEIGHT_BITS,
            default=[8, 4],
            key=f"{key}.bits",
            help="Bits per stored weight. 8 and 4 run on real integer kernels; the others are "
            "simulated in accuracy and timed on the next wider kernel.",
        )
        granularity = st.multiselect(
            "Granularity",
            GRANULARITIES,
            default=["channel"],
            key=f"{key}.granularity",
            help="How many weights share one scale: the whole tensor, each output channel, or "
            "groups of 32/64/128 inputs within a channel.",
        )
        symmetric = st.multiselect(
            "Symmetry",
            ("symmetric", "asymmetric"),
            default=["symmetric"],
            key=f"{key}.symmetric",
            help="Symmetric grids are centred on zero; asymmetric ones add a zero point.",
        )
        calibration = st.multiselect(
            "Calibration",
            CALIBRATIONS,
            default=["minmax"],
            key=f"{key}.calibration",
            help=_CALIBRATION_HELP,
        )
    with acts:
        st.markdown("**Activations**")
        act_bits = st.multiselect(
            "Activation bits",
            ACT_BITS,
            default=["none"],
            key=f"{key}.act_bits",
            help="`none` keeps activations in float (weight-only quantization); 8 runs W8A8 "
            "integer matrix products.",
        )
        act_mode = st.multiselect(
            "Activation scales",
            ACT_MODES,
            default=["dynamic"],
            key=f"{key}.act_mode",
            help="Dynamic: measured on every input as it arrives. Static: fixed from the "
            "calibration samples.",
        )
        act_granularity = st.multiselect(
            "Activation granularity",
            ACT_GRANULARITIES,
            default=["token"],
            key=f"{key}.act_granularity",
            help="One scale per token (row) or per tensor.",
        )
    with method:
        st.markdown("**Method and layers**")
        methods = st.multiselect(
            "Method",
            ("ptq", "qat"),
            default=["ptq"],
            format_func=lambda m: {"ptq": "PTQ (post-training)", "qat": "QAT (trained)"}[m],
            key=f"{key}.method",
        )
        algorithms = st.multiselect(
            "PTQ algorithm",
            ("rtn", "gptq", "awq", "smoothquant"),
            default=["rtn"],
            format_func=lambda a: {
                "rtn": "RTN (round to nearest)",
                "gptq": "GPTQ (error compensation)",
                "awq": "AWQ (activation-aware scales)",
                "smoothquant": "SmoothQuant (W8A8 only)",
            }[a],
            key=f"{key}.algorithm",
            help="How PTQ rounds the weights. GPTQ and AWQ apply to linear layers and need "
            "calibration data; SmoothQuant needs 8-bit activations. QAT starts from round to "
            "nearest.",
        )
        qat_steps = st.number_input(
            "QAT budget (steps)",
            min_value=1,
            max_value=20_000,
            value=DEFAULT_QAT_STEPS,
            step=50,
            disabled="qat" not in methods,
            key=f"{key}.qat_steps",
            help="Training steps of quantization-aware training, starting from the PTQ model.",
        )
        qat_lr = st.number_input(
            "QAT peak learning rate",
            min_value=1e-6,
            max_value=0.5,
            value=None,
            format="%.1e",
            placeholder="the model's default",
            disabled="qat" not in methods,
            key=f"{key}.qat_lr",
            help="Adam's rate after a linear warm-up over the first 10 % of the steps; it then "
            "decays along a cosine to 0, with the gradient norm clipped to 1. Empty: the "
            "model's default" + ("." if qat_lr is None else f" ({qat_lr:g})."),
        )
        layers = st.multiselect(
            "Layers",
            list(model_layers),
            key=f"{key}.layers",
            help="The layers the swept settings apply to; the others stay fp32. Empty: all.",
        )
        pattern = st.text_input(
            "…or layer patterns",
            key=f"{key}.pattern",
            placeholder="e.g. features.*, classifier.2",
            help="Comma-separated glob patterns of layer names.",
        )
    patterns = [p.strip() for p in pattern.split(",") if p.strip()]
    return SweepSpec(
        weight_bits=tuple(bits),
        granularity=tuple(granularity),
        symmetric=tuple(s == "symmetric" for s in symmetric),
        calibration=tuple(calibration),
        act_bits=tuple(None if b == "none" else int(b) for b in act_bits),
        act_mode=tuple(act_mode),
        act_granularity=tuple(act_granularity),
        method=tuple(methods),
        algorithm=tuple(algorithms),
        qat_steps=int(qat_steps),
        qat_lr=None if qat_lr is None else float(qat_lr),
        layers=(*layers, *patterns),
    )


def run_settings_ui(*, key: str = "run", base: RunSettings = DEFAULT_RUN) -> RunSettings:
    """The run settings expander: timing repeats, bootstrap resamples, calibration samples."""
    with st.expander("Run settings"):
        st.caption(
            "Every setting is part of a row's key: changing one evaluates the configurations "
            "again instead of reusing stored rows."
        )
        a, b, c = st.columns(3)
        repeats = a.number_input(
            "Timing repeats",
            min_value=1,
            max_value=1000,
            value=base.repeats,
            key=f"{key}.repeats",
            help="Timed runs per workload; the median is reported.",
        )
        n_boot = b.number_input(
            "Bootstrap resamples",
            min_value=100,
            max_value=20_000,
            value=base.n_boot,
            step=100,
            key=f"{key}.n_boot",
            help="Resamples of the evaluation set for the 95 % confidence intervals.",
        )
        samples = c.number_input(
            "Calibration samples",
            min_value=1,
            max_value=10_000,
            value=base.calibration_samples,
            key=f"{key}.calibration_samples",
            help="Inputs used to choose static activation scales and clipping ranges.",
        )
        budget = st.number_input(
            "Evaluation budget (0: the task's own)",
            min_value=0,
            max_value=10_000_000,
            value=base.eval_budget or 0,
            key=f"{key}.eval_budget",
            help="Tokens scored (language models) or samples (other tasks). A smaller budget "
            "evaluates faster and gives wider confidence intervals.",
        )
    return RunSettings(
        eval_budget=int(budget) or None,
        calibration_samples=int(samples),
        seed=base.seed,
        n_boot=int(n_boot),
        warmup=base.warmup,
        repeats=int(repeats),
        qat_batch=base.qat_batch,
        per_layer=base.per_layer,
    )


TARGET_LABELS = {"native": "Explorer kernels (native)", "onnxruntime": "ONNX Runtime"}


def target_label(name: str) -> str:
    if name.startswith("llamacpp:"):
        return f"llama.cpp {name.partition(':')[2].upper()}"
    return TARGET_LABELS.get(name, name)


def targets_ui(model: Any, *, key: str = "targets") -> list[str]:
    """Where the sweep's configurations run: the explorer's own kernels and, where installed,
    ONNX Runtime and llama.cpp formats; every configuration runs once per target, so each
    appears once per runtime on the Pareto page (same size, its own latency and accuracy).
    Targets that cannot run here are listed with the reason."""
    from explorer.targets import target_choices

    choices = target_choices(model)
    usable = [name for name, why in choices.items() if why is None]
    chosen = st.multiselect(
        "Targets",
        usable,
        default=["native"],
        format_func=target_label,
        key=key,
        help="The runtime each configuration is measured in. ONNX Runtime and llama.cpp run "
        "the exported artifact itself: its accuracy and latency are the runtime's.",
    )
    unusable = {name: why for name, why in choices.items() if why is not None}
    if unusable:
        reasons = sorted({why for why in unusable.values()})
        st.caption("Not available here: " + " · ".join(str(r) for r in reasons))
    return list(chosen) or ["native"]


def new_sweep_id() -> str:
    return secrets.token_hex(4)


def start_sweep(
    source: ModelSource,
    spec: SweepSpec | Sequence[PlanEntry],
    settings: RunSettings,
    *,
    id_prefix: str = "",
    targets: Sequence[str] = ("native",),
) -> SweepProcess:
    """Start a sweep of ``spec`` (or of a list of entries, such as the default sweep's) on
    ``source`` in a worker process as this run's job (see `state.start_job`); its rows go to the
    app's store, owned as `state.owner_for` says."""
    entries = None if isinstance(spec, SweepSpec) else list(spec)
    process = SweepProcess(
        source,
        str(state.store_path()),
        spec=spec if entries is None else None,
        entries=entries,
        settings=replace(settings, target=targets[0]),
        owner=state.owner_for(source),
        sweep_id=id_prefix + new_sweep_id(),
        targets=tuple(targets[1:]),
    )
    return state.start_job(process)


def front_figure_ui(
    rows: Sequence[dict[str, Any]], *, metric: str | None, title: str | None = None, key: str
) -> None:
    """The size-against-metric scatter of ``rows`` (a table if the figure cannot be drawn)."""
    if not rows:
        return
    try:
        from explorer.plots import pareto_figure

        figure = pareto_figure(rows, x="size_bytes", metric=metric, title=title)
    except (ImportError, ValueError):
        st.dataframe(pd.DataFrame(result_table(rows, metric)), hide_index=True, key=key)
        return
    st.plotly_chart(figure, key=key)


def sweep_job_ui(job: SweepProcess, *, metric: str | None, key: str = "job") -> None:
    """Progress, cancel and the live partial front of ``job``; polls while it runs and reruns
    the whole page once when it ends (so tables below show the new rows)."""
    running = not job.finished

    @st.fragment(run_every=POLL_SECONDS if running else None)
    def panel() -> None:
        job.poll()
        if running and job.finished:  # draw the whole page again: its tables gain the rows
            st.session_state.pop(f"{key}.cancelling", None)
            st.rerun()
        progress = sweep_progress(job.history)
        if not job.finished:
            text = (
                f"Evaluated {progress.done} of {progress.total} configurations …"
                if progress.total
                else "Starting the sweep: loading the model in a worker process …"
            )
            if progress.total and progress.batch_total:
                unit = "QAT step" if progress.batch_stage == "qat" else "batch"
                text += f" (next: {unit} {progress.batch_done} of {progress.batch_total})"
            st.progress(progress.fraction, text=text)
            if st.button("Cancel sweep", key=f"{key}.cancel", icon=":material/stop:"):
                job.cancel()
                st.session_state[f"{key}.cancelling"] = True
            if st.session_state.get(f"{key}.cancelling"):
                st.caption("Cancelling: the configuration being evaluated finishes first.")
        elif progress.error:
            st.error(f"The sweep stopped: {progress.error}")
        elif progress.cancelled:
            st.warning(f"Sweep cancelled after {progress.done} of {progress.total} rows.")
        else:
            st.success(f"Sweep finished: {progress.done} of {progress.total} rows.")
        front_figure_ui(progress.rows, metric=metric, title="This sweep so far", key=f"{key}.front")
        if progress.skipped or progress.failed:
            with st.expander(f"{len(progress.skipped)} skipped, {len(progress.failed)} failed"):
                for label, reason in progress.skipped:
                    st.markdown(f"- **skipped** `{label}`: {reason}")
                for label, reason in progress.failed:
                    st.markdown(f"- **failed** `{label}`: {reason}")

    panel()
