"""2- and 3-bit weight-only linear kernels (``int2-wo-native``, ``int3-wo-native``).

``csrc/qe_lowbit.c`` (compiled into the native linear library, `explorer.kernels.native`)
computes ``y = x · Wᵀ + b`` with ``W[n, k] = s[n, g] · (u[n, k] − z[n, g])`` for float
activations, from weights repacked into bit planes: a code is the sum of its bit planes, so the
dot product is a sum of lookups in 16-entry tables of activation sums, one table per four
activations, built once per call and shared by every weight row (T-MAC, Wei et al. 2024, kept
in float32 so it computes the reference's function). On AVX-512 one ``vpermps`` looks up 16
weight rows at once; AVX2 uses two 8-entry ``vpermps`` and a blend; a scalar loop reads the same
layout. `pack` makes the layout: panels of 16 rows, K in blocks of 32, per (panel, block, plane)
sixteen 32-bit words, word ``r`` holding plane ``b`` of row ``16p + r`` (``bits / 8`` bytes a
weight, as stored). Groups must be multiples of 32 or the whole row.

Imports: torch, `explorer.kernels` (base, native), `explorer.quant`.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import torch

from explorer.kernels import native
from explorer.kernels.base import ActQParams, LinearSpec
from explorer.kernels.native_ops import NativeWeightOnlyKernel, int8_activations, not_here
from explorer.quant.primitives import SCALE_EPS
from explorer.quant.qtensor import QuantizedWeight

BITS: tuple[int, ...] = (2, 3)
PANEL_ROWS = 16
BLOCK = 32
PATHS: tuple[str, ...] = ("scalar", "avx2", "avx512")
"""The C code each instruction-set path runs (`path`): AVX-512 on ``avx512_vnni``, AVX2 on
``avx2`` and ``avx_vnni`` (no VNNI instruction is needed: the kernel adds floats)."""

_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


@functools.cache
def _lib() -> ctypes.CDLL:
    """The native library with this module's entry points declared (KernelError without it)."""
    lib = native.library()
    lib.qe_lb_path.restype = _INT
    lib.qe_lb_path.argtypes = []
    lib.qe_lb_packed_bytes.restype = _I64
    lib.qe_lb_packed_bytes.argtypes = [_I64, _I64, _INT]
    lib.qe_lb_pack.restype = _INT
    lib.qe_lb_pack.argtypes = [_P, _I64, _I64, _INT, _INT, _P]
    lib.qe_lb_panel_params.restype = _INT
    lib.qe_lb_panel_params.argtypes = [_P, _I64, _I64, _P]
    lib.qe_lb_wo_linear.restype = _INT
    lib.qe_lb_wo_linear.argtypes = [_P] * 6 + [_I64] * 4 + [_INT, _INT]
    lib.qe_lb8_linear.restype = _INT
    lib.qe_lb8_linear.argtypes = [_P] * 9 + [_I64] * 4 + [_INT, _INT]
    lib.qe_lb8_dyn_linear.restype = _INT
    lib.qe_lb8_dyn_linear.argtypes = [_P, _INT, _INT, ctypes.c_float] + [_P] * 6 + [_I64] * 4
    lib.qe_lb8_dyn_linear.argtypes += [_INT, _INT]
    return lib


def path() -> str:
    """The code the kernels run now (one of `PATHS`), which follows `native.set_isa`."""
    return PATHS[_lib().qe_lb_path()]


def isa_taken() -> str:
    """The instruction-set path (`native.ISAS`) whose code the kernels run now: ``avx512_vnni``
    for the AVX-512 code, ``avx2`` for the AVX2 code (which the ``avx_vnni`` path runs too),
    ``scalar``."""
    return {"avx512": "avx512_vnni", "avx2": "avx2", "scalar": "scalar"}[path()]


@dataclass(frozen=True)
class PackedLowbit:
    """Codes in bit planes (`pack`) with per-panel scales and, when asymmetric, scale × zero."""

    planes: torch.Tensor  # int32 words [panels, K/32, bits, 16]
    scale: torch.Tensor  # fp32 [panels, K/G, 16]
    scaled_zero: torch.Tensor | None  # fp32 [panels, K/G, 16]; None: zero 2^(bits-1)
    n: int
    k: int
    group: int
    bits: int


