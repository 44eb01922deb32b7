"""The streaming read rate, and the time a layer's bytes predict for it.

A linear layer called on one row (a decode step) does one multiply-add per weight it reads, so no
kernel can run it faster than this machine streams its bytes from memory: *predicted time = bytes
read per call / read rate*. The rate is measured here, not looked up: a plain sum over a buffer
several times the last-level cache (`explorer.kernels.native.byte_sum`, with the threads the model
runs on), the median of a few passes. Where the native library is unavailable a torch sum stands
in, and the rate says so (`ReadRate.method`).

The ratio *measured / predicted* answers the question users ask most, "why is my int8 layer
slower than float?" (`byte_verdict`):

- near 1, the layer is **bound by bytes**: fewer bytes (fewer bits) make it faster;
- well above 1 with few multiply-adds per byte, the time goes into **overhead** that fewer bytes
  do not cut: a fixed cost per call (Python and dispatch, quantizing activations, allocating
  outputs), or a kernel that reads its bytes slower than a plain streaming read;
- well above 1 with many multiply-adds per byte (prefill, convolutions), the arithmetic is the
  bound: the layer is **compute-bound** (the roofline model: Williams, Waterman and Patterson,
  "Roofline: an insightful visual performance model for multicore architectures", CACM 2009);
- well below 1, its bytes came from cache, faster than the streaming rate (a model that fits in
  the last-level cache).

Bytes per call (`layer_bytes`) are the layer's stored tensors (packed weights, scales, zero
points, bias, activation qparams, input scale: exactly what `explorer.measure.size` counts) plus
the activations it reads and writes at the workload's shape (`tensor_bytes`), all as the layer
holds them, not as a kernel may repack them.

Imports: `explorer.machine`, `explorer.kernels.native`, `explorer.nn`,
`explorer.measure.latency`.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from explorer import machine
from explorer.kernels import native
from explorer.measure.latency import timing_lock
from explorer.nn.convert import is_conv1d
from explorer.nn.modules import QuantModule

READ_FACTOR = 4
"""The buffer is this many times the last-level cache, so that the passes stream from memory."""
MAX_READ_BYTES = 1 << 30
"""... but at most 1 GiB (a CPU reporting a huge last-level cache must not exhaust memory)."""
READ_PASSES = 3
NATIVE = "native byte_sum"
TORCH = "torch sum (native kernels unavailable)"

BYTES_BOUND_RATIO = 1.5
"""measured / predicted up to this: the layer runs at about the speed its bytes allow."""
CACHE_RATIO = 0.67
"""measured / predicted below this: faster than memory can stream, so the bytes came from cache."""
COMPUTE_MACS_PER_BYTE = 8.0
"""Multiply-adds per byte read from which a slow layer is called compute-bound: about one core's
fp32 FMA rate (2 x 8 lanes x ~3 GHz = 48 G multiply-adds/s) over one core's share of streaming
bandwidth (~6 GB/s), the ridge point of a roofline of a typical AVX2 x86 core. Decode-step linear
layers do 0.25 (fp32) to 2 (int4) multiply-adds per byte; prefill over 128 tokens, 32 or more."""


@dataclass(frozen=True)
class ReadRate:
    """A measured streaming read rate: ``bytes_per_s`` is the median over ``passes`` reads of a
    ``buffer_bytes`` buffer with ``threads`` threads; ``spread`` is (max - min) / median."""

    bytes_per_s: float
    method: str
    buffer_bytes: int
    passes: int
    threads: int
    spread: float

    @property
    def gbps(self) -> float:
        return self.bytes_per_s / 1e9

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gbps": round(self.gbps, 3)}


def read_buffer_bytes() -> int:
    """`READ_FACTOR` times the last-level cache, at most `MAX_READ_BYTES`."""
    return min(MAX_READ_BYTES, READ_FACTOR * machine.last_level_cache().size_bytes)


def _torch_read(buffer: torch.Tensor) -> Any:
    return buffer.sum()


def measure_read_rate(
    threads: int | None = None,
    *,
    buffer_bytes: int | None = None,
    passes: int = READ_PASSES,
    clock: Callable[[], float] = time.perf_counter,
) -> ReadRate:
    """Measure the streaming read rate (see the module docstring) with ``threads`` threads
    (default: torch's current count), after one warm-up pass that also faults the pages in."""
    if passes < 1:
        raise ValueError(f"passes must be at least 1, got {passes}")
    threads = threads or torch.get_num_threads()
    nbytes = buffer_bytes or read_buffer_bytes()
    # float32 ones: every page is written (no shared zero page), and the torch fallback's sum
    # runs on normal floats, never on slow denormals
    buffer = torch.ones(max(1, nbytes // 4), dtype=torch.float32)
    nbytes = buffer.numel() * 4
    use_native = native.available()
    read = native.byte_sum if use_native else _torch_read
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        read(buffer)
        samples = []
        for _ in range(passes):
            t0 = clock()
            read(buffer)
            samples.append(clock() - t0)
    finally:
        torch.set_num_threads(before)
    median = statistics.median(samples)
    return ReadRate(
        bytes_per_s=nbytes / median if median > 0 else float("inf"),
        method=NATIVE if use_native else TORCH,
        buffer_bytes=nbytes,
        passes=passes,
        threads=threads,
        spread=(max(samples) - min(samples)) / median if median > 0 else 0.0,
    )


@functools.cache
def _cached_rate(threads: int) -> ReadRate:
    with timing_lock():
        return measure_read_rate(threads)


def read_rate(threads: int | None = None) -> ReadRate:
    """`measure_read_rate` once per process and thread count (a sweep's rows share it), under
    the machine-wide timing lock so that no other timing disturbs it."""
    return _cached_rate(threads or torch.get_num_threads())


def clear_cache() -> None:
    """Forget the measured rates (the next `read_rate` measures again)."""
    _cached_rate.cache_clear()


# --- what a layer reads per call -----------------------------------------------------------


def layer_bytes(module: nn.Module) -> int:
    """Bytes of the tensors a layer holds (parameters and buffers, each storage once): packed
    weights, scales, zero points, bias and activation qparams of a quantized layer, the weight
    and bias of a float one."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in (*module.parameters(), *module.buffers()):
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if t.numel() and key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def tensor_bytes(values: Iterable[Any]) -> int:
    """Bytes of the tensors among ``values`` (a call's arguments or outputs; nested tuples and
    lists count, anything else is not read)."""
    total = 0
    for v in values:
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif isinstance(v, (tuple, list)):
            total += tensor_bytes(v)
    return total


def output_channels(module: nn.Module) -> int | None:
    """The weight's output rows: N of an (N, K) linear or (N, C, kh, kw) convolution, quantized
    or float, and of a transformers ``Conv1D`` (stored (K, N)); None for a layer without one."""
    if isinstance(module, QuantModule):
        return int(module.weight_shape[0])
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        return None
    return int(weight.shape[1] if is_conv1d(module) else weight.shape[0])


def weight_elements(module: nn.Module) -> int | None:
    """How many weights the layer applies (N x K), None for a layer without a weight."""
    if isinstance(module, QuantModule):
        return int(module.weight_shape[0] * module.weight_shape[1])
    weight = getattr(module, "weight", None)
    return int(weight.numel()) if isinstance(weight, torch.Tensor) else None


def call_macs(module: nn.Module, output: Any) -> int | None:
    """Multiply-adds of one call of a linear or convolution: each output element is a dot
    product over the weight's K = elements / N entries."""
    n, elements = output_channels(module), weight_elements(module)
    if not isinstance(output, torch.Tensor) or not n or elements is None:
        return None
    return output.numel() * (elements // n)


# --- prediction and verdict ----------------------------------------------------------------


def predicted_ms(read_bytes: float, bytes_per_s: float) -> float:
    """Milliseconds to stream ``read_bytes`` at ``bytes_per_s``."""
    return read_bytes / bytes_per_s * 1e3


def byte_verdict(ratio: float | None, macs_per_byte: float | None) -> str:
    """One phrase for measured / predicted time ``ratio`` (see the module docstring); ``""``
    without a ratio."""
    if ratio is None:
        return ""
    if ratio < CACHE_RATIO:
        return f"from cache: {ratio:.2f}x the byte time"
    if ratio <= BYTES_BOUND_RATIO:
        return "bound by bytes"
    if macs_per_byte is not None and macs_per_byte >= COMPUTE_MACS_PER_BYTE:
        return "compute-bound"
    return f"overhead: {ratio:.1f}x the byte time"


def byte_time(layer: Mapping[str, Any], bytes_per_s: float | None) -> dict[str, Any]:
    """A result row's layer (``read_bytes``, ``activation_bytes``, ``macs`` and ``latency_ms``
    per call, as `explorer.sweep.runner.per_layer` records them) against the bytes at the row's
    read rate: ``bytes_per_call``, ``predicted_ms``, ``ratio`` (measured / predicted) and
    ``verdict``; None where the row lacks a number (old rows, simulated latency)."""
    stored, acts = layer.get("read_bytes"), layer.get("activation_bytes")
    total = None if stored is None or acts is None else stored + acts
    measured = layer.get("latency_ms")
    predicted = None
    if total is not None and bytes_per_s:
        predicted = predicted_ms(total, bytes_per_s)
    ratio = measured / predicted if measured is not None and predicted else None
    macs = layer.get("macs")
    intensity = macs / total if macs is not None and total else None
    return {
        "bytes_per_call": total,
        "predicted_ms": predicted,
        "ratio": ratio,
        "macs_per_byte": intensity,
        "verdict": byte_verdict(ratio, intensity),
    }
