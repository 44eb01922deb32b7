"""The kernel benchmark behind ``explorer bench``: fp32, bf16 and every real kernel on linear layers
``y = x·Wᵀ`` (K = N = 4096 by default, M ∈ {1, 8, 32}) and on one convolution.

Weight streaming is what int8/int4 buys at small M, so the benchmark must not time weights that sit
in cache: each candidate rotates over enough weight copies to exceed four times the last-level cache
(read from sysfs by `explorer.machine`; where sysfs does not say, an assumed 32 MiB, and ``env``
says which), and
the candidates are interleaved call by call so that drift (turbo, other load) hits all alike. The
result is the median of the repeats; GB/s counts the weight bytes each kernel reads.

The floor: interleaved with the kernels, a plain streaming read of the fp32 weight copies
(:func:`explorer.kernels.native.byte_sum`, as many threads) measures what reading bytes costs on
this machine at this moment. ``floor_ms`` is a kernel's weight bytes at that rate and
``of_floor`` = ``floor_ms / ms``: 1.0 means the kernel runs as fast as its weights can be read, so
no kernel for that format can be faster, and ``fp32 ms / floor_ms`` bounds any speedup at M = 1.

Each row's ``isa`` is the code that ran it, checked rather than assumed: our kernels' path, and
for torch's kernels the library that ran the call (`explorer.measure.emulate.dispatch`: oneDNN's
primitive, MKL's branch, fbgemm's, else ATen's capability). ``explorer bench --isa avx2`` runs
all of it with every library restricted to AVX2 (`explorer.measure.emulate`); ``env`` then says
what was forced (``isa_forced``) and what each library reports it ran (``libraries``).
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from explorer import machine
from explorer.kernels import conv_ops, lowbit, native
from explorer.kernels.base import LinearSpec
from explorer.kernels.select import KERNELS, conv_candidates
from explorer.measure import emulate
from explorer.measure.latency import timing_lock
from explorer.nn.modules import QuantConv2d
from explorer.quant.config import QuantConfig
from explorer.quant.qtensor import QuantizedWeight

LLC = machine.last_level_cache()
L3_BYTES = LLC.size_bytes  # the name predates reading it; kept for callers
ROTATE_FACTOR = 4
MAX_COPIES = 64  # small layers fit in cache whatever we do; don't build thousands of copies

# (label, config) of the formats benchmarked; each runs on every real kernel that computes it.
LINEAR_FORMATS: tuple[tuple[str, QuantConfig], ...] = (
    ("w8-channel", QuantConfig(weight_bits=8)),
    ("w4-g128", QuantConfig(weight_bits=4, granularity="group", group_size=128)),
    ("w4-g32", QuantConfig(weight_bits=4, granularity="group", group_size=32)),
    ("w3-g128", QuantConfig(weight_bits=3, granularity="group", group_size=128)),
    ("w2-g128", QuantConfig(weight_bits=2, granularity="group", group_size=128)),
    ("w2-g32", QuantConfig(weight_bits=2, granularity="group", group_size=32)),
    ("w8a8-token", QuantConfig(weight_bits=8, act_bits=8, act_granularity="token")),
    ("w8a8-tensor", QuantConfig(weight_bits=8, act_bits=8, act_granularity="tensor")),
    ("w4a8-g128", QuantConfig(weight_bits=4, granularity="group", group_size=128, act_bits=8)),
    ("w4a8-g32", QuantConfig(weight_bits=4, granularity="group", group_size=32, act_bits=8)),
    ("w2a8-g128", QuantConfig(weight_bits=2, granularity="group", group_size=128, act_bits=8)),
)
LOWBIT_KERNELS = {f"int{b}-wo-native" for b in lowbit.BITS} | {
    f"int{b}-w{b}a8-native" for b in lowbit.BITS
}
SLOW_ON_CPU = {"int8-w8a8-intmm"}  # torch._int_mm has no fast x86 path (≈10x slower than fp32)
BASELINES = {"int8-w8a8-fbgemm"}
"""Kernels timed even where an emulated instruction set makes the explorer refuse them for
models (fbgemm without VNNI saturates, a different function): issue 15's int8 target is "as fast
as fbgemm" on every machine. Their rows carry ``refused`` with the reason."""