def _check(rc: int, fn: str) -> None:
    if rc != 0:
        raise ValueError(f"{fn} rejected its arguments (code {rc})")


def pack_planes(codes: torch.Tensor, bits: int, byte_layout: bool = False) -> torch.Tensor:
    """Unsigned ``codes`` [N, K] (below ``2**bits``) in the bit-plane layout of `wo_linear`, or
    with ``byte_layout`` in the layout of `a8_linear`: int32 words [panels, K/32, bits, 16]."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    if codes.dim() != 2 or codes.numel() == 0:
        raise ValueError(f"codes must be a non-empty 2-D tensor [N, K], got {list(codes.shape)}")
    n, k = codes.shape
    codes = codes.to(torch.uint8).contiguous()
    lib = _lib()
    words = lib.qe_lb_packed_bytes(n, k, bits) // 4
    out = torch.empty(words, dtype=torch.int32)
    rc = lib.qe_lb_pack(codes.data_ptr(), n, k, bits, int(byte_layout), out.data_ptr())
    _check(rc, "qe_lb_pack")
    return out.reshape(-(-n // PANEL_ROWS), -(-k // BLOCK), bits, PANEL_ROWS)


def _panel_params(values: torch.Tensor) -> torch.Tensor:
    """Per-row, per-group floats [N, G'] in panel order [panels, G', 16]."""
    n, ng = values.shape
    values = values.float().contiguous()
    out = torch.empty(-(-n // PANEL_ROWS), ng, PANEL_ROWS, dtype=torch.float32)
    _check(_lib().qe_lb_panel_params(values.data_ptr(), n, ng, out.data_ptr()), "panel_params")
    return out


def pack(qw: QuantizedWeight) -> PackedLowbit:
    """Repack a 2- or 3-bit `QuantizedWeight` for `wo_linear` (once per layer)."""
    if qw.bits not in BITS:
        raise ValueError(f"the low-bit kernels take {BITS}-bit weights, got {qw.bits}")
    n, k = qw.shape
    group = qw.block[1]
    if group != k and group % BLOCK:
        raise ValueError(f"group size {group} is neither a multiple of {BLOCK} nor the row")
    scale = qw.scale.float().repeat_interleave(qw.block[0], 0)  # [N, K/G]
    scaled_zero = None
    if qw.zero is not None:
        scaled_zero = _panel_params(scale * qw.stored_zero().repeat_interleave(qw.block[0], 0))
    planes = pack_planes(qw.stored_codes(), qw.bits)
    return PackedLowbit(planes, _panel_params(scale), scaled_zero, n, k, group, qw.bits)


def _sizes(packed: PackedLowbit | PackedLowbitA8, m: int) -> tuple[int, ...]:
    """The trailing arguments of both kernels: M, N, K, G, bits, threads."""
    return (m, packed.n, packed.k, packed.group, packed.bits, torch.get_num_threads())


def wo_linear(
    x: torch.Tensor, packed: PackedLowbit, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x`` float32 [..., K] times the packed weight's transpose, plus ``bias``: [..., N]."""
    lib = _lib()
    if x.dtype != torch.float32 or not x.is_contiguous():
        x = x.float().contiguous()
    if not x.is_cpu:
        raise ValueError(f"x must be on the cpu, got device {x.device}")
    if x.dim() == 0 or x.shape[-1] != packed.k:
        raise ValueError(f"x must have last dimension K={packed.k}, got shape {list(x.shape)}")
    if bias is not None and (bias.dtype != torch.float32 or bias.shape != (packed.n,)):
        raise ValueError(f"bias must be float32 [{packed.n}], got {bias.dtype} {list(bias.shape)}")
    m = x.numel() // packed.k
    y = torch.empty((*x.shape[:-1], packed.n), dtype=torch.float32)
    if m == 0:
        return y
    rc = lib.qe_lb_wo_linear(
        x.data_ptr(),
        packed.planes.data_ptr(),
        packed.scale.data_ptr(),
        None if packed.scaled_zero is None else packed.scaled_zero.data_ptr(),
        None if bias is None else bias.contiguous().data_ptr(),
        y.data_ptr(),
        *_sizes(packed, m),
    )
    _check(rc, "qe_lb_wo_linear")
    return y


