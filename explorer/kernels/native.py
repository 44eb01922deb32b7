"""Hand-written integer CPU kernels, compiled on first use and loaded with :mod:`ctypes`.

Why: on AVX2-only CPUs (no AVX-512 / VNNI) torch's own low-bit CPU paths are slow
(``_weight_int4pack_mm_for_cpu`` is only ~2.7x faster than fp32 at M=1, ``torch._int_mm`` is
~10x slower than fp32).  ``csrc/qe_kernels.c`` implements three kernels that work directly on
the packed integer weights, so a decode-bound (M=1) linear streams 4x / 8x fewer bytes:

``wo_linear`` -- weight-only quantized linear, float32 activations.
    ``W[n, k] = scales[n, g] * (code[n, k] - zeros[n, g])`` with ``g = k // group_size``.
    4-bit codes are *offset-binary* (unsigned) nibbles ``u in [0, 15]`` packed two per byte,
    element ``2j`` in the low nibble of byte ``j`` and ``2j + 1`` in the high nibble; without
    ``zeros`` the zero point is 8, i.e. symmetric signed codes stored as ``q + 8``.  8-bit codes
    are signed int8 with zero point 0 unless ``zeros`` is given.  The kernel never subtracts the
    zero point in its hot loop: per group it accumulates ``acc = sum_k u_k * x_k`` over the raw
    codes (float32 FMA) and applies ``y += s * acc - s * z * xsum[m, g]`` where
    ``xsum[m, g] = sum_{k in g} x[m, k]`` is computed once per call.  A 32-byte load of codes
    is read as eight 32-bit lanes of eight nibbles each; ``x`` is permuted once per call so that
    nibble position ``t`` of all lanes meets one contiguous vector of ``x``.  At M = 1 a code is
    decoded with one AND + one int->float conversion: a nibble masked in place (the upper
    four after one 16-bit shift of the lane) equals ``u * 16**(t % 4)`` exactly, and the
    ``16**-(t % 4)`` is folded into the permuted copy of ``x`` (exact power-of-two scaling).
    For M > 1 the decode is shared by a 4 x 2 register tile of activation rows x weight rows,
    so batches (M = 8, 32) reuse each decoded weight.  On AVX-512 CPUs a decode step (M = 1,
    K <= 4096) runs zmm row kernels instead: 128-element blocks, eight accumulators, the group
    scale once per group; float32 sums of the same terms (`wo_isa` says which code runs).  Its
    speed is bound by the int->float conversions (one ``vcvtdq2ps`` per 16 codes, two cycles a
    zmm on Zen 4), not by reading the weights.

``int8_gemm`` -- exact ``int8 x int8 -> int32`` matrix product ``xq @ wq.T``.
    It sign-extends both operands to int16 and uses ``vpmaddwd`` (int16 pair products summed
    into int32, exact) rather than ``vpmaddubsw``: the latter multiplies u8 x s8 and *saturates*
    the int16 pair sum, which overflows for the full int8 range (``2 * 128 * 128 = 32768``).
    The result is bit-exact versus int64 arithmetic for every input with ``K <= 131071``.

``w8a8_linear`` -- the same integer core with the dequantization fused in:
    ``y = (acc - x_zero[m] * w_sum[n]) * x_scale[m] * w_scale[n] + bias[n]``.

Instruction-set paths (`ISAS`, chosen at run time with cpuid, forced with `set_isa` for tests):
the int8 and W4A8 kernels of prepared layers read weights repacked into 16-row panels
(`pack_int8`, `pack_int4`: one contiguous stream per layer at M = 1; register tiles for
M > 1) on every path.  ``avx512_vnni`` and ``avx_vnni`` multiply them with ``vpdpbusd`` (64 or
32 int8 products an instruction); ``avx2`` emulates it exactly (``vpmaddubsw`` on 4-bit codes,
whose pair sums cannot saturate; ``vpmovsxbw`` + ``vpmaddwd`` on full-range int8 weights) and
keeps the row-major kernels above for weights given unpacked; ``scalar`` is the portable
reference for both layouts.  `build_info` and every result row record the path taken.

The library is compiled on first use and cached, checksummed, by
:mod:`explorer.kernels.native_build` (no ``-march=native``: AVX2+FMA code is selected at run time,
with a scalar fallback, so the cached ``.so`` is portable; a damaged cached file is detected and
rebuilt instead of crashing the process). Threads: OpenMP, ``torch.get_num_threads()`` per call
(the process reuses torch's ``libgomp.so.1``); work is split over output columns.  The ctypes
calls release the GIL.  Set ``EXPLORER_NATIVE=0`` to disable the native kernels entirely; when
they are unavailable, `unavailable_reason` says why and every kernel entry point raises
:class:`explorer.errors.KernelError` with that reason.

Caveats: the outputs are not differentiable; accumulation is float32 (4-bit codes are
accumulated unsigned and the zero point subtracted per group, so with strongly biased
activations the rounding error is somewhat larger than a signed accumulation would give);
at M = 1 activations below ~1e-34 in magnitude lose precision in the 4-bit kernel (the
``16**-(t % 4)`` pre-scaling makes them subnormal).  Like torch's own OpenMP kernels, a call slows
down sharply when another process occupies one of the cores it uses.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from typing import Any

import torch

from explorer.errors import KernelError
from explorer.kernels import native_build
from explorer.kernels.native_build import cache_dir

__all__ = [
    "ISAS",
    "BoundLinear",
    "PackedInt4",
    "PackedInt8",
    "available",
    "bind_w4a8_packed_dynamic",
    "bind_w8a8_packed_dynamic",
    "build_info",
    "byte_sum",
    "cache_dir",
    "force_scalar",
    "int8_gemm",
    "int8_gemm_packed",
    "isa",
    "isa_supported",
    "missing_isa_features",
    "pack_int4",
    "pack_int8",
    "packed_path",
    "set_isa",
    "supported_isas",
    "unavailable_reason",
    "unpack_int8",
    "w4a8_packed_dynamic_linear",
    "w4a8_packed_linear",
    "w8a8_dynamic_linear",
    "w8a8_linear",
    "w8a8_packed_dynamic_linear",
    "w8a8_packed_linear",
    "weight_row_sums",
    "wo_isa",
    "wo_linear",
]

ISAS: tuple[str, ...] = ("scalar", "avx2", "avx_vnni", "avx512_vnni")
"""The kernels' instruction-set paths in the C library's numbering (``qe_isa``), best last."""
ISA_FEATURES: dict[str, tuple[str, ...]] = {
    "scalar": (),
    "avx2": ("avx2", "fma"),
    "avx_vnni": ("avx2", "fma", "avx_vnni"),
    "avx512_vnni": ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"),
}
"""The ``/proc/cpuinfo`` flags each path needs (the C code asks the CPU itself, with cpuid)."""
PACKED_ISAS = frozenset({"scalar", "avx2", "avx_vnni", "avx512_vnni"})
"""Paths that run the repacked-weight kernels (all of them: AVX2 without VNNI too)."""
_EISA = -3

_MAX_INT8_K = 131071  # K * 128 * 128 must fit in int32

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_INT = ctypes.c_int

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_reason: str | None = None
_tried = False
_info: dict[str, object] = {}


def _declare(lib: ctypes.CDLL) -> None:
    lib.qe_abi_version.restype = _INT
    lib.qe_abi_version.argtypes = []
    lib.qe_isa.restype = _INT
    lib.qe_isa.argtypes = []
    lib.qe_set_isa.restype = _INT
    lib.qe_set_isa.argtypes = [_INT]
    lib.qe_has_openmp.restype = _INT
    lib.qe_has_openmp.argtypes = []
    lib.qe_wo_linear.restype = _INT
    lib.qe_wo_linear.argtypes = [_P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _INT, _INT]
    lib.qe_wo_isa.restype = _INT
    lib.qe_wo_isa.argtypes = [_I64, _I64]
    lib.qe_int8_gemm.restype = _INT
    lib.qe_int8_gemm.argtypes = [_P, _P, _P, _I64, _I64, _I64, _INT]
    lib.qe_w8a8_dyn_linear.restype = _INT
    lib.qe_w8a8_dyn_linear.argtypes = [
        _P,
        _INT,
        _INT,
        ctypes.c_float,
        _P,
        _P,
        _P,
        _P,
        _P,
        _I64,
        _I64,
        _I64,
        _INT,
    ]
    lib.qe_isa_supported.restype = _INT
    lib.qe_isa_supported.argtypes = [_INT]
    lib.qe_i8_packed_bytes.restype = _I64
    lib.qe_i8_packed_bytes.argtypes = [_I64, _I64]
    lib.qe_pack_i8.restype = _INT
    lib.qe_pack_i8.argtypes = [_P, _I64, _I64, _P]
    lib.qe_w4_packed_bytes.restype = _I64
    lib.qe_w4_packed_bytes.argtypes = [_I64, _I64, _I64, _INT]
    lib.qe_pack_w4.restype = _INT
    lib.qe_pack_w4.argtypes = [_P, _P, _P, _I64, _I64, _I64, _P]
    lib.qe_int8_gemm_packed.restype = _INT
    lib.qe_int8_gemm_packed.argtypes = [_P, _P, _P, _I64, _I64, _I64, _INT]
    lib.qe_w8a8_packed_linear.restype = _INT
    lib.qe_w8a8_packed_linear.argtypes = [_P] * 7 + [_I64, _I64, _I64, _INT]
    lib.qe_w8a8_dyn_packed_linear.restype = _INT
    lib.qe_w8a8_dyn_packed_linear.argtypes = (
        [_P, _INT, _INT, ctypes.c_float]
        + [_P] * 4
        + [
            _I64,
            _I64,
            _I64,
            _INT,
        ]
    )
    lib.qe_w4a8_packed_linear.restype = _INT
    lib.qe_w4a8_packed_linear.argtypes = [_P] * 4 + [_INT, _P, _P, _P] + [_I64] * 4 + [_INT]
    lib.qe_w4a8_dyn_packed_linear.restype = _INT
    lib.qe_w4a8_dyn_packed_linear.argtypes = (
        [_P, _INT, _INT, ctypes.c_float, _P, _INT, _P, _P, _P] + [_I64] * 4 + [_INT]
    )
    lib.qe_byte_sum.restype = _I64
    lib.qe_byte_sum.argtypes = [_P, _I64, _INT]
    lib.qe_w8a8_linear.restype = _INT
    lib.qe_w8a8_linear.argtypes = [_P, _P, _P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _INT]
    lib.qe_w4a8_linear.restype = _INT
    lib.qe_w4a8_linear.argtypes = [_P] * 9 + [_I64, _I64, _I64, _I64, _INT]
    lib.qe_w4a8_dyn_linear.restype = _INT
    lib.qe_w4a8_dyn_linear.argtypes = (
        [_P, _INT, _INT, ctypes.c_float]
        + [_P] * 6
        + [
            _I64,
            _I64,
            _I64,
            _I64,
            _INT,
        ]
    )


def _load() -> ctypes.CDLL | None:
    global _lib, _reason, _tried
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        try:
            _lib, _reason = _load_unlocked()
        except Exception as exc:  # never raise from available()
            _lib, _reason = None, f"unexpected error while loading native kernels: {exc!r}"
        _tried = True
    return _lib


def _load_unlocked() -> tuple[ctypes.CDLL | None, str | None]:
    if os.environ.get("EXPLORER_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None, "disabled by EXPLORER_NATIVE=0"
    try:
        source = native_build.source_bytes(native_build.SOURCE)
    except OSError as exc:
        return None, f"kernel source missing: {exc}"
    compiler = native_build.find_compiler()
    errors: list[str] = []
    for flags in native_build.FLAG_VARIANTS:
        built = native_build.ensure_built(source, flags, compiler)
        if isinstance(built, str):
            errors.append(built)
            if compiler is None:
                break
            continue
        try:
            lib = ctypes.CDLL(str(built.path))  # torch (and its libgomp.so.1) is already loaded
            _declare(lib)
        except (OSError, AttributeError) as exc:
            errors.append(f"cannot load {built.path}: {exc}")
            continue
        if lib.qe_abi_version() != native_build.ABI_VERSION:
            errors.append(f"{built.path}: ABI version mismatch")
            continue
        _info.update(
            path=str(built.path),
            sha256=built.sha256,
            flags=" ".join(flags),
            compiler=compiler,
            openmp=bool(lib.qe_has_openmp()),
        )
        if built.compile_seconds is not None:
            _info["compile_seconds"] = built.compile_seconds
        if built.replaced is not None:
            _info["rebuilt_because"] = built.replaced
        return lib, None
    return None, "\n".join(errors) if errors else "unknown error"


def available() -> bool:
    """True if the native library is (or can be) built and loaded.  Never raises."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why the native kernels are unavailable, or None if they are available.  Never raises."""
    _load()
    return _reason


