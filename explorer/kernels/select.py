"""Dispatch: which kernels compute a spec, and which of them is fastest for a layer's shape.

Like torchao's autoquant, the choice is made by measurement: every candidate that computes the
same function runs the layer's real weights on an input of the layer's real row count, and the
fastest median wins. Results are cached for the process per (candidates, spec, rows, threads,
native build): the spec holds the shape and format, so the identical layers of a transformer's
blocks are timed once, and a rebuilt or re-targeted native library (`explorer.kernels.native`)
times again. Huge layers (a 150k-token vocabulary's output layer) are timed on fewer rows and
fewer repeats, within `TIMING_BUDGET_S` (see `choose`).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from explorer.kernels.base import ActQParams, LinearKernel, LinearSpec
from explorer.kernels.conv_ops import (
    CONV_A8,
    DWCONV_A8,
    DWCONV_WO,
    ONEDNN_CONV,
    ONEDNN_DWCONV,
    ConvGeometry,
    ConvKernel,
    Im2colKernel,
)
from explorer.kernels.lowbit import NativeLowbitA8Kernel, NativeLowbitKernel
from explorer.kernels.native_ops import (
    NativeW4A8Kernel,
    NativeW8A8Kernel,
    NativeWeightOnlyKernel,
)
from explorer.kernels.reference import ReferenceKernel
from explorer.kernels.torch_ops import (
    FbgemmKernel,
    Int8PackKernel,
    IntMMKernel,
    TinyGemmInt4Kernel,
)
from explorer.quant.qtensor import QuantizedWeight

REFERENCE = ReferenceKernel()
KERNELS: dict[str, LinearKernel] = {
    k.name: k
    for k in (
        NativeLowbitKernel(2),
        NativeLowbitKernel(3),
        NativeLowbitA8Kernel(2),
        NativeLowbitA8Kernel(3),
        NativeWeightOnlyKernel(4),
        NativeWeightOnlyKernel(8),
        NativeW8A8Kernel(),
        NativeW4A8Kernel(),
        TinyGemmInt4Kernel(),
        Int8PackKernel(),
        FbgemmKernel(),
        IntMMKernel(),
    )
}
_CHOICES: dict[tuple[Any, ...], str] = {}


def get_kernel(name: str) -> LinearKernel:
    if name == REFERENCE.name:
        return REFERENCE
    if name not in KERNELS:
        raise KeyError(f"unknown kernel {name!r}; known: {sorted(KERNELS)}")
    return KERNELS[name]


def candidates(spec: LinearSpec) -> list[LinearKernel]:
    """Real kernels that compute ``spec`` on its device (empty: simulated)."""
    return [k for k in KERNELS.values() if k.supports(spec) is None]


def why_no_kernel(spec: LinearSpec) -> dict[str, str]:
    return {k.name: k.supports(spec) or "" for k in KERNELS.values()}


MAX_TIMING_ROWS = 256
MAX_TIMING_MACS = 1 << 32
"""Most multiply-adds per timed call: a 151,936 x 896 output layer is timed on 31 rows, not 256."""
MIN_TIMING_ROWS = 16
TIMING_BUDGET_S = 2.0
"""Seconds the timed repeats of one choice aim at; at least `MIN_REPEATS` whatever they cost."""
MIN_REPEATS = 3


def _build() -> tuple[object, object]:
    """The loaded native library's hash and instruction-set path (None, None without it)."""
    from explorer.kernels import native

    info = native.build_info()
    return info.get("sha256"), info.get("isa")