@dataclass(frozen=True)
class LowbitState:
    packed: PackedLowbit
    bias: torch.Tensor | None


class NativeLowbitKernel(NativeWeightOnlyKernel):
    """``int{bits}-wo-native``: the weight-only 2/3-bit kernel behind the kernel interface (named
    and constructed like the 4/8-bit weight-only kernels, whose family it extends)."""

    def supports(self, spec: LinearSpec) -> str | None:
        if spec.act_bits is not None or spec.weight_bits != self.bits:
            return f"weight-only int{self.bits}"
        if spec.group_size != spec.k and spec.group_size % BLOCK:
            return f"the group size must be a multiple of {BLOCK} or the whole row"
        return not_here(spec)

    def prepare(
        self,
        spec: LinearSpec,
        qw: QuantizedWeight,
        bias: torch.Tensor | None,
        act: ActQParams | None,
    ) -> LowbitState:
        return LowbitState(pack(qw), None if bias is None else bias.float().contiguous())

    def run(self, state: LowbitState, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return wo_linear(x, state.packed, state.bias)


# --- int8 activations ---------------------------------------------------------------------------

MAX_A8_K = 1 << 16  # keeps the exact int32 sums of the kernel (up to 192 x 128 x K) in range


@dataclass(frozen=True)
class PackedLowbitA8:
    """Codes for `a8_linear` (bytes decodable in registers, `pack_a8`) with per-panel group
    scales, stored zero points and ``usum - G * zero`` (code sum of the group minus its zero)."""

    codes: torch.Tensor  # int32 words [panels, K/32, bits, 16], byte layout
    scale: torch.Tensor  # fp32 [panels, K/G, 16]
    zero: torch.Tensor  # int32 [panels, K/G, 16]
    wterm: torch.Tensor  # int32 [panels, K/G, 16]
    n: int
    k: int
    group: int
    bits: int


def _panels(values: torch.Tensor) -> torch.Tensor:
    """Per-row values [N, G'] in panel order [panels, G', 16] (padding rows 0)."""
    n, ng = values.shape
    pad = values.new_zeros(-n % PANEL_ROWS, ng)
    rows = torch.cat([values, pad]).reshape(-1, PANEL_ROWS, ng)
    return rows.permute(0, 2, 1).contiguous()


def pack_a8(qw: QuantizedWeight) -> PackedLowbitA8:
    """Repack a 2- or 3-bit `QuantizedWeight` for `a8_linear` (once per layer)."""
    if qw.bits not in BITS:
        raise ValueError(f"the low-bit kernels take {BITS}-bit weights, got {qw.bits}")
    n, k = qw.shape
    group = qw.block[1]
    if group != k and group % BLOCK:
        raise ValueError(f"group size {group} is neither a multiple of {BLOCK} nor the row")
    if k > MAX_A8_K:
        raise ValueError(f"K={k} exceeds {MAX_A8_K}: the int32 group sums could overflow")
    codes = qw.stored_codes()  # int32 [N, K]
    zero = qw.stored_zero().repeat_interleave(qw.block[0], 0)  # [N, K/G]
    usum = codes.reshape(n, k // group, group).sum(-1, dtype=torch.int32)
    words = pack_planes(codes, qw.bits, byte_layout=True)
    scale = qw.scale.float().repeat_interleave(qw.block[0], 0)
    return PackedLowbitA8(
        words,
        _panels(scale),
        _panels(zero.to(torch.int32)),
        _panels((usum - group * zero).to(torch.int32)),
        n,
        k,
        group,
        qw.bits,
    )


def a8_linear(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    x_zero: torch.Tensor | None,
    packed: PackedLowbitA8,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x_scale[m] * sum_k (xq[m, k] - x_zero[m]) * W[n, k] + bias[n]`` for int8 ``xq`` [M, K]
    with one scale (and zero point, None: 0) per row: float32 [M, N]."""
    lib = _lib()
    if xq.dtype != torch.int8 or xq.dim() != 2 or xq.shape[1] != packed.k:
        raise ValueError(f"xq must be int8 [M, {packed.k}], got {xq.dtype} {list(xq.shape)}")
    m = xq.shape[0]
    xs = x_scale.reshape(-1).float().expand(m).contiguous()
    zx = None if x_zero is None else x_zero.reshape(-1).to(torch.int32).expand(m).contiguous()
    if bias is not None and (bias.dtype != torch.float32 or bias.shape != (packed.n,)):
        raise ValueError(f"bias must be float32 [{packed.n}], got {bias.dtype} {list(bias.shape)}")
    y = torch.empty(m, packed.n, dtype=torch.float32)
    if m == 0:
        return y
    xq = xq.contiguous()
    rc = lib.qe_lb8_linear(
        xq.data_ptr(),
        xs.data_ptr(),
        None if zx is None else zx.data_ptr(),
        packed.codes.data_ptr(),
        packed.scale.data_ptr(),
        packed.zero.data_ptr(),
        packed.wterm.data_ptr(),
        None if bias is None else bias.contiguous().data_ptr(),
        y.data_ptr(),
        *_sizes(packed, m),
    )
    _check(rc, "qe_lb8_linear")
    return y


def bind_a8_dynamic(
    packed: PackedLowbitA8,
    bias: torch.Tensor | None,
    *,
    per_token: bool,
    symmetric: bool,
    eps: float = SCALE_EPS,
) -> native.BoundLinear:
    """`a8_linear` for float activations quantized in C (``qe_lb8_dyn_linear``: the dynamic
    quantizer of the W8A8 / W4A8 kernels, per token or per tensor, into a cached workspace),
    with everything but ``x`` bound: a call ``f(x)`` maps float32 [..., K] to [..., N]."""
    if bias is not None and (bias.dtype != torch.float32 or bias.shape != (packed.n,)):
        raise ValueError(f"bias must be float32 [{packed.n}], got {bias.dtype} {list(bias.shape)}")
    bias = None if bias is None else bias.contiguous()
    _lib()  # declares qe_lb8_dyn_linear's argument types before the binding looks it up
    head = (
        int(per_token),
        int(symmetric),
        eps,
        packed.codes.data_ptr(),
        packed.scale.data_ptr(),
        packed.zero.data_ptr(),
        packed.wterm.data_ptr(),
        None if bias is None else bias.data_ptr(),
    )
    tail = (packed.k, packed.group, packed.bits)
    return native.BoundLinear("qe_lb8_dyn_linear", packed.n, packed.k, head, tail, (packed, bias))


@dataclass(frozen=True)
class LowbitA8State:
    spec: LinearSpec
    act: ActQParams | None
    packed: PackedLowbitA8
    bias: torch.Tensor | None
    call: native.BoundLinear | None = None  # dynamic activations, quantized in C


class NativeLowbitA8Kernel:
    """``int{bits}-w{bits}a8-native``: int8 activations (any mode the W8A8 kernel takes; dynamic
    ones quantized in C, static ones in torch) x 2/3-bit weights: exact integer dot products per
    group (codes decoded to bytes in registers; ``vpdpbusd`` on AVX-512 VNNI, ``vpmaddubsw`` on
    AVX2), one float FMA per group."""

    real = True

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.name = f"int{bits}-w{bits}a8-native"

    def supports(self, spec: LinearSpec) -> str | None:
        if spec.act_bits != 8 or spec.weight_bits != self.bits:
            return f"int8 activations × int{self.bits} weights"
        if spec.group_size != spec.k and spec.group_size % BLOCK:
            return f"the group size must be a multiple of {BLOCK} or the whole row"
        if spec.k > MAX_A8_K:
            return f"K at most {MAX_A8_K}"
        return not_here(spec)

    def prepare(
        self,
        spec: LinearSpec,
        qw: QuantizedWeight,
        bias: torch.Tensor | None,
        act: ActQParams | None,
    ) -> LowbitA8State:
        b = None if bias is None else bias.float().contiguous()
        packed = pack_a8(qw)
        call = None
        if not spec.act_static:
            call = bind_a8_dynamic(
                packed,
                b,
                per_token=spec.act_granularity == "token",
                symmetric=spec.act_symmetric,
            )
        return LowbitA8State(spec, act, packed, b, call)

    def run(self, state: LowbitA8State, x: torch.Tensor) -> torch.Tensor:
        if state.call is not None:
            return state.call(x)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).float()
        xq, xs, _, zx = int8_activations(x2, state.spec, state.act)
        y = a8_linear(xq, xs, zx, state.packed, state.bias)
        return y.reshape(*lead, state.packed.n)
