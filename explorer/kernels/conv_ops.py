"""Quantized convolution kernels: our own int8 convolutions (dense and depthwise), oneDNN's int8
convolution, im2col plus a linear kernel, and a depthwise convolution on stored weight codes.

Every kernel here takes a float32 NCHW input and returns float32 ``[B, O, Ho, Wo]`` (possibly
channels-last in memory), behind the interface of `explorer.kernels.base` with the geometry
added: ``supports(spec, geom)``, ``prepare(spec, geom, qw, bias, act)``, ``run(state, x)``.
The ``spec`` is the layer's flattened ``[O, C/groups * kh * kw]`` weight (PyTorch's order).

- ``int8-conv-onednn`` / ``int8-dwconv-onednn``: uint8 activations (per-tensor scale and zero
  point; symmetric int8 codes shifted by +128) times symmetric per-channel int8 weights, int32
  accumulation, fp32 output, on ``onednn::qconv2d_pointwise`` (VNNI ``vpdpbusd`` or AMX where
  the CPU has them). Activations are quantized and laid out channels-last in one C pass
  (``qe_quant_u8_nhwc``), with the codes of `explorer.quant.primitives.quantize`. On CPUs
  without VNNI oneDNN multiplies with ``vpmaddubsw``, whose int16 pair sums saturate
  (``2 * 255 * 127 > 32767``): not the function we claim. So the kernels are only offered
  where `onednn_exact` passes: a probe convolution with extreme operands checked against int64
  arithmetic, once per process and kind (dense, depthwise).
- `Im2colKernel` (named after its linear kernel, e.g. ``int8-w8a8-native``): the patch matrix
  built in C (``qe_im2col_f32``) and multiplied by any linear kernel of
  `explorer.kernels.select`; K is zero-padded to a multiple of 32 when that is what gives a
  per-channel or per-tensor weight a kernel (zero columns add nothing to the dot products, and
  the activation ranges already contain 0). Weight-only convolutions run here: the linear
  weight-only kernels read the int8/int4 codes as stored.
- ``dwconv-wo-native``: depthwise convolution of float activations with weights read from
  their stored codes, 2 to 8 bits (``qe_dwconv_wo``): a depthwise layer holds 9 weights a
  channel, so its time is the activations' and the kernel decodes each channel's taps once, in
  registers.

- ``int8-conv-native`` (`NativeConvA8Kernel`): an implicit GEMM on uint8 NHWC codes
  (``qe_conv_a8``: range, codes and GEMM in one C call, no patch matrix except for narrow
  inputs and per-token rows), activations per tensor (dynamic or static) or per token. The GEMM
  runs on AVX-512 VNNI (``vpdpbusd``) or AVX2, where ``vpmaddubsw``'s int16 pairs would saturate,
  so codes and weights are multiplied as int16 (``vpmaddwd``: exact int32 pairs).
- ``int8-dwconv-native`` (`NativeDwConvA8Kernel`): depthwise, products of int8 codes summed
  exactly in float32 across channels (``qe_dwconv_a8``; AVX-512, AVX2 and scalar paths, which
  `force_conv_isa` selects for tests).
Both return channels-last outputs, which the next such layer reads without a copy.

Per-tensor dynamic activation ranges: a dense convolution's reference (and im2col) take them
over the patch matrix, i.e. over the pixels the convolution reads; ``int8-conv-onednn`` takes
them over the same pixels (`read_pixels`). Grouped convolutions take them over the whole input,
as their reference (`explorer.nn.modules.QuantConv2d`) does.

Imports: torch, `explorer.kernels` (activation, base, native_build), `explorer.quant`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import struct
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from explorer.errors import KernelError
from explorer.kernels import native_build
from explorer.kernels.activation import act_qparams
from explorer.kernels.base import ActQParams, LinearKernel, LinearSpec
from explorer.quant.primitives import SCALE_EPS, qrange
from explorer.quant.qtensor import QuantizedWeight, code_offset

K_ALIGN = 32  # what the native weight-only and W4A8 linear kernels need of K


@dataclass(frozen=True)
class ConvGeometry:
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        """PyTorch's output size for an ``h x w`` input."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
        )
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (
            w + 2 * pw - dw * (kw - 1) - 1
        ) // sw + 1

    def args(self) -> tuple[list[int], list[int], list[int]]:
        return list(self.stride), list(self.padding), list(self.dilation)