def build_info() -> dict[str, object]:
    """Library path and sha256, flags, compile time (if compiled by this process), the
    instruction-set path the kernels take (one of `ISAS`) and the paths this CPU can run,
    OpenMP; or the reason."""
    lib = _load()
    info = dict(_info)
    info["available"] = lib is not None
    if lib is not None:
        info["isa"] = ISAS[lib.qe_isa()]
        info["isas"] = supported_isas()
    else:
        info["reason"] = _reason
    return info


STAMP_CHARS = 16


def build_stamp() -> dict[str, str] | None:
    """What identifies the kernels a measurement ran on: the loaded library's sha256 (first
    `STAMP_CHARS` hex digits) and its instruction-set path; None when the library is unavailable
    (torch's kernels only). Row keys and model cards record it."""
    info = build_info()
    if not info["available"]:
        return None
    return {"build": str(info["sha256"])[:STAMP_CHARS], "isa": str(info["isa"])}


def isa() -> str:
    """The instruction-set path the kernels take now (one of `ISAS`)."""
    return ISAS[_get().qe_isa()]


WO_ISAS: dict[int, str] = {0: "scalar", 1: "avx2", 3: "avx512"}
"""The code `wo_linear` runs (``qe_wo_isa``), by the C library's path number."""


def wo_isa(m: int = 1, k: int = 4096) -> str:
    """The code `wo_linear` runs for ``m`` activation rows of length ``k`` on the path taken now:
    ``avx512`` (AVX-512F row kernels: M = 1 with K <= 4096 on the avx512_vnni path), ``avx2``
    (every other shape on a SIMD path) or ``scalar``."""
    return WO_ISAS[_get().qe_wo_isa(m, k)]


