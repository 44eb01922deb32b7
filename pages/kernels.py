"""Kernels: time fp32, bf16 and every real integer kernel of this machine on linear layers of the
shapes you pick, and chart each kernel's speed against fp32."""

from __future__ import annotations

from typing import Any

import streamlit as st

from explorer.errors import ExplorerError
from explorer.machine import cpu_features
from explorer.measure.bench import environment, run_bench
from explorer.plots import kernel_speedup_figure
from explorer.ui.tables import kernel_timings_frame

RESULT = "kernels.result"
M_CHOICES = (1, 8, 32, 128)
SHAPE_STEP = 128  # every benchmarked format (groups of 32 and 128) must tile K
SHAPE_MAX = 8192


def machine_ui() -> None:
    env = environment()
    cpu = cpu_features()
    yes = {True: "yes", False: "no"}
    a, b, c, d = st.columns(4)
    a.metric("CPU", cpu.get("model") or env["processor"])
    b.metric("Threads", env["threads"])
    c.metric("PyTorch CPU capability", str(env["cpu_capability"]))
    d.metric("Native int kernels", yes[bool(env["native_kernels"])])
    st.caption(
        f"AVX2 {yes[bool(cpu.get('avx2'))]} · AVX-512 {yes[bool(cpu.get('avx512'))]} · "
        f"VNNI (int8 dot products) {yes[bool(cpu.get('vnni'))]} · "
        f"bf16 arithmetic {yes[bool(cpu.get('bf16'))]} · torch {env['torch']}"
        + (
            f" · native kernels unavailable: {env['native_unavailable_reason']}"
            if env.get("native_unavailable_reason")
            else ""
        )
    )


def shape_ui() -> dict[str, Any] | None:
    with st.form("kernels.form", border=True):
        left, middle, right = st.columns(3)
        ms = left.multiselect(
            "Batch rows M",
            M_CHOICES,
            default=[1, 8],
            key="kernels.m",
            help="Rows of the input: 1 is one token of text generation, larger M is a batch.",
        )
        k = middle.number_input(
            "Inputs K",
            min_value=SHAPE_STEP,
            max_value=SHAPE_MAX,
            value=512,
            step=SHAPE_STEP,
            key="kernels.k",
            help=f"A multiple of {SHAPE_STEP}. 4096 is a 7B-class LLM layer (takes minutes).",
        )
        n = right.number_input(
            "Outputs N",
            min_value=SHAPE_STEP,
            max_value=SHAPE_MAX,
            value=512,
            step=SHAPE_STEP,
            key="kernels.n",
            help=f"A multiple of {SHAPE_STEP}.",
        )
        left2, right2 = st.columns(2)
        repeats = left2.slider(
            "Timed runs per kernel",
            3,
            50,
            10,
            key="kernels.repeats",
            help="The chart shows the median of these runs.",
        )
        conv = right2.checkbox(
            "Also time a 3×3 convolution (128→128 channels, 28×28)", key="kernels.conv"
        )
        submitted = st.form_submit_button("Run the benchmark", type="primary")
    if not submitted:
        return None
    if not ms:
        st.error("Pick at least one batch size M.")
        return None
    bad = [f"{name}={v}" for name, v in (("K", k), ("N", n)) if int(v) % SHAPE_STEP]
    if bad:
        st.error(
            f"{', '.join(bad)}: shapes must be multiples of {SHAPE_STEP}, so that every format "
            "(including groups of 32 and 128 weights) tiles the layer."
        )
        return None
    return {
        "ms": tuple(sorted(int(m) for m in ms)),
        "k": int(k),
        "n": int(n),
        "repeats": int(repeats),
        "conv": bool(conv),
    }


def benchmark_ui(shape: dict[str, Any]) -> dict[str, Any] | None:
    stages = [f"linear M={m}" for m in shape["ms"]] + (["conv2d"] if shape["conv"] else [])
    with st.status("Benchmarking …", expanded=True) as status:
        bar = st.progress(0.0, text="preparing weight copies (this is the slow part) …")
        seen: list[str] = []

        def progress(stage: str) -> None:
            seen.append(stage)
            done = len(seen) - 1
            bar.progress(done / len(stages), text=f"timing {stage} ({done}/{len(stages)} done)")
            status.write(f"timing {stage}")

        try:
            result = run_bench(
                ms=shape["ms"],
                n=shape["n"],
                k=shape["k"],
                repeats=shape["repeats"],
                conv=shape["conv"],
                progress=progress,
            )
        except (ExplorerError, ValueError, RuntimeError, MemoryError) as exc:
            status.update(label="The benchmark failed", state="error")
            st.error(f"The benchmark failed: {exc}")
            return None
        bar.progress(1.0, text=f"{len(stages)}/{len(stages)} done")
        status.update(label=f"Benchmark done: {len(result['rows'])} timings", state="complete")
    return {**result, "shape": shape}


def main() -> None:
    st.title("Kernels")
    st.caption(
        "How fast is each real kernel on this machine? A linear layer y = x·Wᵀ of the shape you "
        "pick runs in fp32, bf16 and every integer kernel that exists here (int8 and int4 "
        "weights, int8 activations). At small M a layer mostly *reads its weights*, so storing "
        "them in 8 or 4 bits can beat fp32; at large M the arithmetic dominates. Small layers "
        "fit in the CPU cache, so K = N = 4096 (a 7B-class LLM layer) shows the weight-streaming "
        "regime best, at the cost of minutes of preparation."
    )
    machine_ui()
    st.caption(
        "Timings hold a machine-wide lock, so they never overlap: if a sweep is running, the "
        "benchmark waits for each of its timings (and slows it down a little). Each kernel "
        "rotates through enough weight copies to exceed the CPU cache, so what is timed is the "
        "weight streaming of a real model, not cache hits."
    )
    shape = shape_ui()
    if shape is not None:
        result = benchmark_ui(shape)
        if result is not None:
            st.session_state[RESULT] = result
    result = st.session_state.get(RESULT)
    if result is None:
        st.info("Pick shapes and run the benchmark; small shapes take a few seconds.")
        return
    s = result["shape"]
    st.subheader(f"Speed against fp32 · K={s['k']}, N={s['n']}, M ∈ {list(s['ms'])}")
    st.plotly_chart(kernel_speedup_figure(result["rows"]), key="kernels.figure")
    st.caption(
        "Bars above the dashed line are faster than fp32. Kernel names say the format: "
        "`int8-wo` weight-only int8, `int4-wo` weight-only int4 (per group), `int8-w8a8` "
        "int8 weights and activations; `-bf16` kernels compute in bf16. Medians of "
        f"{s['repeats']} runs with {result['env']['threads']} thread(s)."
    )
    st.dataframe(kernel_timings_frame(result["rows"]), hide_index=True, key="kernels.table")


main()