def timing_rows(spec: LinearSpec, rows: int) -> int:
    """The rows a choice is timed on: ``rows``, at most `MAX_TIMING_ROWS` and, for huge layers,
    at most `MAX_TIMING_MACS` multiply-adds (but never fewer than `MIN_TIMING_ROWS` rows, where
    the kernels still run as they do on the full input)."""
    by_macs = max(MIN_TIMING_ROWS, MAX_TIMING_MACS // max(1, spec.n * spec.k))
    return max(1, min(rows, MAX_TIMING_ROWS, by_macs))


def choose(
    spec: LinearSpec,
    qw: QuantizedWeight,
    bias: torch.Tensor | None,
    act: ActQParams | None,
    rows: int = 1,
    repeats: int = 7,
) -> str | None:
    """The fastest real kernel for ``spec`` at ``rows`` input rows, or None if there is none.

    Beyond `MAX_TIMING_ROWS` rows every kernel's time grows in proportion to the rows (each
    output row is an independent dot-product sweep over the same weights), so larger inputs are
    timed at `MAX_TIMING_ROWS`: the same ranking at a fraction of the cost; a huge layer at
    fewer still (`timing_rows`). The warm-up call also sizes the repeats: as many as fit in
    `TIMING_BUDGET_S`, at least `MIN_REPEATS`, at most ``repeats`` (a 0.5 B model's output
    layer took 16 calls of 3-4 s each before)."""
    rows = timing_rows(spec, rows)
    found = candidates(spec)
    if not found:
        return None
    if len(found) == 1:
        return found[0].name
    key = (tuple(k.name for k in found), spec, rows, torch.get_num_threads(), _build())
    if key in _CHOICES:
        return _CHOICES[key]
    x = torch.randn(rows, spec.k, device=spec.device)
    if spec.n * spec.k * 4 > ONE_AT_A_TIME_BYTES:
        best = _one_at_a_time(found, spec, qw, bias, act, x, repeats)
        _CHOICES[key] = best
        return best
    times = {}
    states = {k.name: k.prepare(spec, qw, bias, act) for k in found}
    t0 = time.perf_counter()
    for kernel in found:  # warm-up: first calls pay for lazy packing and page faults
        kernel.run(states[kernel.name], x)
    per_round = time.perf_counter() - t0
    affordable = int(TIMING_BUDGET_S / per_round) if per_round > 0 else repeats
    samples: dict[str, list[float]] = {k.name: [] for k in found}
    for _ in range(max(min(repeats, MIN_REPEATS), min(repeats, affordable))):
        # interleaved, so drift hits every candidate alike
        for kernel in found:
            t0 = time.perf_counter()
            kernel.run(states[kernel.name], x)
            if spec.device == "cuda":
                torch.cuda.synchronize()
            samples[kernel.name].append(time.perf_counter() - t0)
    times = {name: statistics.median(s) for name, s in samples.items()}
    best = min(times, key=times.__getitem__)
    _CHOICES[key] = best
    return best


ONE_AT_A_TIME_BYTES = 256 << 20
"""Above this many fp32 bytes of weight (a vocabulary head: 151,936 x 896 is 545 MB), `choose`
prepares and times the candidates one at a time: each prepared layout is a copy of the weight
(some dequantize it to fp32), and holding all of them at once was the peak of a 0.5 B model's
row."""


def _one_at_a_time(
    found: list[Any],
    spec: LinearSpec,
    qw: QuantizedWeight,
    bias: torch.Tensor | None,
    act: ActQParams | None,
    x: torch.Tensor,
    repeats: int,
) -> str:
    """The fastest of ``found``, each prepared, warmed up, timed (median) and freed in turn."""
    times: dict[str, float] = {}
    for kernel in found:
        state = kernel.prepare(spec, qw, bias, act)
        t0 = time.perf_counter()
        kernel.run(state, x)  # warm-up; also sizes the repeats
        per_call = time.perf_counter() - t0
        affordable = int(TIMING_BUDGET_S / len(found) / per_call) if per_call > 0 else repeats
        samples = []
        for _ in range(max(min(repeats, MIN_REPEATS), min(repeats, affordable))):
            t0 = time.perf_counter()
            kernel.run(state, x)
            if spec.device == "cuda":
                torch.cuda.synchronize()
            samples.append(time.perf_counter() - t0)
        times[kernel.name] = statistics.median(samples)
        del state
    return min(times, key=times.__getitem__)


# --- convolutions -------------------------------------------------------------------------------

CONV_KERNELS: dict[str, ConvKernel] = {
    **{name: Im2colKernel(k) for name, k in KERNELS.items()},
    **{k.name: k for k in (ONEDNN_CONV, ONEDNN_DWCONV, DWCONV_WO, CONV_A8, DWCONV_A8)},
}
"""Every convolution kernel: im2col in front of each linear kernel (named after it), oneDNN's
(dense, depthwise), the depthwise one on stored codes and our int8 ones (dense implicit GEMM,
depthwise), in the order `conv_candidates` lists them. A layer runs the first until
`choose_conv` has measured: so a dense layer's untimed default is the im2col kernel it always
was, and its float outputs stay those of before."""
MAX_TIMING_PIXELS = 4096  # output positions per timed call; beyond, time grows with the batch
_CONV_CHOICES: dict[tuple[Any, ...], str] = {}


def get_conv_kernel(name: str) -> ConvKernel | ReferenceKernel:
    if name == REFERENCE.name:
        return REFERENCE
    if name not in CONV_KERNELS:
        raise KeyError(f"unknown convolution kernel {name!r}; known: {sorted(CONV_KERNELS)}")
    return CONV_KERNELS[name]


def conv_candidates(spec: LinearSpec, geom: ConvGeometry) -> list[ConvKernel]:
    """Real kernels that compute the convolution ``spec`` x ``geom`` (empty: simulated)."""
    return [k for k in CONV_KERNELS.values() if k.supports(spec, geom) is None]


def why_no_conv_kernel(spec: LinearSpec, geom: ConvGeometry) -> dict[str, str]:
    return {k.name: k.supports(spec, geom) or "" for k in CONV_KERNELS.values()}


def choose_conv(
    spec: LinearSpec,
    geom: ConvGeometry,
    qw: QuantizedWeight,
    bias: torch.Tensor | None,
    act: ActQParams | None,
    shape: tuple[int, int, int, int],
    repeats: int = 7,
    channels_last: bool = False,
) -> str | None:
    """The fastest real kernel for the convolution on inputs of ``shape`` (B, C, H, W), or None.

    Timed on a batch cut to about `MAX_TIMING_PIXELS` output positions (at least one image):
    each image costs every kernel the same again; in the layer's input layout (``channels_last``:
    NHWC in memory, as the kernels that write channels-last outputs hand it on)."""
    found = conv_candidates(spec, geom)
    if len(found) <= 1:
        return found[0].name if found else None
    b, c, h, w = shape
    ho, wo = geom.out_hw(h, w)
    b = max(1, min(b, MAX_TIMING_PIXELS // max(1, ho * wo)))
    key = (tuple(k.name for k in found), spec, geom, (b, c, h, w), channels_last)
    key += (torch.get_num_threads(),)
    if key not in _CONV_CHOICES:
        x = torch.randn(b, c, h, w)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        states = {k.name: k.prepare(spec, geom, qw, bias, act) for k in found}
        runs = {k.name: functools.partial(k.run, states[k.name], x) for k in found}
        _CONV_CHOICES[key] = fastest(runs, repeats)
    return _CONV_CHOICES[key]


def fastest(runs: dict[str, Callable[[], object]], repeats: int) -> str:
    """The name of the callable with the lowest median time (`interleaved_medians`)."""
    medians = interleaved_medians(runs, repeats)
    return min(medians, key=medians.__getitem__)


def interleaved_medians(
    runs: dict[str, Callable[[], object]],
    repeats: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median seconds of each callable: one warm-up call each (lazy packing, page faults), then
    ``repeats`` rounds, interleaved so drift hits all alike. ``clock`` may be a CPU-time clock
    (``time.thread_time`` with one thread), which a loaded machine does not inflate."""
    for run in runs.values():
        run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = clock()
            run()
            samples[name].append(clock() - t0)
    return {name: statistics.median(s) for name, s in samples.items()}