class ConvKernel(Protocol):
    name: str

    def supports(self, spec: LinearSpec, geom: ConvGeometry) -> str | None:
        """None if this kernel computes the convolution exactly; otherwise why not."""
        ...

    def prepare(
        self,
        spec: LinearSpec,
        geom: ConvGeometry,
        qw: QuantizedWeight,
        bias: torch.Tensor | None,
        act: ActQParams | None,
    ) -> Any:
        """Repack the weights for this kernel (once per layer)."""
        ...

    def run(self, state: Any, x: torch.Tensor) -> torch.Tensor:
        """``x``: float32 ``[B, C, H, W]`` -> float32 ``[B, O, Ho, Wo]``."""
        ...


# --- the C helpers ------------------------------------------------------------------------------

_P, _I64, _INT, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
_lock = threading.Lock()


@functools.cache
def _library() -> ctypes.CDLL | str:
    """The loaded ``qe_conv`` library, or why there is none (built on first use, cached)."""
    if os.environ.get("EXPLORER_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return "disabled by EXPLORER_NATIVE=0"
    with _lock:
        built = native_build.build_source(native_build.CONV_SOURCE)
    if isinstance(built, str):
        return built
    try:
        lib = ctypes.CDLL(str(built.path))
    except OSError as exc:
        return f"cannot load {built.path}: {exc}"
    lib.qe_conv_abi_version.restype = _INT
    lib.qe_quant_u8_nhwc.restype = _INT
    lib.qe_quant_u8_nhwc.argtypes = [_P, _P, _I64, _I64, _I64, _F, _F, _F, _F, _INT, _INT]
    lib.qe_act_qparams.restype = _INT
    lib.qe_act_qparams.argtypes = [_P, _I64, _INT, _F, _P, _P, _INT]
    lib.qe_im2col_f32.restype = _INT
    lib.qe_im2col_f32.argtypes = [_P, _P] + [_I64] * 15 + [_INT]
    lib.qe_dwconv_wo.restype = _INT
    lib.qe_dwconv_wo.argtypes = [_P, _P, _INT, _P, _P, _P, _P] + [_I64] * 14 + [_INT]
    lib.qe_conv_a8_packed_bytes.restype = _I64
    lib.qe_conv_a8_packed_bytes.argtypes = [_I64] * 3
    lib.qe_conv_a8_pack.restype = _INT
    lib.qe_conv_a8_pack.argtypes = [_P, _I64, _I64, _I64, _P]
    act = [_INT, _INT, _F, _F, _INT, _F, _F]  # mode, symmetric, eps, scale, zero, lo, hi
    lib.qe_conv_a8.restype = _INT
    lib.qe_conv_a8.argtypes = [_P, _INT] + [_I64] * 14 + act + [_INT, _P, _I64, _P, _P, _P, _INT]
    lib.qe_dwconv_a8.restype = _INT
    lib.qe_dwconv_a8.argtypes = [_P, _INT] + [_I64] * 14 + act + [_P, _P, _P, _P, _INT]
    for fn in (lib.qe_conv_a8_p, lib.qe_dwconv_a8_p):
        fn.restype = _INT
        fn.argtypes = [_P] * 7 + [_INT]
    for fn in ("qe_conv_isa", "qe_conv_set_isa", "qe_conv_isa_supported"):
        getattr(lib, fn).restype = _INT
    if lib.qe_conv_abi_version() != 2:
        return f"{built.path}: ABI version mismatch"
    return lib


def unavailable_reason() -> str | None:
    """Why the C convolution helpers cannot run here (None: they can). Never raises."""
    lib = _library()
    return lib if isinstance(lib, str) else None


def _lib() -> ctypes.CDLL:
    lib = _library()
    if isinstance(lib, str):
        raise KernelError(f"native convolution helpers unavailable: {lib}")
    return lib


def _check(rc: int, fn: str) -> None:
    if rc != 0:
        raise KernelError(f"native kernel {fn} failed with status {rc}")


def quantize_u8_nhwc(
    x: torch.Tensor, scale: float, zero: int, bits: int, symmetric: bool
) -> torch.Tensor:
    """Codes of float ``x`` [B, C, H, W] as uint8, channels-last in memory:
    ``clamp(round(x / scale) + zero, qmin, qmax)``, plus 128 when symmetric."""
    b, c, h, w = x.shape
    lo, hi = qrange(bits, symmetric)
    offset = 128 if symmetric else 0
    out = torch.empty((b, c, h, w), dtype=torch.uint8, memory_format=torch.channels_last)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        src, n, ch, hw = x, b * h * w, c, 1  # already pixel-major: one code row per pixel
    else:
        src, n, ch, hw = x.contiguous(), b, c, h * w
    rc = _lib().qe_quant_u8_nhwc(
        src.data_ptr(),
        out.data_ptr(),
        n,
        ch,
        hw,
        scale,
        float(zero),
        lo,
        hi,
        offset,
        torch.get_num_threads(),
    )
    _check(rc, "qe_quant_u8_nhwc")
    return out


def float32(v: float) -> float:
    """``v`` rounded to float32, as a tensor of it would hold it."""
    return struct.unpack("f", struct.pack("f", v))[0]


def dynamic_qparams(x: torch.Tensor, symmetric: bool) -> tuple[float, int]:
    """Per-tensor dynamic 8-bit scale and zero point of ``x`` (contiguous in any layout):
    bit-identical to `explorer.quant.primitives.choose_qparams` on its range, in one C pass."""
    scale, zero = ctypes.c_float(), ctypes.c_int()
    rc = _lib().qe_act_qparams(
        x.data_ptr(),
        x.numel(),
        int(symmetric),
        SCALE_EPS,
        ctypes.byref(scale),
        ctypes.byref(zero),
        torch.get_num_threads(),
    )
    _check(rc, "qe_act_qparams")
    return scale.value, zero.value


def im2col(x: torch.Tensor, geom: ConvGeometry, kpad: int) -> torch.Tensor:
    """The patch matrix ``[B * Ho * Wo, kpad]`` of float ``x`` [B, C, H, W] (groups == 1),
    zero beyond column ``C * kh * kw``."""
    x = x.float().contiguous()
    b, c, h, w = x.shape
    ho, wo = geom.out_hw(h, w)
    out = torch.empty((b * ho * wo, kpad), dtype=torch.float32)
    rc = _lib().qe_im2col_f32(
        x.data_ptr(),
        out.data_ptr(),
        b,
        c,
        h,
        w,
        *geom.kernel_size,
        *geom.stride,
        *geom.padding,
        *geom.dilation,
        ho,
        wo,
        kpad,
        torch.get_num_threads(),
    )
    _check(rc, "qe_im2col_f32")
    return out


def read_pixels(x: torch.Tensor, geom: ConvGeometry) -> torch.Tensor:
    """The pixels of ``x`` [B, C, H, W] that the convolution reads (all of them unless strides
    or dilation skip rows or columns): what its patch matrix holds, less padding zeros."""
    h, w = x.shape[-2:]
    rows, cols = _read_index(h, w, geom)
    if rows is not None:
        x = x.index_select(2, rows)
    if cols is not None:
        x = x.index_select(3, cols)
    return x


@functools.lru_cache(maxsize=256)
def _read_index(
    h: int, w: int, geom: ConvGeometry
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    def axis(size: int, k: int, s: int, p: int, d: int, out: int) -> torch.Tensor | None:
        read = sorted({o * s - p + i * d for o in range(out) for i in range(k)} & set(range(size)))
        return None if len(read) == size else torch.tensor(read, dtype=torch.long)

    ho, wo = geom.out_hw(h, w)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
        geom.kernel_size,
        geom.stride,
        geom.padding,
        geom.dilation,
    )
    return axis(h, kh, sh, ph, dh, ho), axis(w, kw, sw, pw, dw, wo)


def per_channel(blocks: torch.Tensor, qw: QuantizedWeight) -> torch.Tensor:
    """A per-block value (scale, zero point) of a per-channel or per-tensor weight, one per
    output channel: fp32 ``[out_channels]``."""
    return blocks.reshape(-1).expand(qw.n_blocks[0]).repeat_interleave(qw.block[0]).contiguous()


# --- oneDNN -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OnednnState:
    """What `OnednnConvKernel.prepare` packs once per layer."""

    spec: LinearSpec
    geom: ConvGeometry
    packed: Any  # oneDNN's opaque prepacked weight
    weight_scale: torch.Tensor  # fp32 [out_channels]
    weight_zero: torch.Tensor  # int64 zeros [out_channels] (symmetric weights)
    bias: torch.Tensor | None
    act: ActQParams | None


def _onednn_prepack(wq: torch.Tensor, ws: torch.Tensor, geom: ConvGeometry) -> Any:
    # The activation scale and zero point are passed per call; the prepacked weight does not
    # depend on them (the tests use several zero points).
    return torch.ops.onednn.qconv_prepack(wq, ws, 1.0, 0, *geom.args(), geom.groups, None)


def _onednn_run(
    xq: torch.Tensor,
    scale: float,
    zero: int,
    weights: tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor | None],
    geom: ConvGeometry,
) -> torch.Tensor:
    """``weights``: the prepacked weight, its fp32 scales, int64 zero points, fp32 bias."""
    return torch.ops.onednn.qconv2d_pointwise(
        xq, scale, zero, *weights, *geom.args(), geom.groups, 1.0, 0, torch.float32, "none", [], ""
    )