@dataclass
class _Candidate:
    kernel: str
    fmt: str
    run: Callable[[Any, torch.Tensor], torch.Tensor]
    states: list[Any]
    weight_bytes: int
    inputs: dict[int, torch.Tensor]
    refused: str | None = None


def _copies(nbytes: int) -> int:
    if nbytes * MAX_COPIES < L3_BYTES:
        return 2  # no number of copies leaves the cache: time the layer as it will run
    return min(MAX_COPIES, -(-ROTATE_FACTOR * L3_BYTES // nbytes) + 1)


def _random_qweight(config: QuantConfig, n: int, k: int, gen: torch.Generator) -> QuantizedWeight:
    """Random codes and scales in the config's stored format (values do not affect speed)."""
    bits, sym = config.weight_bits, config.symmetric
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if sym else (0, (1 << bits) - 1)
    block = (1, config.group_size or k)
    codes = torch.randint(lo, hi + 1, (n, k), generator=gen, dtype=torch.int32)
    scale = torch.rand(n, k // block[1], generator=gen) * 0.01 + 1e-3
    if config.granularity == "group":
        scale = scale.bfloat16()
    return QuantizedWeight.from_codes(codes, scale, None, bits, sym, block)


def _float_candidate(dtype: torch.dtype, n: int, k: int, gen: torch.Generator) -> _Candidate:
    nbytes = n * k * torch.finfo(dtype).bits // 8
    ws = [torch.randn(n, k, generator=gen).to(dtype) for _ in range(_copies(nbytes))]
    name = "fp32" if dtype == torch.float32 else "bf16"

    def run(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(w.dtype), w).float()

    return _Candidate(name, name, run, ws, nbytes, {})


def _ggml_candidates(
    n: int, k: int, ms: tuple[int, ...], formats: tuple[str, ...], gen: torch.Generator
) -> list[_Candidate]:
    """ggml's CPU matmul (llama.cpp's kernel) per ggml format, on copies of ggml's own bytes of
    one random weight (values do not change the speed; quantizing 4096² once per copy would).
    Where ggml repacks the format on this CPU (as llama.cpp's loader does: Q4_0, Q4_K, Q2_K,
    IQ4_NL on AVX2), a second candidate ``ggml-<format>-repacked`` times that layout."""
    from explorer.kernels.ggml import GgmlLinear
    from explorer.quant import ggml

    out = []
    for name in formats:
        fmt = ggml.format_of(name)
        data = ggml.quantize(torch.randn(n, k, generator=gen) * 0.02, fmt)
        for repack in (False, True):
            first = GgmlLinear(data, fmt, ms, repack=repack)
            if repack and not first.repacked:
                continue
            states = [first] + [
                GgmlLinear(data, fmt, ms, repack=repack) for _ in range(_copies(data.nbytes) - 1)
            ]
            kernel = f"ggml-{fmt.name}" + ("-repacked" if repack else "")
            out.append(_Candidate(kernel, fmt.name, _ggml_run, states, data.nbytes, {}))
    return out


def _ggml_run(state: Any, x: torch.Tensor) -> torch.Tensor:
    return state(x)


def linear_candidates(
    n: int,
    k: int,
    include_slow: bool = False,
    device: str = "cpu",
    ggml_formats: tuple[str, ...] = (),
    ms: tuple[int, ...] = (1, 8, 32),
) -> list[_Candidate]:
    gen = torch.Generator().manual_seed(0)
    out = [_float_candidate(torch.float32, n, k, gen), _float_candidate(torch.bfloat16, n, k, gen)]
    for fmt, config in LINEAR_FORMATS:
        spec = LinearSpec.from_config(config, n, k, device)
        for kernel in KERNELS.values():
            refused = kernel.supports(spec)
            if refused is not None and kernel.name in BASELINES:
                with emulate.real_cpu():  # refused only for the emulated machine's sake?
                    if kernel.supports(spec) is not None:
                        continue
            elif refused is not None:
                continue
            if kernel.name in SLOW_ON_CPU and device == "cpu" and not include_slow:
                continue
            probe = _random_qweight(config, n, k, gen)
            copies = _copies(probe.nbytes)
            states = [kernel.prepare(spec, probe, None, None)]
            states += [
                kernel.prepare(spec, _random_qweight(config, n, k, gen), None, None)
                for _ in range(copies - 1)
            ]
            out.append(_Candidate(kernel.name, fmt, kernel.run, states, probe.nbytes, {}, refused))
    if ggml_formats:  # llama.cpp's kernels side by side (the llamacpp extra)
        out += _ggml_candidates(n, k, ms, ggml_formats, gen)
    return out


def kernel_isa(kernel: str, m: int | None = None, k: int | None = None) -> str:
    """The instruction-set path a benchmarked kernel took: our kernels' path (`native.isa`;
    the 4/8-bit weight-only ones run their AVX2 code on the VNNI paths, except the AVX-512 row
    kernels at M = 1, `native.wo_isa`, reported when the shape ``m`` x ``k`` is given; the
    2/3-bit ones say which of their codes ran, `lowbit.isa_taken`), else torch's own dispatch
    (``torch-AVX512``, ...)."""
    if kernel in LOWBIT_KERNELS and native.available():
        return lowbit.isa_taken()
    if kernel in (conv_ops.CONV_A8.name, conv_ops.DWCONV_A8.name):
        return conv_ops.conv_isa() or "unavailable"  # their own library and path switch
    if kernel.endswith("-native") and native.available():
        path = native.isa()
        if "-wo-" in kernel and path in ("avx_vnni", "avx512_vnni"):
            return native.wo_isa(m, k) if m is not None and k is not None else "avx2"
        return path
    if kernel.startswith("ggml-"):
        return f"ggml-{emulate.ggml_isa()}"  # compiled for one CPU: no run-time switch
    return f"torch-{machine.torch_capability()}"


def _ours(kernel: str) -> bool:
    """Our kernels and ggml's say their path themselves; torch's are labelled by `dispatch`."""
    return kernel.endswith("-native") or kernel.startswith("ggml-") or kernel == READ


READ = "read"  # the streaming-read pseudo-candidate: it gives the floor, not a row of its own


def _read_candidate(fp32: _Candidate) -> _Candidate | None:
    """Stream the fp32 candidate's weight copies without computing: the bandwidth floor."""
    if not native.available():
        return None

    def run(w: torch.Tensor, x: torch.Tensor) -> int:
        return native.byte_sum(w)

    return _Candidate(READ, "read", run, fp32.states, fp32.weight_bytes, {})


def bench_linear(
    ms: tuple[int, ...] = (1, 8, 32),
    n: int = 4096,
    k: int = 4096,
    repeats: int = 30,
    include_slow: bool = False,
    progress: Callable[[str], None] | None = None,
    ggml_formats: tuple[str, ...] = (),
    clock: Callable[[], float] = time.perf_counter,
) -> list[dict[str, Any]]:
    """Rows of every linear candidate at each M. ``clock`` may be ``time.thread_time`` with one
    thread: CPU time, which other jobs on a loaded machine do not inflate."""
    cands = linear_candidates(n, k, include_slow, ggml_formats=ggml_formats, ms=ms)
    read = _read_candidate(cands[0])
    if read is not None:
        cands.append(read)
    rows = []
    for m in ms:
        if progress:
            progress(f"linear M={m}")
        x = torch.randn(m, k)
        samples: dict[int, list[float]] = {i: [] for i in range(len(cands))}
        for c in cands:  # warm-up every copy once
            for s in c.states:
                c.run(s, x)
        isas = [
            kernel_isa(c.kernel, m, k)
            if _ours(c.kernel)
            else emulate.dispatch(lambda c=c, x=x: c.run(c.states[0], x), c.kernel)
            for c in cands
        ]
        reps = {i: (3 if c.kernel in SLOW_ON_CPU else repeats) for i, c in enumerate(cands)}
        for r in range(repeats):
            for i, c in enumerate(cands):
                if r >= reps[i]:
                    continue
                state = c.states[r % len(c.states)]
                t0 = clock()
                c.run(state, x)
                samples[i].append((clock() - t0) * 1e3)
        medians = {i: statistics.median(s) for i, s in samples.items()}
        fp32 = next(medians[i] for i, c in enumerate(cands) if c.kernel == "fp32")
        bf16 = next(medians[i] for i, c in enumerate(cands) if c.kernel == "bf16")
        read_ms = next((medians[i] for i, c in enumerate(cands) if c.kernel == READ), None)
        for i, c in enumerate(cands):
            if c.kernel == READ:
                continue
            ms_ = medians[i]
            floor: dict[str, Any] = {}
            if read_ms is not None:
                floor_ms = read_ms * c.weight_bytes / cands[0].weight_bytes
                floor = {
                    "floor_ms": round(floor_ms, 6),
                    "of_floor": round(floor_ms / ms_, 4),
                    "read_gbps": round(cands[0].weight_bytes / read_ms / 1e6, 2),
                }
            rows.append(
                {
                    "op": "linear",
                    "kernel": c.kernel,
                    "format": c.fmt,
                    "M": m,
                    "K": k,
                    "N": n,
                    "ms": round(ms_, 4),
                    "gbps": round(c.weight_bytes / ms_ / 1e6, 2),
                    "speedup_vs_fp32": round(fp32 / ms_, 2),
                    "speedup_vs_bf16": round(bf16 / ms_, 2),
                    "isa": isas[i],
                    "weight_copies": len(c.states),
                    "weight_bytes": c.weight_bytes,
                    **floor,
                    **({"refused": c.refused} if c.refused else {}),
                }
            )
    return rows


CONV_SHAPE = {
    "batch": 1,
    "in_channels": 128,
    "out_channels": 128,
    "height": 28,
    "width": 28,
    "kernel": 3,
    "padding": 1,
}


def bench_conv(
    repeats: int = 20,
    progress: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[dict[str, Any]]:
    """One 3x3 convolution (activation-bound; weights fit in cache, so no rotation)."""
    if progress:
        progress("conv2d")
    s = CONV_SHAPE
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(s["in_channels"], s["out_channels"], s["kernel"], padding=s["padding"])
    x = torch.randn(s["batch"], s["in_channels"], s["height"], s["width"])
    fns: dict[str, Callable[[], torch.Tensor]] = {"fp32": lambda: conv(x)}
    conv_bf16 = torch.nn.Conv2d(
        s["in_channels"], s["out_channels"], s["kernel"], padding=s["padding"]
    ).bfloat16()
    fns["bf16"] = lambda: conv_bf16(x.bfloat16())
    for fmt, config in LINEAR_FORMATS:
        q = QuantConv2d.from_float(conv, config)
        # every convolution kernel: oneDNN's int8 convolution, im2col + each linear kernel
        for kernel in conv_candidates(q.conv_spec, q.geometry):
            if kernel.name not in SLOW_ON_CPU:
                qk = QuantConv2d.from_float(conv, config)
                qk.use_kernel(kernel.name)
                fns[f"{kernel.name}|{fmt}"] = qk
    with torch.inference_mode():
        for f in fns.values():
            f() if not isinstance(f, torch.nn.Module) else f(x)
        isas = {}
        for name, f in fns.items():
            kernel = name.partition("|")[0]
            call = f if not isinstance(f, torch.nn.Module) else lambda f=f: f(x)
            isas[name] = kernel_isa(kernel) if _ours(kernel) else emulate.dispatch(call, kernel)
        samples: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(repeats):
            for name, f in fns.items():
                t0 = clock()
                f() if not isinstance(f, torch.nn.Module) else f(x)
                samples[name].append((clock() - t0) * 1e3)
    med = {name: statistics.median(v) for name, v in samples.items()}
    rows = []
    for name, t in med.items():
        kernel, _, fmt = name.partition("|")
        rows.append(
            {
                "op": "conv2d",
                "kernel": kernel,
                "format": fmt or kernel,
                "shape": dict(s),
                "isa": isas[name],
                "ms": round(t, 4),
                "speedup_vs_fp32": round(med["fp32"] / t, 2),
                "speedup_vs_bf16": round(med["bf16"] / t, 2),
            }
        )
    return rows


def environment(libraries: dict[str, Any] | None = None) -> dict[str, Any]:
    """The machine the benchmark ran on (`explorer.machine`), whether our kernels loaded, the
    instruction set emulated (None: this CPU's own) and what each library reports it ran."""
    info = native.build_info()
    return {
        "isa_forced": emulate.forced(),
        "libraries": libraries,
        "torch": torch.__version__,
        "threads": machine.threads(),
        "cpu_capability": machine.torch_capability(),
        "processor": machine.cpu_model(),
        "cpu_features": machine.cpu_features(),
        "python": platform.python_version(),
        "native_kernels": bool(info["available"]),
        "native_isa": info.get("isa"),
        "native_unavailable_reason": info.get("reason"),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "llc_bytes": LLC.size_bytes,
        "llc_source": LLC.source,
        "rotate_bytes_min": ROTATE_FACTOR * L3_BYTES,
    }


def run_bench(
    ms: tuple[int, ...] = (1, 8, 32),
    n: int = 4096,
    k: int = 4096,
    repeats: int = 30,
    conv: bool = True,
    include_slow: bool = False,
    progress: Callable[[str], None] | None = None,
    ggml_formats: tuple[str, ...] = (),
    clock: str = "wall",
) -> dict[str, Any]:
    """Every row, and the environment. ``clock="cpu"`` (one thread only) times the calling
    thread's CPU time, which other jobs on a loaded machine inflate less than the wall clock."""
    timer = {"wall": time.perf_counter, "cpu": time.thread_time}[clock]
    libraries = emulate.libraries(ggml=bool(ggml_formats))  # before MKL or oneDNN first run
    before = machine.load_average()
    with timing_lock():
        rows = bench_linear(ms, n, k, repeats, include_slow, progress, ggml_formats, timer)
        if conv:
            rows += bench_conv(max(5, repeats // 2), progress, timer)
    env = environment(libraries)
    env.update(clock=clock, loadavg_before=before, loadavg_after=machine.load_average())
    return {"env": env, "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"{'op':7} {'kernel':24} {'format':12} {'M':>4} {'ms':>9} {'GB/s':>7} "
        f"{'x fp32':>7} {'x bf16':>7} {'floor':>7} {'of fl.':>6} isa"
    ]
    nan = float("nan")
    for r in result["rows"]:
        lines.append(
            f"{r['op']:7} {r['kernel']:24} {r['format']:12} {r.get('M', '-')!s:>4} "
            f"{r['ms']:9.3f} {r.get('gbps', nan):7.1f} {r['speedup_vs_fp32']:7.2f} "
            f"{r['speedup_vs_bf16']:7.2f} {r.get('floor_ms', nan):7.3f} "
            f"{r.get('of_floor', nan):6.2f} {r.get('isa', '-')}"
        )
    reads = sorted({r["read_gbps"] for r in result["rows"] if "read_gbps" in r})
    if reads:
        lines.append(
            f"floor: weight bytes at the streaming-read rate measured alongside "
            f"({', '.join(f'{g:.1f}' for g in reads)} GB/s); 'of fl.' = floor / ms"
        )
    return "\n".join(lines)