def isa_supported(name: str) -> bool:
    """Whether this CPU can run path ``name`` (the C library asks the CPU with cpuid)."""
    if name not in ISAS:
        raise ValueError(f"unknown instruction-set path {name!r}; known: {', '.join(ISAS)}")
    return bool(_get().qe_isa_supported(ISAS.index(name)))


def supported_isas() -> list[str]:
    """The paths this CPU can run, scalar first."""
    lib = _get()
    return [name for i, name in enumerate(ISAS) if lib.qe_isa_supported(i)]


def missing_isa_features(name: str) -> list[str]:
    """The ``/proc/cpuinfo`` flags path ``name`` needs that this CPU does not list."""
    from explorer.machine import cpu_flags

    flags = cpu_flags()
    return [f for f in ISA_FEATURES[name] if f not in flags]


def set_isa(name: str | None) -> str:
    """Force path ``name`` (``None``: the best this CPU has, the default); returns the path now
    taken.  A path the CPU lacks is refused with the flags it misses."""
    lib = _get()
    if name is None:
        return ISAS[lib.qe_set_isa(-1)]
    if not isa_supported(name):
        missing = missing_isa_features(name) or ["a feature cpuid does not report"]
        raise KernelError(
            f"cannot force the {name} kernels: {', '.join(missing)} not in /proc/cpuinfo flags"
        )
    return ISAS[lib.qe_set_isa(ISAS.index(name))]


def force_scalar(enabled: bool) -> None:
    """Force the portable scalar kernels (testing aid); ``False`` restores auto-detection."""
    set_isa("scalar" if enabled else None)


def packed_path() -> bool:
    """Whether prepared layers should hold repacked weights (`pack_int8`, `pack_int4`): on
    every SIMD path (AVX2, AVX-VNNI, AVX-512 VNNI); the portable scalar path reads both
    layouts and keeps the row-major one."""
    return isa() in PACKED_ISAS - {"scalar"}


def _get() -> ctypes.CDLL:
    lib = _lib if _tried else _load()
    if lib is None:
        raise KernelError(f"native kernels unavailable: {_reason}")
    return lib


def library() -> ctypes.CDLL:
    """The loaded linear-kernel library (its ctypes handle), for modules that bind their own
    entry points of it (`explorer.kernels.lowbit`); `KernelError` when it is unavailable."""
    return _get()


# ----------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------


def _bad_tensor(name: str, t: object, dtype: torch.dtype) -> ValueError:
    """The error for a ``t`` that is not a cpu tensor of ``dtype`` (slow path only)."""
    if not isinstance(t, torch.Tensor):
        return ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        return ValueError(f"{name} must have dtype {dtype}, got {t.dtype}")
    return ValueError(f"{name} must be on the cpu, got device {t.device}")


def _tensor(name: str, t: object, dtype: torch.dtype) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dtype != dtype or not t.is_cpu:
        raise _bad_tensor(name, t, dtype)
    return t


