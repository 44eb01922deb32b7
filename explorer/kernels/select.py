"""Dispatch: which kernels compute a spec, and which of them is fastest for a layer's shape.

Like torchao's autoquant, the choice is made by measurement: every candidate that computes the
same function runs the layer's real weights on an input of the layer's real row count, and the
fastest median wins. Results are cached per (candidates, spec, rows, threads) for the process.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from explorer.kernels.base import ActQParams, LinearKernel, LinearSpec
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
    timed at `MAX_TIMING_ROWS`: the same ranking at a fraction of the cost."""
    rows = min(rows, MAX_TIMING_ROWS)
    found = candidates(spec)
    if not found:
        return None
    if len(found) == 1:
        return found[0].name
    key = (tuple(k.name for k in found), spec, rows, torch.get_num_threads())
    if key in _CHOICES:
        return _CHOICES[key]
    x = torch.randn(rows, spec.k, device=spec.device)
    times = {}
    states = {k.name: k.prepare(spec, qw, bias, act) for k in found}
    for kernel in found:  # warm-up: first calls pay for lazy packing and page faults
        kernel.run(states[kernel.name], x)
    samples: dict[str, list[float]] = {k.name: [] for k in found}
    for _ in range(repeats):  # interleaved, so drift hits every candidate alike
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