@functools.cache
def onednn_exact(depthwise: bool) -> str | None:
    """None if oneDNN's int8 convolution (depthwise or dense) is exact on this CPU, else why not.

    A probe: every activation 255 against weights -128 and 127, and activations 0/255 against
    alternating signs, on 64 input channels (pairs and quads of products that saturate int16 in
    ``vpmaddubsw``), with unit scales, so the float output is the int32 sum; compared with int64
    arithmetic."""
    if not hasattr(torch.ops.onednn, "qconv2d_pointwise"):
        return "this torch build has no oneDNN quantized convolution"
    c = 64
    geom = ConvGeometry(c, c, (3, 3), (1, 1), (1, 1), (1, 1), c if depthwise else 1)
    g = torch.Generator().manual_seed(0)
    cin = 1 if depthwise else c
    w = torch.where(torch.rand(c, cin, 3, 3, generator=g) < 0.5, -128, 127).to(torch.int8)
    w[: c // 2] = -128
    x = torch.where(torch.rand(1, c, 6, 6, generator=g) < 0.2, 0, 255).to(torch.uint8)
    x[..., :3, :] = 255
    ones, zeros = torch.ones(c), torch.zeros(c, dtype=torch.long)
    try:
        weights = (_onednn_prepack(w, ones, geom), ones, zeros, None)
        y = _onednn_run(x.contiguous(memory_format=torch.channels_last), 1.0, 0, weights, geom)
    except RuntimeError as exc:
        return f"oneDNN's int8 convolution failed on a probe: {str(exc).splitlines()[0]}"
    ref = torch.nn.functional.conv2d(
        x.double(), w.double(), None, 1, 1, 1, geom.groups
    )  # exact: |sums| < 2^53
    if not torch.equal(y.double(), ref):
        bad = float((y.double() - ref).abs().max())
        return (
            "oneDNN's int8 convolution is not exact on this CPU (off by up to "
            f"{bad:.0f} on saturating operands: no VNNI, its vpmaddubsw pair sums saturate)"
        )
    return None


class OnednnConvKernel:
    """Int8 convolution on oneDNN: dense (``int8-conv-onednn``) or depthwise
    (``int8-dwconv-onednn``)."""

    real = True

    def __init__(self, depthwise: bool) -> None:
        self.depthwise = depthwise
        self.name = "int8-dwconv-onednn" if depthwise else "int8-conv-onednn"

    def supports(self, spec: LinearSpec, geom: ConvGeometry) -> str | None:
        if spec.device != "cpu":
            return "CPU kernel"
        if self.depthwise and not geom.depthwise:
            return "depthwise convolutions only (groups == in_channels == out_channels)"
        if not self.depthwise and geom.groups != 1:
            return "dense convolutions only (groups == 1)"
        if spec.act_bits != 8 or spec.act_granularity != "tensor":
            return "needs int8 activations with a per-tensor scale"
        if spec.weight_bits != 8 or not spec.weight_symmetric or spec.block[1] != spec.k:
            return "needs symmetric per-channel (or per-tensor) int8 weights"
        why = onednn_exact(self.depthwise)
        if why is not None:
            return why
        return unavailable_reason()

    def prepare(
        self,
        spec: LinearSpec,
        geom: ConvGeometry,
        qw: QuantizedWeight,
        bias: torch.Tensor | None,
        act: ActQParams | None,
    ) -> OnednnState:
        o = geom.out_channels
        wq = qw.stored_codes().to(torch.int8).reshape(o, -1, *geom.kernel_size)
        ws = per_channel(qw.scale.float(), qw)
        wz = torch.zeros(o, dtype=torch.long)
        b = None if bias is None else bias.float().contiguous()
        return OnednnState(spec, geom, _onednn_prepack(wq, ws, geom), ws, wz, b, act)

    def run(self, state: OnednnState, x: torch.Tensor) -> torch.Tensor:
        spec, geom = state.spec, state.geom
        x = x.float()
        if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            x = x.contiguous()
        if spec.act_static:
            if state.act is None:
                raise ValueError("static activation quantization needs calibrated qparams")
            s, z = float32(state.act.scale), state.act.zero
        else:
            seen = x if self.depthwise else read_pixels(x, geom)
            if seen is x:  # one C pass instead of ~10 torch ops: small layers pay for those
                s, z = dynamic_qparams(x, spec.act_symmetric)
            else:
                scale, zero = act_qparams(seen.reshape(1, -1), spec, None)
                s, z = float(scale[0, 0]), int(zero[0, 0])
        xq = quantize_u8_nhwc(x, s, z, 8, spec.act_symmetric)
        weights = (state.packed, state.weight_scale, state.weight_zero, state.bias)
        return _onednn_run(xq, s, z + (128 if spec.act_symmetric else 0), weights, geom)


# --- im2col + a linear kernel -------------------------------------------------------------------


def padded_k(spec: LinearSpec) -> int:
    """K rounded up to `K_ALIGN` for a per-channel or per-tensor weight; K itself for groups
    (a group must not straddle the padding)."""
    if spec.block[1] != spec.k:
        return spec.k
    return -(-spec.k // K_ALIGN) * K_ALIGN


def pad_spec(spec: LinearSpec, kpad: int) -> LinearSpec:
    if kpad == spec.k:
        return spec
    return dataclasses.replace(spec, k=kpad, block=(spec.block[0], kpad))


def pad_weight(qw: QuantizedWeight, kpad: int) -> QuantizedWeight:
    """``qw`` with zero columns up to ``kpad`` (per-channel or per-tensor weights only)."""
    n, k = qw.shape
    if kpad == k:
        return qw
    codes = torch.nn.functional.pad(qw.codes(), (0, kpad - k))
    zero = None
    if not qw.symmetric:
        zero = qw.stored_zero() - code_offset(qw.bits, qw.symmetric)
    return QuantizedWeight.from_codes(
        codes, qw.scale, zero, qw.bits, qw.symmetric, (qw.block[0], kpad)
    )


@dataclass(frozen=True)
class Im2colState:
    geom: ConvGeometry
    kpad: int
    linear_state: Any


class Im2colKernel:
    """The patch matrix in C, then a linear kernel; named after the linear kernel."""

    real = True

    def __init__(self, linear: LinearKernel) -> None:
        self.linear = linear
        self.name = linear.name

    def _spec(self, spec: LinearSpec) -> LinearSpec:
        """The spec the linear kernel runs: K as is if it has a kernel there, else padded."""
        if self.linear.supports(spec) is None:
            return spec
        return pad_spec(spec, padded_k(spec))

    def supports(self, spec: LinearSpec, geom: ConvGeometry) -> str | None:
        if geom.groups != 1:
            return "dense convolutions only (groups == 1)"
        why = self.linear.supports(self._spec(spec))
        return why if why is not None else unavailable_reason()

    def prepare(
        self,
        spec: LinearSpec,
        geom: ConvGeometry,
        qw: QuantizedWeight,
        bias: torch.Tensor | None,
        act: ActQParams | None,
    ) -> Im2colState:
        run_spec = self._spec(spec)
        qw = pad_weight(qw, run_spec.k)
        return Im2colState(geom, run_spec.k, self.linear.prepare(run_spec, qw, bias, act))

    def run(self, state: Im2colState, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        ho, wo = state.geom.out_hw(h, w)
        out = self.linear.run(state.linear_state, im2col(x, state.geom, state.kpad))  # (B*L, O)
        return out.reshape(b, ho, wo, -1).permute(0, 3, 1, 2)


# --- depthwise on stored codes, float activations -----------------------------------------------


@dataclass(frozen=True)
class DepthwiseWOState:
    geom: ConvGeometry
    bits: int
    codes: torch.Tensor  # as stored: int8 [C, taps] at 8 bits, else the packed bitstream
    scale: torch.Tensor  # fp32 [C]
    zero: torch.Tensor  # fp32 [C], the stored zero point
    bias: torch.Tensor | None


class NativeDepthwiseWOKernel:
    name = "dwconv-wo-native"
    real = True

    def supports(self, spec: LinearSpec, geom: ConvGeometry) -> str | None:
        if spec.device != "cpu":
            return "CPU kernel"
        if not geom.depthwise:
            return "depthwise convolutions only (groups == in_channels == out_channels)"
        if spec.act_bits is not None:
            return "weight-only (float activations)"
        if spec.block[1] != spec.k:
            return "one scale per channel or per tensor"
        if spec.k > 64:
            return "at most 64 taps (kh * kw)"
        return unavailable_reason()

    def prepare(
        self,
        spec: LinearSpec,
        geom: ConvGeometry,
        qw: QuantizedWeight,
        bias: torch.Tensor | None,
        act: ActQParams | None,
    ) -> DepthwiseWOState:
        c = geom.out_channels
        scale = per_channel(qw.scale.float(), qw)
        zero = per_channel(qw.stored_zero().float(), qw)
        b = None if bias is None else bias.float().contiguous()
        assert scale.numel() == c
        return DepthwiseWOState(geom, qw.bits, qw.data.contiguous(), scale, zero, b)

    def run(self, state: DepthwiseWOState, x: torch.Tensor) -> torch.Tensor:
        geom = state.geom
        x = x.float().contiguous()
        b, c, h, w = x.shape
        ho, wo = geom.out_hw(h, w)
        y = torch.empty((b, c, ho, wo), dtype=torch.float32)
        rc = _lib().qe_dwconv_wo(
            x.data_ptr(),
            state.codes.data_ptr(),
            state.bits,
            state.scale.data_ptr(),
            state.zero.data_ptr(),
            None if state.bias is None else state.bias.data_ptr(),
            y.data_ptr(),
            b,
            c,
            h,
            w,
            *geom.kernel_size,
            *geom.stride,
            *geom.padding,
            *geom.dilation,
            ho,
            wo,
            torch.get_num_threads(),
        )
        _check(rc, "qe_dwconv_wo")
        return y


# --- int8 convolutions of our own ---------------------------------------------------------------

MAX_CONV_K = 65536  # qe_conv.c's QC_MAX_K: K x 255 x 128 stays below 2^31
ISA_PATHS = {0: "scalar", 1: "avx2", 3: "avx512_vnni"}
"""The instruction-set paths of ``qe_conv_a8`` / ``qe_dwconv_a8`` (numbered as `explorer.kernels
.native`'s); both kernels run on all three (``scalar`` is the reference)."""
DENSE_ISA_PATHS = ("avx2", "avx512_vnni")
"""The paths on which `NativeConvA8Kernel` is offered: its scalar path is a reference only (two
orders of magnitude slower)."""


def conv_isa() -> str | None:
    """The path the int8 convolution kernels take here (None: no library)."""
    lib = _library()
    return None if isinstance(lib, str) else ISA_PATHS.get(lib.qe_conv_isa())


def conv_isa_supported(name: str) -> bool:
    """Whether this CPU has path ``name`` (one of `ISA_PATHS`' values)."""
    lib = _library()
    codes = {v: k for k, v in ISA_PATHS.items()}
    return not isinstance(lib, str) and bool(lib.qe_conv_isa_supported(codes[name]))


def force_conv_isa(name: str | None) -> None:
    """Make the int8 convolution kernels take path ``name`` (None: the best the CPU has)."""
    codes = {v: k for k, v in ISA_PATHS.items()}
    if _lib().qe_conv_set_isa(-1 if name is None else codes[name]) != 0:
        raise KernelError(f"this CPU has no {name} path for the int8 convolution kernels")


def _act_args(
    spec: LinearSpec, act: ActQParams | None, x: torch.Tensor, geom: ConvGeometry
) -> tuple[int, int, float, float, int, float, float]:
    """The activation arguments of ``qe_conv_a8`` / ``qe_dwconv_a8``: (mode, symmetric, eps,
    scale, zero, lo, hi). Mode 0: qparams given (static, or a range over the pixels a strided
    convolution reads); 1: per pixel, in C; 2: per tensor over all of ``x``, in C; 3: per patch
    row, in C (rows quantized into a patch matrix)."""
    lo, hi = qrange(8, spec.act_symmetric)
    sym = int(spec.act_symmetric)
    if spec.act_static:
        if act is None:
            raise ValueError("static activation quantization needs calibrated qparams")
        return 0, sym, SCALE_EPS, float32(act.scale), int(act.zero), lo, hi
    if spec.act_granularity == "token":
        return (1 if _pointwise(geom) else 3), sym, SCALE_EPS, 1.0, 0, lo, hi
    if geom.depthwise or _read_index(*x.shape[-2:], geom) == (None, None):
        return 2, sym, SCALE_EPS, 1.0, 0, lo, hi
    scale, zero = act_qparams(read_pixels(x, geom).reshape(1, -1), spec, None)
    return 0, sym, SCALE_EPS, float(scale[0, 0]), int(zero[0, 0]), lo, hi


def _pointwise(geom: ConvGeometry) -> bool:
    """A 1x1 convolution with stride 1 and no padding: a patch row is a pixel's channels."""
    return geom.kernel_size == (1, 1) and geom.stride == (1, 1) and geom.padding == (0, 0)


def _layout(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``x`` as float32 NCHW or NHWC in memory, and 1 if NHWC (no copy when it is either)."""
    if x.dtype != torch.float32:
        x = x.float()
    if x.is_contiguous():
        return x, 0
    if x.is_contiguous(memory_format=torch.channels_last):
        return x, 1
    return x.contiguous(), 0


@dataclass(frozen=True)
class ConvA8State:
    """What `NativeConvA8Kernel.prepare` / `NativeDwConvA8Kernel.prepare` build once per layer:
    the weights in the kernel's layout and the call's fixed arguments."""

    spec: LinearSpec
    geom: ConvGeometry
    act: ActQParams | None
    weights: torch.Tensor  # dense: packed panels (uint8); depthwise: fp32 codes [taps, C]
    scale: torch.Tensor  # fp32 [O]
    bias: torch.Tensor | None
    window: tuple[int, ...]  # kh, kw, sh, sw, ph, pw, dh, dw
    calls: dict[tuple[Any, ...], _Call] = dataclasses.field(
        default_factory=dict, compare=False, repr=False
    )  # the C call's argument arrays per input shape and layout (`_call`)


_Call = tuple[Any, Any, int, int]  # int64[20] and float[4] arguments, Ho, Wo
MAX_CACHED_CALLS = 16


def _call(state: ConvA8State, x: torch.Tensor, nhwc: int) -> _Call:
    """The argument arrays of ``qe_conv_a8_p`` / ``qe_dwconv_a8_p`` for ``x``: built once per
    input shape and layout (about 3 µs of ctypes conversions a call otherwise), except where
    the activation qparams are computed in Python per call (dynamic over strided pixels)."""
    key = (x.shape, nhwc)
    got = state.calls.get(key)
    if got is not None:
        return got
    b, c, h, w = x.shape
    ho, wo = state.geom.out_hw(h, w)
    mode, sym, eps, scale, zero, lo, hi = _act_args(state.spec, state.act, x, state.geom)
    offset = 128 if state.spec.act_symmetric else 0
    o = state.geom.out_channels
    ints = (ctypes.c_int64 * 20)(b, c, h, w, *state.window, ho, wo, mode, sym, zero, offset, o)
    ints[19] = nhwc
    got = (ints, (ctypes.c_float * 4)(eps, scale, lo, hi), ho, wo)
    if mode != 0 or state.spec.act_static:  # else the qparams belong to this call only
        if len(state.calls) >= MAX_CACHED_CALLS:
            state.calls.clear()
        state.calls[key] = got
    return got


def _run_a8(fn: str, state: ConvA8State, x: torch.Tensor) -> torch.Tensor:
    """``qe_conv_a8_p`` or ``qe_dwconv_a8_p`` on float ``x`` [B, C, H, W] (NCHW or NHWC in
    memory): float32 [B, O, Ho, Wo], channels-last in memory."""
    x, nhwc = _layout(x)
    ints, floats, ho, wo = _call(state, x, nhwc)
    y = torch.empty((x.shape[0], ho, wo, state.geom.out_channels), dtype=torch.float32)
    rc = getattr(_lib(), fn)(
        x.data_ptr(),
        y.data_ptr(),
        ints,
        floats,
        state.weights.data_ptr(),
        state.scale.data_ptr(),
        None if state.bias is None else state.bias.data_ptr(),
        torch.get_num_threads(),
    )
    _check(rc, fn)
    return y.permute(0, 3, 1, 2)


def _window(geom: ConvGeometry) -> tuple[int, ...]:
    return (*geom.kernel_size, *geom.stride, *geom.padding, *geom.dilation)


def _weight_why(spec: LinearSpec) -> str | None:
    if spec.device != "cpu":
        return "CPU kernel"
    if spec.act_bits != 8:
        return "needs int8 activations"
    if spec.weight_bits != 8 or not spec.weight_symmetric or spec.block[1] != spec.k:
        return "needs symmetric per-channel (or per-tensor) int8 weights"
    return None


class NativeConvA8Kernel:
    """``int8-conv-native``: dense int8 convolution as an implicit GEMM on NHWC codes
    (``qe_conv_a8``): the input quantized once (in C, bit-identical codes), each output pixel's
    patch row read tap by tap from the codes, 64 products a ``vpdpbusd`` (AVX-512 VNNI) or 16 a
    ``vpmaddwd`` + ``vpaddd`` on int16 copies of codes and weights (AVX2); output channels-last.
    Activations per tensor (dynamic or static) or per token (per patch row: with a window
    wider than a pixel, each row quantized into a uint8 patch matrix in the same call)."""

    name = "int8-conv-native"
    real = True

    def supports(self, spec: LinearSpec, geom: ConvGeometry) -> str | None:
        if geom.groups != 1:
            return "dense convolutions only (groups == 1)"
        why = _weight_why(spec)
        if why is not None:
            return why
        taps = geom.kernel_size[0] * geom.kernel_size[1]
        if taps * -(-geom.in_channels // 4) * 4 > MAX_CONV_K:
            return f"K (taps x channels, padded to 4) above {MAX_CONV_K}: int32 sums could overflow"
        why = unavailable_reason()
        if why is not None:
            return why
        if not conv_isa_supported("avx2"):
            return "needs AVX2 or AVX-512 VNNI (this CPU lacks avx2)"
        if conv_isa() not in DENSE_ISA_PATHS:  # elsewhere it runs its scalar reference
            return f"needs AVX2 or AVX-512 VNNI (the kernels' path is forced to {conv_isa()})"
        return None

    def prepare(
        self,
        spec: LinearSpec,
        geom: ConvGeometry,
        qw: QuantizedWeight,
        bias: torch.Tensor | None,
        act: ActQParams | None,
    ) -> ConvA8State:
        o, c = geom.out_channels, geom.in_channels
        taps = geom.kernel_size[0] * geom.kernel_size[1]
        codes = qw.stored_codes().to(torch.int8).contiguous()  # [O, C * taps], PyTorch's order
        lib = _lib()
        packed = torch.empty(lib.qe_conv_a8_packed_bytes(o, c, taps), dtype=torch.uint8)
        _check(lib.qe_conv_a8_pack(codes.data_ptr(), o, c, taps, packed.data_ptr()), "pack")
        scale = per_channel(qw.scale.float(), qw)
        b = None if bias is None else bias.float().contiguous()
        return ConvA8State(spec, geom, act, packed, scale, b, _window(geom))

    def run(self, state: ConvA8State, x: torch.Tensor) -> torch.Tensor:
        return _run_a8("qe_conv_a8_p", state, x)


class NativeDwConvA8Kernel:
    """``int8-dwconv-native``: depthwise int8 convolution (``qe_dwconv_a8``): per-tensor int8
    activation codes times int8 weight codes, summed exactly in float32 (integers below 2^24),
    vectorized across channels on NHWC, then one multiply by the two scales; channels-last
    output. Every instruction-set path, the scalar one included."""

    name = "int8-dwconv-native"
    real = True

    def supports(self, spec: LinearSpec, geom: ConvGeometry) -> str | None:
        if not geom.depthwise:
            return "depthwise convolutions only (groups == in_channels == out_channels)"
        why = _weight_why(spec)
        if why is not None:
            return why
        if spec.act_granularity != "tensor":
            return "needs a per-tensor activation scale"
        if spec.k > 64:
            return "at most 64 taps (kh * kw): sums stay exact in float32"
        return unavailable_reason()

    def prepare(
        self,
        spec: LinearSpec,
        geom: ConvGeometry,
        qw: QuantizedWeight,
        bias: torch.Tensor | None,
        act: ActQParams | None,
    ) -> ConvA8State:
        taps = qw.stored_codes().float().t().contiguous()  # [taps, C]: channels innermost
        scale = per_channel(qw.scale.float(), qw)
        b = None if bias is None else bias.float().contiguous()
        return ConvA8State(spec, geom, act, taps, scale, b, _window(geom))

    def run(self, state: ConvA8State, x: torch.Tensor) -> torch.Tensor:
        return _run_a8("qe_dwconv_a8_p", state, x)


ONEDNN_CONV = OnednnConvKernel(depthwise=False)
ONEDNN_DWCONV = OnednnConvKernel(depthwise=True)
DWCONV_WO = NativeDepthwiseWOKernel()
CONV_A8 = NativeConvA8Kernel()
DWCONV_A8 = NativeDwConvA8Kernel()