def _dense(name: str, t: object, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dtype != dtype or not t.is_cpu:
        raise _bad_tensor(name, t, dtype)
    if t.shape != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (got strides {t.stride()})")
    return t


def _vector(name: str, t: object, dtype: torch.dtype, n: int, allow_scalar: bool) -> torch.Tensor:
    """A length-n vector; accepts any shape with n elements (or 1 if allow_scalar)."""
    t = _tensor(name, t, dtype)
    numel = t.numel()
    if numel == n:
        if t.dim() != 1:
            t = t.reshape(n)
    elif allow_scalar and numel == 1:
        t = t.reshape(1).expand(n)
    else:
        want = f"{n} elements" + (" (or 1)" if allow_scalar else "")
        raise ValueError(f"{name} must have {want}, got shape {list(t.shape)}")
    return t if t.is_contiguous() else t.contiguous()


def _activation(name: str, t: object, dtype: torch.dtype) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dtype != dtype or not t.is_cpu:
        raise _bad_tensor(name, t, dtype)
    if t.dim() < 1:
        raise ValueError(f"{name} must have at least one dimension, got shape {list(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (got strides {t.stride()})")
    return t


def _matrix(name: str, t: object, dtype: torch.dtype, cols: int, what: str) -> torch.Tensor:
    """A contiguous 2-D cpu tensor [rows, cols] of dtype (any number of rows)."""
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        shape = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a 2-D tensor {what}, got {shape}")
    return _dense(name, t, dtype, (t.shape[0], cols))


def _check_rc(rc: int, fn: str) -> None:
    if rc == _EISA:
        raise KernelError(
            f"native kernel {fn} reads repacked weights, which the {isa()} path does not; "
            f"use the row-major weights or one of {', '.join(sorted(PACKED_ISAS))}"
        )
    if rc != 0:
        raise KernelError(f"native kernel {fn} failed with status {rc}")


# ----------------------------------------------------------------------------------------
# public kernels
# ----------------------------------------------------------------------------------------


def wo_linear(
    x: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    *,
    bits: int,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weight-only quantized linear: ``x @ W.T + bias`` with float32 ``x`` [..., K].

    ``W[n, k] = scales[n, k // G] * (code[n, k] - zeros[n, k // G])``.

    * ``bits=4``: ``codes`` uint8 [N, K/2], unsigned nibbles (low nibble = even k);
      ``zeros=None`` means zero point 8.
    * ``bits=8``: ``codes`` int8 [N, K]; ``zeros=None`` means zero point 0.

    ``scales`` / ``zeros`` are float32 [N, K/G]; ``bias`` float32 [N].  ``group_size`` must
    divide K and be a multiple of 32, or equal K (per-channel).  Returns float32 [..., N].
    """
    lib = _get()
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    x = _activation("x", x, torch.float32)
    k = x.shape[-1]
    if k <= 0:
        raise ValueError(f"x must have a positive last dimension K, got shape {list(x.shape)}")
    if not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if k % group_size != 0:
        raise ValueError(f"group_size={group_size} must divide K={k}")
    if group_size != k and group_size % 32 != 0:
        raise ValueError(f"group_size={group_size} must be a multiple of 32 or equal K={k}")
    if bits == 4 and k % 2 != 0:
        raise ValueError(f"4-bit codes need an even K, got K={k}")
    if bits == 4:
        codes = _matrix("codes", codes, torch.uint8, k // 2, "[N, K/2]")
    else:
        codes = _matrix("codes", codes, torch.int8, k, "[N, K]")
    n = codes.shape[0]
    ng = k // group_size
    scales = _dense("scales", scales, torch.float32, (n, ng))
    zptr = None
    if zeros is not None:
        zptr = _dense("zeros", zeros, torch.float32, (n, ng)).data_ptr()
    bptr = None
    if bias is not None:
        bptr = _dense("bias", bias, torch.float32, (n,)).data_ptr()
    lead = x.shape[:-1]
    m = x.numel() // k
    y = torch.empty((*lead, n), dtype=torch.float32)
    if m == 0 or n == 0:
        return y
    rc = lib.qe_wo_linear(
        x.data_ptr(),
        codes.data_ptr(),
        scales.data_ptr(),
        zptr,
        bptr,
        y.data_ptr(),
        m,
        n,
        k,
        group_size,
        bits,
        torch.get_num_threads(),
    )
    _check_rc(rc, "qe_wo_linear")
    return y


def int8_gemm(xq: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
    """Exact ``xq @ wq.T`` for int8 ``xq`` [M, K] and ``wq`` [N, K]; returns int32 [M, N].

    Bit-exact versus int64 arithmetic for all int8 inputs (K <= 131071).
    """
    lib = _get()
    xq = _tensor("xq", xq, torch.int8)
    if xq.dim() != 2:
        raise ValueError(f"xq must be 2-D [M, K], got shape {list(xq.shape)}")
    m, k = xq.shape
    if not xq.is_contiguous():
        raise ValueError(f"xq must be contiguous (got strides {xq.stride()})")
    wq = _matrix("wq", wq, torch.int8, k, "[N, K]")
    n = wq.shape[0]
    if k > _MAX_INT8_K:
        raise ValueError(f"K={k} exceeds {_MAX_INT8_K}: int32 accumulation could overflow")
    out = torch.empty((m, n), dtype=torch.int32)
    if m == 0 or n == 0:
        return out
    rc = lib.qe_int8_gemm(
        xq.data_ptr(), wq.data_ptr(), out.data_ptr(), m, n, k, torch.get_num_threads()
    )
    _check_rc(rc, "qe_int8_gemm")
    return out


def _int8_rows(name: str, t: object, dtype: torch.dtype) -> tuple[torch.Tensor, int, int]:
    """Activations ``[..., K]`` of an int8 kernel, checked; returns them, M and K."""
    t = _activation(name, t, dtype)
    k = t.shape[-1]
    if k <= 0:
        raise ValueError(f"{name} must have a positive last dimension K, got shape {list(t.shape)}")
    if k > _MAX_INT8_K:
        raise ValueError(f"K={k} exceeds {_MAX_INT8_K}: int32 accumulation could overflow")
    return t, t.numel() // k, k


def w8a8_linear(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    x_zero: torch.Tensor | None,
    wq: torch.Tensor,
    w_scale: torch.Tensor,
    w_sum: torch.Tensor | None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Int8 activations x int8 weights with fused dequantization; float32 [..., N].

    ``y[m, n] = (sum_k xq[m, k] * wq[n, k] - x_zero[m] * w_sum[n]) * x_scale[m] * w_scale[n]
    + bias[n]``.  ``xq`` int8 [..., K] (leading dims are flattened into M); ``x_scale``
    float32 with M elements or 1 (per-tensor); ``x_zero`` int32 with M elements or 1, or None
    (symmetric); ``wq`` int8 [N, K]; ``w_scale`` float32 [N]; ``w_sum`` int32 [N] =
    ``wq.sum(1)`` (see :func:`weight_row_sums`), required when ``x_zero`` is given.
    """
    lib = _get()
    xq, m, k = _int8_rows("xq", xq, torch.int8)
    wq = _matrix("wq", wq, torch.int8, k, "[N, K]")
    n = wq.shape[0]
    x_scale = _vector("x_scale", x_scale, torch.float32, m, allow_scalar=True)
    w_scale = _vector("w_scale", w_scale, torch.float32, n, allow_scalar=True)
    zptr = sptr = bptr = None
    if x_zero is not None:
        x_zero = _vector("x_zero", x_zero, torch.int32, m, allow_scalar=True)
        zptr = x_zero.data_ptr()
        if w_sum is None:
            raise ValueError("w_sum is required when x_zero is given (use weight_row_sums(wq))")
    if w_sum is not None:
        w_sum = _vector("w_sum", w_sum, torch.int32, n, allow_scalar=False)
        sptr = w_sum.data_ptr()
    if bias is not None:
        bptr = _dense("bias", bias, torch.float32, (n,)).data_ptr()
    y = torch.empty((*xq.shape[:-1], n), dtype=torch.float32)
    if m == 0 or n == 0:
        return y
    rc = lib.qe_w8a8_linear(
        xq.data_ptr(),
        x_scale.data_ptr(),
        zptr,
        wq.data_ptr(),
        w_scale.data_ptr(),
        sptr,
        bptr,
        y.data_ptr(),
        m,
        n,
        k,
        torch.get_num_threads(),
    )
    _check_rc(rc, "qe_w8a8_linear")
    return y


def w8a8_dynamic_linear(
    x: torch.Tensor,
    wq: torch.Tensor,
    w_scale: torch.Tensor,
    w_sum: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    *,
    per_token: bool,
    symmetric: bool,
    eps: float,
) -> torch.Tensor:
    """:func:`w8a8_linear` with the dynamic 8-bit activation quantization done in C.

    ``x`` float32 [..., K] is quantized per token (each row of the flattened ``[M, K]``) or per
    tensor, symmetric or asymmetric, with exactly the arithmetic of
    :func:`explorer.quant.primitives.choose_qparams` / ``quantize`` (float32 division, round half
    to even, scales clamped to ``eps``), so the codes and the outputs equal those of quantizing in
    torch and calling :func:`w8a8_linear`, without the ~10 torch operations per call.
    ``w_sum`` is required for asymmetric activations.
    """
    lib = _get()
    x, m, k = _int8_rows("x", x, torch.float32)
    wq = _matrix("wq", wq, torch.int8, k, "[N, K]")
    n = wq.shape[0]
    w_scale = _vector("w_scale", w_scale, torch.float32, n, allow_scalar=True)
    sptr = bptr = None
    if w_sum is not None:
        w_sum = _vector("w_sum", w_sum, torch.int32, n, allow_scalar=False)
        sptr = w_sum.data_ptr()
    elif not symmetric:
        raise ValueError("w_sum is required for asymmetric activations (use weight_row_sums(wq))")
    if bias is not None:
        bptr = _dense("bias", bias, torch.float32, (n,)).data_ptr()
    y = torch.empty((*x.shape[:-1], n), dtype=torch.float32)
    if m == 0 or n == 0:
        return y
    rc = lib.qe_w8a8_dyn_linear(
        x.data_ptr(),
        int(per_token),
        int(symmetric),
        eps,
        wq.data_ptr(),
        w_scale.data_ptr(),
        sptr,
        bptr,
        y.data_ptr(),
        m,
        n,
        k,
        torch.get_num_threads(),
    )
    _check_rc(rc, "qe_w8a8_dyn_linear")
    return y


def _w4_weights(
    k: int,
    codes: torch.Tensor,
    w_scale: torch.Tensor,
    w_zero_scaled: torch.Tensor,
    zero_term: torch.Tensor | None,
    group_size: int,
    bias: torch.Tensor | None,
) -> tuple[int, tuple[int | None, ...]]:
    """The weight-side arguments of the W4A8 kernels, checked: N and the five pointers."""
    if k % 32 or group_size <= 0 or group_size % 32 or k % group_size:
        raise ValueError(
            f"K={k} and group_size={group_size} must be multiples of 32, the group dividing K"
        )
    codes = _matrix("codes", codes, torch.uint8, k // 2, "[N, K/2]")
    n, ng = codes.shape[0], k // group_size
    w_scale = _dense("w_scale", w_scale, torch.float32, (n, ng))
    w_zero_scaled = _dense("w_zero_scaled", w_zero_scaled, torch.float32, (n, ng))
    cptr = None if zero_term is None else _dense("zero_term", zero_term, torch.float32, (n,))
    bptr = None if bias is None else _dense("bias", bias, torch.float32, (n,))
    return n, tuple(
        None if t is None else t.data_ptr() for t in (codes, w_scale, w_zero_scaled, cptr, bptr)
    )


def w4a8_linear(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    x_zero: torch.Tensor | None,
    codes: torch.Tensor,
    w_scale: torch.Tensor,
    w_zero_scaled: torch.Tensor,
    zero_term: torch.Tensor | None,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Int8 activations x packed int4 weights (one scale per group), float32 [..., N].

    With ``W[n, k] = w_scale[n, g] * (code[n, k] - z[n, g])`` (``g = k // group_size``) and
    ``x[m, k] = x_scale[m] * (xq[m, k] - x_zero[m])``, returns ``x @ W.T + bias`` computed as
    exact per-group integer dot products of the codes (see ``qe_w4a8_linear``). ``xq`` int8
    [..., K]; ``x_scale`` float32 with M elements or 1; ``x_zero`` int32 with M elements or 1,
    or None (symmetric); ``codes`` uint8 [N, K/2], two nibbles a byte, element 2j low;
    ``w_scale`` float32 [N, K/G]; ``w_zero_scaled`` = ``w_scale * z`` [N, K/G];
    ``zero_term`` float32 [N] = ``sum_g w_scale * (sum_k code - G * z)`` (required with
    ``x_zero``). K and ``group_size`` must be multiples of 32.
    """
    lib = _get()
    xq, m, k = _int8_rows("xq", xq, torch.int8)
    x_scale = _vector("x_scale", x_scale, torch.float32, m, allow_scalar=True)
    zptr = None
    if x_zero is not None:
        x_zero = _vector("x_zero", x_zero, torch.int32, m, allow_scalar=True)
        zptr = x_zero.data_ptr()
        if zero_term is None:
            raise ValueError("zero_term is required when x_zero is given")
    n, weights = _w4_weights(k, codes, w_scale, w_zero_scaled, zero_term, group_size, bias)
    y = torch.empty((*xq.shape[:-1], n), dtype=torch.float32)
    if m == 0 or n == 0:
        return y
    rc = lib.qe_w4a8_linear(
        xq.data_ptr(),
        x_scale.data_ptr(),
        zptr,
        *weights,
        y.data_ptr(),
        m,
        n,
        k,
        group_size,
        torch.get_num_threads(),
    )
    _check_rc(rc, "qe_w4a8_linear")
    return y


def w4a8_dynamic_linear(
    x: torch.Tensor,
    codes: torch.Tensor,
    w_scale: torch.Tensor,
    w_zero_scaled: torch.Tensor,
    zero_term: torch.Tensor | None,
    group_size: int,
    bias: torch.Tensor | None = None,
    *,
    per_token: bool = True,
    symmetric: bool = True,
    eps: float,
) -> torch.Tensor:
    """:func:`w4a8_linear` on float32 activations ``x`` [..., K] quantized to int8 in C, per
    token (row) or per tensor, with the arithmetic of :func:`w8a8_dynamic_linear`."""
    lib = _get()
    x = _activation("x", x, torch.float32)
    k = x.shape[-1]
    if k > _MAX_INT8_K:
        raise ValueError(f"K={k} exceeds {_MAX_INT8_K}: int32 accumulation could overflow")
    m = x.numel() // k
    if zero_term is None and not symmetric:
        raise ValueError("zero_term is required for asymmetric activations")
    n, weights = _w4_weights(k, codes, w_scale, w_zero_scaled, zero_term, group_size, bias)
    y = torch.empty((*x.shape[:-1], n), dtype=torch.float32)
    if m == 0 or n == 0:
        return y
    rc = lib.qe_w4a8_dyn_linear(
        x.data_ptr(),
        int(per_token),
        int(symmetric),
        eps,
        *weights,
        y.data_ptr(),
        m,
        n,
        k,
        group_size,
        torch.get_num_threads(),
    )
    _check_rc(rc, "qe_w4a8_dyn_linear")
    return y


# ----------------------------------------------------------------------------------------
# repacked weights (interleaved row panels, see "Repacked weights" in qe_kernels.c)
# ----------------------------------------------------------------------------------------

PANEL_ROWS = 16


@dataclass(frozen=True)
class PackedInt8:
    """int8 weights [n, k] repacked into panels of 16 rows, K interleaved by 4 (the operand of
    one ``vpdpbusd``), with their int32 row sums; made by `pack_int8`."""

    data: torch.Tensor  # uint8, qe_i8_packed_bytes(n, k)
    n: int
    k: int


@dataclass(frozen=True)
class PackedInt4:
    """4-bit codes [n, k] repacked into panels of 16 rows, 8 elements per 4 bytes, with the
    group scales (and scale x zero point when ``asym``) in panel order; made by `pack_int4`."""

    data: torch.Tensor  # uint8, qe_w4_packed_bytes(n, k, group, asym)
    n: int
    k: int
    group: int
    asym: bool


def pack_int8(wq: torch.Tensor) -> PackedInt8:
    """Repack int8 weights ``wq`` [N, K] for the panel kernels (done once per layer)."""
    lib = _get()
    wq = _tensor("wq", wq, torch.int8)
    if wq.dim() != 2 or wq.shape[0] == 0 or wq.shape[1] == 0:
        raise ValueError(f"wq must be a non-empty 2-D tensor [N, K], got {list(wq.shape)}")
    n, k = wq.shape
    if k > _MAX_INT8_K:
        raise ValueError(f"K={k} exceeds {_MAX_INT8_K}: int32 accumulation could overflow")
    wq = wq.contiguous()
    data = torch.empty(lib.qe_i8_packed_bytes(n, k), dtype=torch.uint8)
    _check_rc(lib.qe_pack_i8(wq.data_ptr(), n, k, data.data_ptr()), "qe_pack_i8")
    return PackedInt8(data, n, k)


def unpack_int8(packed: PackedInt8) -> torch.Tensor:
    """The row-major int8 weights [N, K] back from `pack_int8`'s layout (for the row-major
    kernels)."""
    n, k = packed.n, packed.k
    panels, k4 = -(-n // PANEL_ROWS), -(-k // 4)
    codes = packed.data[: panels * k4 * PANEL_ROWS * 4].view(torch.int8)
    rows = codes.reshape(panels, k4, PANEL_ROWS, 4).permute(0, 2, 1, 3)
    return rows.reshape(panels * PANEL_ROWS, k4 * 4)[:n, :k].contiguous()


def pack_int4(
    codes: torch.Tensor, w_scale: torch.Tensor, w_zero_scaled: torch.Tensor | None, group_size: int
) -> PackedInt4:
    """Repack 4-bit ``codes`` uint8 [N, K/2] (element 2j in the low nibble of byte j) with their
    ``w_scale`` [N, K/G] and, for asymmetric weights, ``w_zero_scaled`` = scale x zero point
    (``None``: symmetric, zero point 8) for the panel W4A8 kernels (done once per layer)."""
    lib = _get()
    if not isinstance(codes, torch.Tensor) or codes.dim() != 2:
        raise ValueError("codes must be a 2-D tensor [N, K/2]")
    n, k = codes.shape[0], 2 * codes.shape[1]
    _w4_weights(
        k,
        codes,
        w_scale,
        w_scale if w_zero_scaled is None else w_zero_scaled,
        None,
        group_size,
        None,
    )
    asym = w_zero_scaled is not None
    data = torch.empty(lib.qe_w4_packed_bytes(n, k, group_size, int(asym)), dtype=torch.uint8)
    rc = lib.qe_pack_w4(
        codes.data_ptr(),
        w_scale.data_ptr(),
        w_zero_scaled.data_ptr() if asym else None,
        n,
        k,
        group_size,
        data.data_ptr(),
    )
    _check_rc(rc, "qe_pack_w4")
    return PackedInt4(data, n, k, group_size, asym)


def _packed(name: str, p: object, kind: type, k: int) -> Any:
    if not isinstance(p, kind):
        raise ValueError(f"{name} must be a {kind.__name__}, got {type(p).__name__}")
    if p.k != k:
        raise ValueError(f"{name} holds K={p.k} but the activations have K={k}")
    return p


def int8_gemm_packed(xq: torch.Tensor, packed: PackedInt8) -> torch.Tensor:
    """`int8_gemm` on weights repacked by `pack_int8` (exact, int32 [M, N])."""
    lib = _get()
    xq, m, k = _int8_rows("xq", xq, torch.int8)
    packed = _packed("packed", packed, PackedInt8, k)
    out = torch.empty((*xq.shape[:-1], packed.n), dtype=torch.int32)
    if m == 0:
        return out
    rc = lib.qe_int8_gemm_packed(
        xq.data_ptr(),
        packed.data.data_ptr(),
        out.data_ptr(),
        m,
        packed.n,
        k,
        torch.get_num_threads(),
    )
    _check_rc(rc, "qe_int8_gemm_packed")
    return out


def w8a8_packed_linear(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    x_zero: torch.Tensor | None,
    packed: PackedInt8,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """`w8a8_linear` on weights repacked by `pack_int8` (which holds the row sums)."""
    lib = _get()
    xq, m, k = _int8_rows("xq", xq, torch.int8)
    packed = _packed("packed", packed, PackedInt8, k)
    n = packed.n
    x_scale = _vector("x_scale", x_scale, torch.float32, m, allow_scalar=True)
    w_scale = _vector("w_scale", w_scale, torch.float32, n, allow_scalar=True)
    zptr = None
    if x_zero is not None:
        zptr = _vector("x_zero", x_zero, torch.int32, m, allow_scalar=True).data_ptr()
    bptr = None if bias is None else _dense("bias", bias, torch.float32, (n,)).data_ptr()
    y = torch.empty((*xq.shape[:-1], n), dtype=torch.float32)
    if m == 0:
        return y
    rc = lib.qe_w8a8_packed_linear(
        xq.data_ptr(),
        x_scale.data_ptr(),
        zptr,
        packed.data.data_ptr(),
        w_scale.data_ptr(),
        bptr,
        y.data_ptr(),
        m,
        n,
        k,
        torch.get_num_threads(),
    )
    _check_rc(rc, "qe_w8a8_packed_linear")
    return y


def w8a8_packed_dynamic_linear(
    x: torch.Tensor,
    packed: PackedInt8,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    per_token: bool,
    symmetric: bool,
    eps: float,
) -> torch.Tensor:
    """`w8a8_dynamic_linear` on weights repacked by `pack_int8`."""
    lib = _get()
    x, m, k = _int8_rows("x", x, torch.float32)
    packed = _packed("packed", packed, PackedInt8, k)
    n = packed.n
    w_scale = _vector("w_scale", w_scale, torch.float32, n, allow_scalar=True)
    bptr = None if bias is None else _dense("bias", bias, torch.float32, (n,)).data_ptr()
    y = torch.empty((*x.shape[:-1], n), dtype=torch.float32)
    if m == 0:
        return y
    rc = lib.qe_w8a8_dyn_packed_linear(
        x.data_ptr(),
        int(per_token),
        int(symmetric),
        eps,
        packed.data.data_ptr(),
        w_scale.data_ptr(),
        bptr,
        y.data_ptr(),
        m,
        n,
        k,
        torch.get_num_threads(),
    )
    _check_rc(rc, "qe_w8a8_dyn_packed_linear")
    return y


def _w4_packed_args(
    packed: PackedInt4, k: int, zero_term: torch.Tensor | None, bias: torch.Tensor | None
) -> tuple[int | None, ...]:
    packed = _packed("packed", packed, PackedInt4, k)
    n = packed.n
    cptr = None if zero_term is None else _dense("zero_term", zero_term, torch.float32, (n,))
    bptr = None if bias is None else _dense("bias", bias, torch.float32, (n,))
    return (
        packed.data.data_ptr(),
        int(packed.asym),
        None if cptr is None else cptr.data_ptr(),
        None if bptr is None else bptr.data_ptr(),
    )


def w4a8_packed_linear(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    x_zero: torch.Tensor | None,
    packed: PackedInt4,
    zero_term: torch.Tensor | None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """`w4a8_linear` on weights repacked by `pack_int4` (which holds the scales)."""
    lib = _get()
    xq, m, k = _int8_rows("xq", xq, torch.int8)
    x_scale = _vector("x_scale", x_scale, torch.float32, m, allow_scalar=True)
    zptr = None
    if x_zero is not None:
        zptr = _vector("x_zero", x_zero, torch.int32, m, allow_scalar=True).data_ptr()
        if zero_term is None:
            raise ValueError("zero_term is required when x_zero is given")
    args = _w4_packed_args(packed, k, zero_term, bias)
    y = torch.empty((*xq.shape[:-1], packed.n), dtype=torch.float32)
    if m == 0:
        return y
    rc = lib.qe_w4a8_packed_linear(
        xq.data_ptr(),
        x_scale.data_ptr(),
        zptr,
        *args,
        y.data_ptr(),
        m,
        packed.n,
        k,
        packed.group,
        torch.get_num_threads(),
    )
    _check_rc(rc, "qe_w4a8_packed_linear")
    return y


def w4a8_packed_dynamic_linear(
    x: torch.Tensor,
    packed: PackedInt4,
    zero_term: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    *,
    per_token: bool = True,
    symmetric: bool = True,
    eps: float,
) -> torch.Tensor:
    """`w4a8_dynamic_linear` on weights repacked by `pack_int4`."""
    lib = _get()
    x, m, k = _int8_rows("x", x, torch.float32)
    if zero_term is None and not symmetric:
        raise ValueError("zero_term is required for asymmetric activations")
    args = _w4_packed_args(packed, k, zero_term, bias)
    y = torch.empty((*x.shape[:-1], packed.n), dtype=torch.float32)
    if m == 0:
        return y
    rc = lib.qe_w4a8_dyn_packed_linear(
        x.data_ptr(),
        int(per_token),
        int(symmetric),
        eps,
        *args,
        y.data_ptr(),
        m,
        packed.n,
        k,
        packed.group,
        torch.get_num_threads(),
    )
    _check_rc(rc, "qe_w4a8_dyn_packed_linear")
    return y


class BoundLinear:
    """A repacked layer's dynamic-activation call with its weight-side arguments checked once
    (at prepare time), so that each call checks only the activations: the per-layer cost a
    decode step pays (about half of a checked call's Python time)."""

    def __init__(self, fn: str, n: int, k: int, head: tuple, tail: tuple, keep: tuple) -> None:
        self._fn = getattr(_get(), fn)
        self._name = fn
        self.n, self.k = n, k
        self._head, self._tail = head, tail  # arguments before and after the output pointer
        self._keep = keep  # the tensors the pointers point into

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or not x.is_contiguous():
            x = x.float().contiguous()
        if not x.is_cpu:
            raise _bad_tensor("x", x, torch.float32)
        k = x.shape[-1] if x.dim() else 0
        if k != self.k:
            raise ValueError(f"x must have last dimension K={self.k}, got shape {list(x.shape)}")
        m = x.numel() // k
        y = torch.empty((*x.shape[:-1], self.n), dtype=torch.float32)
        if m:
            rc = self._fn(
                x.data_ptr(),
                *self._head,
                y.data_ptr(),
                m,
                self.n,
                *self._tail,
                torch.get_num_threads(),
            )
            _check_rc(rc, self._name)
        return y


def bind_w8a8_packed_dynamic(
    packed: PackedInt8,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    per_token: bool,
    symmetric: bool,
    eps: float,
) -> BoundLinear:
    """`w8a8_packed_dynamic_linear` with everything but ``x`` bound (see `BoundLinear`)."""
    n, k = packed.n, packed.k
    w_scale = _vector("w_scale", w_scale, torch.float32, n, allow_scalar=True).contiguous()
    bias = None if bias is None else _dense("bias", bias, torch.float32, (n,))
    head = (
        int(per_token),
        int(symmetric),
        eps,
        packed.data.data_ptr(),
        w_scale.data_ptr(),
        None if bias is None else bias.data_ptr(),
    )
    return BoundLinear("qe_w8a8_dyn_packed_linear", n, k, head, (k,), (packed, w_scale, bias))


def bind_w4a8_packed_dynamic(
    packed: PackedInt4,
    zero_term: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    per_token: bool,
    symmetric: bool,
    eps: float,
) -> BoundLinear:
    """`w4a8_packed_dynamic_linear` with everything but ``x`` bound (see `BoundLinear`)."""
    if zero_term is None and not symmetric:
        raise ValueError("zero_term is required for asymmetric activations")
    head = (
        int(per_token),
        int(symmetric),
        eps,
        *_w4_packed_args(packed, packed.k, zero_term, bias),
    )
    return BoundLinear(
        "qe_w4a8_dyn_packed_linear",
        packed.n,
        packed.k,
        head,
        (packed.k, packed.group),
        (packed, zero_term, bias),
    )


def byte_sum(t: torch.Tensor) -> int:
    """Sum of the bytes of a contiguous CPU tensor read as unsigned 8-bit values.

    A plain streaming read with ``torch.get_num_threads()`` threads: :mod:`explorer.measure.bench`
    times it as the memory-bandwidth floor of the kernels that stream weights.
    """
    lib = _get()
    if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError("byte_sum needs a contiguous CPU tensor")
    nbytes = t.numel() * t.element_size()
    return int(lib.qe_byte_sum(t.data_ptr(), nbytes, torch.get_num_threads())) if nbytes else 0


def weight_row_sums(wq: torch.Tensor) -> torch.Tensor:
    """``w_sum`` for :func:`w8a8_linear`: int32 [N] row sums of int8 ``wq`` [N, K]."""
    wq = _tensor("wq", wq, torch.int8)
    if wq.dim() != 2:
        raise ValueError(f"wq must be 2-D [N, K], got shape {list(wq.shape)}")
    return wq.sum(dim=1, dtype=torch.int32)


def main() -> int:
    """``python -m explorer.kernels.native``: build (or verify) the cached library and print its
    build info as JSON; exit 1 with the reason on stderr when the kernels are unavailable (the
    Docker image runs it at build time so that no user request waits for a compiler)."""
    import json
    import sys

    info = build_info()
    if not info["available"]:
        print(f"native kernels unavailable: {info.get('reason')}", file=sys.stderr)
        return 1
    print(json.dumps(info, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
