"""ggml's CPU matrix multiplication for a weight in a ggml format (``q8_0``, ``q4_k``, ...): the
kernel llama.cpp runs for a linear layer, timed here at a layer's shape next to our own kernels.

``y = x·Wᵀ`` is one ``ggml_mul_mat`` node in a one-node graph over a ggml context that holds ggml's
bytes of the weight (`explorer.quant.ggml.quantize`), the float32 input and the output; the CPU
backend quantizes the input rows to the format's dot-product partner (Q8_0 or Q8_K) and runs its
SIMD dot products with ``n_threads`` threads. It is the plain block layout: llama.cpp's model
loader additionally repacks some formats into interleaved rows (Q4_0 as 4x8/8x8 blocks,
``CPU_REPACK``) where the CPU has the instructions for it; this module does not, so on such CPUs
llama.cpp's own Q4_0 matmul can be faster than what is timed here (the whole-model llama.cpp
numbers do include it).

Imports: `explorer.quant.ggml` (the library and the quantizer).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import numpy as np
import torch

from explorer.quant import ggml


class _InitParams(ctypes.Structure):
    _fields_ = [
        ("mem_size", ctypes.c_size_t),
        ("mem_buffer", ctypes.c_void_p),
        ("no_alloc", ctypes.c_bool),
    ]


class _Cplan(ctypes.Structure):
    """``struct ggml_cplan`` (ggml-cpu.h): the work buffer is ours, allocated once per graph."""

    _fields_ = [
        ("work_size", ctypes.c_size_t),
        ("work_data", ctypes.c_void_p),
        ("n_threads", ctypes.c_int),
        ("threadpool", ctypes.c_void_p),
        ("abort_callback", ctypes.c_void_p),
        ("abort_callback_data", ctypes.c_void_p),
        ("use_ref", ctypes.c_bool),
    ]


@functools.cache
def _libs() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    base = ggml.ggml_base()
    path = next(ggml.library_dir().glob("libggml-cpu.*"), None)
    if path is None:
        raise ggml.GgmlError(f"libggml-cpu is missing from {ggml.library_dir()}")
    cpu = ctypes.CDLL(str(path))
    p = ctypes.c_void_p
    base.ggml_init.restype = p
    base.ggml_init.argtypes = [_InitParams]
    base.ggml_free.argtypes = [p]
    base.ggml_new_tensor_2d.restype = p
    base.ggml_new_tensor_2d.argtypes = [p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    base.ggml_mul_mat.restype = p
    base.ggml_mul_mat.argtypes = [p, p, p]
    base.ggml_new_graph.restype = p
    base.ggml_new_graph.argtypes = [p]
    base.ggml_build_forward_expand.argtypes = [p, p]
    base.ggml_get_data.restype = p
    base.ggml_get_data.argtypes = [p]
    base.ggml_graph_overhead.restype = ctypes.c_size_t
    base.ggml_tensor_overhead.restype = ctypes.c_size_t
    cpu.ggml_graph_plan.restype = _Cplan
    cpu.ggml_graph_plan.argtypes = [p, ctypes.c_int, p]
    cpu.ggml_graph_compute.restype = ctypes.c_int
    cpu.ggml_graph_compute.argtypes = [p, ctypes.POINTER(_Cplan)]
    cpu.ggml_cpu_init()
    return base, cpu


class GgmlLinear:
    """``y = x·Wᵀ`` with ``W`` (N, K) in ``fmt`` as ggml quantized it, for inputs of each row
    count in ``ms`` (one graph per row count, all on the same weight bytes)."""

    def __init__(
        self,
        weight: torch.Tensor | np.ndarray,
        fmt: ggml.GgmlFormat,
        ms: tuple[int, ...] = (1,),
        threads: int | None = None,
    ) -> None:
        base, cpu = _libs()
        data = weight if isinstance(weight, np.ndarray) else ggml.quantize(weight, fmt)
        n = data.shape[0]
        k = data.shape[1] * fmt.block // fmt.block_bytes
        self.fmt, self.n, self.k = fmt, n, k
        self.threads = threads or torch.get_num_threads()
        self.weight_bytes = int(data.nbytes)
        rows = sum(ms)
        size = data.nbytes + 4 * rows * (k + n) + (3 * len(ms) + 1) * base.ggml_tensor_overhead()
        size += len(ms) * base.ggml_graph_overhead() + (1 << 16)
        self._ctx = base.ggml_init(_InitParams(size, None, False))
        if not self._ctx:
            raise ggml.GgmlError(f"ggml_init could not allocate {size} bytes")
        w = base.ggml_new_tensor_2d(self._ctx, fmt.ggml_type, k, n)
        src = np.ascontiguousarray(data)
        ctypes.memmove(base.ggml_get_data(w), src.ctypes.data, src.nbytes)
        self._graphs: dict[int, tuple[int, Any, int, int]] = {}
        self._work: list[Any] = []
        for m in ms:
            x = base.ggml_new_tensor_2d(self._ctx, 0, k, m)  # GGML_TYPE_F32, ne = (k, m)
            y = base.ggml_mul_mat(self._ctx, w, x)  # ne = (n, m): y = x·Wᵀ row by row
            graph = base.ggml_new_graph(self._ctx)
            base.ggml_build_forward_expand(graph, y)
            # the plan's work buffer holds the input rows quantized to the dot product's type
            plan = cpu.ggml_graph_plan(graph, self.threads, None)
            work = np.zeros(max(1, plan.work_size) + 64, dtype=np.uint8)
            plan.work_data = work.ctypes.data + (-work.ctypes.data % 64)
            self._work.append(work)
            self._graphs[m] = (graph, plan, base.ggml_get_data(x), base.ggml_get_data(y))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (m, K) float32 → (m, N) float32."""
        _, cpu = _libs()
        xs = np.ascontiguousarray(x.detach().float().numpy())
        m = xs.shape[0]
        if m not in self._graphs or xs.shape[1] != self.k:
            raise ggml.GgmlError(f"input {xs.shape}: built for ({list(self._graphs)}, {self.k})")
        graph, plan, xp, yp = self._graphs[m]
        ctypes.memmove(xp, xs.ctypes.data, xs.nbytes)
        if cpu.ggml_graph_compute(graph, ctypes.byref(plan)) != 0:
            raise ggml.GgmlError("ggml_graph_compute failed")
        out = np.ctypeslib.as_array((ctypes.c_float * (m * self.n)).from_address(yp))
        return torch.from_numpy(out.reshape(m, self.n).copy())

    def __del__(self) -> None:
        ctx = getattr(self, "_ctx", None)
        if ctx:
            _libs()[0].ggml_free(ctx)
            self._ctx = None
