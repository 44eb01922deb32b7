"""ggml's CPU matrix multiplication for a weight in a ggml format (``q8_0``, ``q4_k``, ...): the
kernel llama.cpp runs for a linear layer, timed here at a layer's shape next to our own kernels.

``y = x·Wᵀ`` is one ``ggml_mul_mat`` node in a one-node graph over a ggml context that holds ggml's
bytes of the weight (`explorer.quant.ggml.quantize`), the float32 input and the output; the CPU
backend quantizes the input rows to the format's dot-product partner (Q8_0 or Q8_K) and runs its
SIMD dot products with ``n_threads`` threads.

Layouts: by default the weight sits in ggml's plain block layout (one row of blocks after
another), which ggml multiplies one weight row at a time (``vec_dot``) or through its llamafile
tiles. llama.cpp's model loader instead places the weights it can in the CPU backend's extra
buffer type ``CPU_REPACK``, whose ``set_tensor`` interleaves 8 rows block by block (Q4_0, Q4_K,
Q2_K and IQ4_NL as ``8x8`` on AVX2 CPUs) so that one pass over the quantized input row feeds 8
output rows (``gemv``/``gemm`` instead of ``vec_dot``). ``repack=True`` does the same here: the
weight is allocated in that buffer type and uploaded through it, and the one-node graph then runs
ggml's repacked kernels, which is what llama.cpp runs for those formats; where ggml has no
repacked layout for the format on this CPU, ``repacked`` is False and the plain layout is used.

The libraries are llama-cpp-python's, or another build of the same ggml in the folder
``EXPLORER_GGML_LIB_DIR`` names (`explorer.quant.ggml.library_dir`; e.g. one compiled for AVX2
only, so that ``explorer bench --isa avx2`` times the ggml an AVX2 machine runs).

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


# ``struct ggml_tensor`` (ggml.h): type, buffer, ne[4], nb[4], op, op_params[16], flags, src[10],
# view_src, view_offs, data, name[64], extra; checked against ggml_get_data on every use
_DATA_OFFSET, _EXTRA_OFFSET = 248, 320
REPACK_BUFFER = "CPU_REPACK"


@functools.cache
def _libs() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    # base first, from the same folder (EXPLORER_GGML_LIB_DIR or llama-cpp-python's): the CPU
    # library's libggml-base dependency then binds to that already loaded copy
    base = ggml.ggml_base()
    folder = ggml.library_dir()
    path = next(folder.glob("libggml-cpu.*"), None)
    if path is None:
        raise ggml.GgmlError(f"libggml-cpu is missing from {folder}")
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
    base.ggml_backend_alloc_ctx_tensors_from_buft.restype = p
    base.ggml_backend_alloc_ctx_tensors_from_buft.argtypes = [p, p]
    base.ggml_backend_buffer_free.argtypes = [p]
    base.ggml_backend_tensor_set.argtypes = [p, p, ctypes.c_size_t, ctypes.c_size_t]
    base.ggml_backend_buft_name.restype = ctypes.c_char_p
    base.ggml_backend_buft_name.argtypes = [p]
    base.ggml_backend_reg_dev_get.restype = p
    base.ggml_backend_reg_dev_get.argtypes = [p, ctypes.c_size_t]
    base.ggml_backend_reg_get_proc_address.restype = p
    base.ggml_backend_reg_get_proc_address.argtypes = [p, ctypes.c_char_p]
    cpu.ggml_backend_cpu_reg.restype = p
    cpu.ggml_cpu_init()
    return base, cpu


@functools.cache
def _repack_buffer_type() -> int | None:
    """The CPU backend's ``CPU_REPACK`` buffer type (from the device's extra buffer types, as
    llama.cpp's loader finds it), or None where this build has none."""
    base, cpu = _libs()
    reg = cpu.ggml_backend_cpu_reg()
    dev = base.ggml_backend_reg_dev_get(reg, 0)
    fn = base.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
    if not fn:
        return None
    bufts = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(fn)(dev)
    i = 0
    while bufts and bufts[i]:
        if base.ggml_backend_buft_name(bufts[i]).decode() == REPACK_BUFFER:
            return bufts[i]
        i += 1
    return None


def _field(tensor: int, offset: int) -> int | None:
    return ctypes.c_void_p.from_address(tensor + offset).value


class GgmlLinear:
    """``y = x·Wᵀ`` with ``W`` (N, K) in ``fmt`` as ggml quantized it, for inputs of each row
    count in ``ms`` (one graph per row count, all on the same weight bytes)."""

    def __init__(
        self,
        weight: torch.Tensor | np.ndarray,
        fmt: ggml.GgmlFormat,
        ms: tuple[int, ...] = (1,),
        threads: int | None = None,
        repack: bool = False,
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
        src = np.ascontiguousarray(data)
        self._wctx = self._wbuf = None
        w = self._repacked_weight(src, repack)
        self.repacked = w is not None
        if w is None:
            w = base.ggml_new_tensor_2d(self._ctx, fmt.ggml_type, k, n)
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

    def _repacked_weight(self, src: np.ndarray, repack: bool) -> int | None:
        """The weight as a tensor in the ``CPU_REPACK`` buffer (interleaved by ggml's own
        ``set_tensor``), or None where ggml has no repacked layout for it on this CPU."""
        buft = _repack_buffer_type() if repack else None
        if buft is None:
            return None
        base, _ = _libs()
        self._wctx = base.ggml_init(_InitParams(2 * base.ggml_tensor_overhead(), None, True))
        w = base.ggml_new_tensor_2d(self._wctx, self.fmt.ggml_type, self.k, self.n)
        self._wbuf = base.ggml_backend_alloc_ctx_tensors_from_buft(self._wctx, buft)
        if not self._wbuf:
            raise ggml.GgmlError(f"{REPACK_BUFFER} could not allocate {src.nbytes} bytes")
        if _field(w, _DATA_OFFSET) != base.ggml_get_data(w):
            raise ggml.GgmlError("struct ggml_tensor does not have the layout this module reads")
        # the buffer's init_tensor leaves `extra` (the repacked kernels) empty for a type or
        # shape ggml does not repack on this CPU; set_tensor would then have nothing to call
        if not _field(w, _EXTRA_OFFSET):
            base.ggml_backend_buffer_free(self._wbuf)
            base.ggml_free(self._wctx)
            self._wctx = self._wbuf = None
            return None
        base.ggml_backend_tensor_set(w, src.ctypes.data, 0, src.nbytes)
        return w

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
        if not any(getattr(self, name, None) for name in ("_wbuf", "_wctx", "_ctx")):
            return  # __init__ failed before ggml allocated anything (no library, say)
        base = _libs()[0]
        if getattr(self, "_wbuf", None):
            base.ggml_backend_buffer_free(self._wbuf)
            self._wbuf = None
        for name in ("_wctx", "_ctx"):
            if getattr(self, name, None):
                base.ggml_free(getattr(self, name))
                setattr(self, name, None)
