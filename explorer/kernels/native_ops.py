"""Kernel adapters for our own AVX2 C kernels (`explorer.kernels.native`).

- ``int4-wo-native`` / ``int8-wo-native``: weight-only, fp32 activations, packed codes read
  directly (4-bit offset-binary nibbles, int8), one scale (and zero) per group or channel.
- ``int8-w8a8-native``: int8 activations (per token or per tensor, dynamic or static, symmetric or
  not) × int8 weights, exact int32 accumulation (``vpmaddwd``), fp32 dequantization fused; dynamic
  activations are quantized in C too (bit-identical to the torch primitives).
- ``int4-w4a8-native``: int8 activations (any mode the W8A8 kernel takes) × packed int4 weights
  with per-group or per-channel scales (symmetric or not): exact per-group integer dot products
  (``vpmaddubsw`` on nibble × int8 pairs, which cannot saturate), one float FMA per group.

On x86-64 CPUs (AVX2, AVX-VNNI, AVX-512 VNNI) the integer kernels' ``prepare`` also repacks the
weights into interleaved row panels (`native.pack_int8`, `native.pack_int4`: the layout
``vpdpbusd`` streams, scales alongside; AVX2 emulates that instruction exactly) and ``run`` uses
them whenever the library's path reads that layout; a path forced to scalar afterwards (tests)
runs on the row-major weights, which the state keeps as views of the quantized weight (int4)
or recovers from the panels (int8), so nothing is stored twice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from explorer.kernels import native
from explorer.kernels.activation import quantize_activation, to_int8_domain
from explorer.kernels.base import ActQParams, LinearSpec
from explorer.kernels.torch_ops import A8W8Weights, a8w8_epilogue
from explorer.quant.primitives import SCALE_EPS
from explorer.quant.qtensor import QuantizedWeight


def not_here(spec: LinearSpec) -> str | None:
    """Why our C kernels cannot run ``spec`` on this machine (None: they can)."""
    if spec.device != "cpu":
        return "CPU kernel"
    if not native.available():
        return f"native kernels unavailable: {native.unavailable_reason()}"
    return None


def int8_activations(
    x: torch.Tensor, spec: LinearSpec, act: ActQParams | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``x`` quantized in torch as ``spec`` says (static or per tensor), in the int8 domain:
    codes, scales, zero points, and the zero points as the kernels take them (None: symmetric)."""
    q, xs, xz = quantize_activation(x, spec, act)
    xq, xz = to_int8_domain(q, xz, spec.act_symmetric)
    zx = None if spec.act_symmetric else xz.reshape(-1).to(torch.int32).contiguous()
    return xq, xs, xz, zx


def _per_row(blocks: torch.Tensor, rows: int) -> torch.Tensor:
    """Per-block values [N/rows, K/G] as float32 for every weight row [N, K/G]."""
    return blocks.float().repeat_interleave(rows, 0).contiguous()


@dataclass(frozen=True)
class WeightOnlyState:
    """What `NativeWeightOnlyKernel.prepare` packs once per layer."""

    codes: torch.Tensor  # int8 [N, K], or two int4 codes per byte [N, K/2]
    scale: torch.Tensor  # fp32 [N, K/G]
    zeros: torch.Tensor | None  # stored zero points [N, K/G]; None when symmetric
    group: int
    bias: torch.Tensor | None


@dataclass(frozen=True)
class W4A8State:
    """What `NativeW4A8Kernel.prepare` packs once per layer: the codes with their scales, and
    the zero-point terms folded so that each call needs one integer dot product per group."""

    spec: LinearSpec
    act: ActQParams | None
    codes: torch.Tensor  # two int4 codes per byte [N, K/2]
    scale: torch.Tensor  # fp32 [N, K/G]
    scaled_zero: torch.Tensor  # scale x stored zero point [N, K/G]
    zero_term: torch.Tensor  # per output: sum over groups of scale x (code sum - G x zero) [N]
    group: int
    bias: torch.Tensor | None
    packed: native.PackedInt4 | None = None  # the panel layout, on SIMD paths
    call: native.BoundLinear | None = None  # the packed dynamic call, bound (None: static)


@dataclass(frozen=True)
class W8A8State:
    """What `NativeW8A8Kernel.prepare` packs once per layer: the weights ready for any int8 ×
    int8 kernel and, on SIMD paths, repacked into panels (then ``w.wq`` is left empty)."""

    spec: LinearSpec
    w: A8W8Weights
    act: ActQParams | None
    packed: native.PackedInt8 | None = None
    call: native.BoundLinear | None = None  # the packed dynamic call, bound (if it applies)

    def row_major(self) -> torch.Tensor:
        """int8 [N, K] weights for the row-major kernels."""
        return self.w.wq if self.packed is None else native.unpack_int8(self.packed)


def _repack() -> bool:
    """Whether prepared integer layers should hold repacked weights (every SIMD path)."""
    return native.packed_path()


class NativeWeightOnlyKernel:
    real = True

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.name = f"int{bits}-wo-native"

    def supports(self, spec: LinearSpec) -> str | None:
        if spec.act_bits is not None or spec.weight_bits != self.bits:
            return f"weight-only int{self.bits}"
        if spec.k % 32 or spec.group_size % 32:
            return "K and the group size must be multiples of 32"
        return not_here(spec)

    def prepare(
        self,
        spec: LinearSpec,
        qw: QuantizedWeight,
        bias: torch.Tensor | None,
        act: ActQParams | None,
    ) -> Any:
        n, k = qw.shape
        scale = _per_row(qw.scale, qw.block[0])  # [N, K/G]
        zeros = None if qw.zero is None else _per_row(qw.stored_zero(), qw.block[0])
        if self.bits == 8:
            codes = qw.data.contiguous()
        else:
            codes = qw.data.reshape(n, k // 2)
        b = None if bias is None else bias.float().contiguous()
        return WeightOnlyState(codes, scale, zeros, qw.block[1], b)

    def run(self, state: WeightOnlyState, x: torch.Tensor) -> torch.Tensor:
        return native.wo_linear(
            x.contiguous(),
            state.codes,
            state.scale,
            state.zeros,
            bits=self.bits,
            group_size=state.group,
            bias=state.bias,
        )


class NativeW4A8Kernel:
    name = "int4-w4a8-native"
    real = True

    def supports(self, spec: LinearSpec) -> str | None:
        if spec.act_bits != 8 or spec.weight_bits != 4:
            return "int8 activations × int4 weights"
        if spec.k % 32 or spec.block[1] % 32:
            return "K and the group size must be multiples of 32"
        return not_here(spec)

    def prepare(
        self,
        spec: LinearSpec,
        qw: QuantizedWeight,
        bias: torch.Tensor | None,
        act: ActQParams | None,
    ) -> Any:
        n, k = qw.shape
        group = qw.block[1]
        scale = _per_row(qw.scale, qw.block[0])  # [N, K/G]
        zero = _per_row(qw.stored_zero(), qw.block[0])  # 8 when symmetric
        codes = qw.data.reshape(n, k // 2).contiguous()
        nibbles = (codes & 0xF).to(torch.int32) + (codes >> 4).to(torch.int32)
        code_sums = nibbles.reshape(n, k // group, group // 2).sum(-1).float()  # [N, K/G]
        zero_term = (scale * (code_sums - group * zero)).sum(1).contiguous()
        b = None if bias is None else bias.float().contiguous()
        scaled_zero = (scale * zero).contiguous()
        packed = call = None
        if _repack():  # symmetric codes (zero point 8) need no scale x zero stream
            packed = native.pack_int4(codes, scale, None if qw.zero is None else scaled_zero, group)
            if not spec.act_static:
                call = native.bind_w4a8_packed_dynamic(
                    packed,
                    zero_term,
                    b,
                    per_token=spec.act_granularity == "token",
                    symmetric=spec.act_symmetric,
                    eps=SCALE_EPS,
                )
        return W4A8State(spec, act, codes, scale, scaled_zero, zero_term, group, b, packed, call)

    def run(self, state: W4A8State, x: torch.Tensor) -> torch.Tensor:
        spec, act, packed = state.spec, state.act, state.packed
        if packed is not None and native.packed_path():
            if state.call is not None:
                return state.call(x)
            xq, xs, xz, zx = int8_activations(x, spec, act)
            return native.w4a8_packed_linear(
                xq.contiguous(),
                xs.reshape(-1).float().contiguous(),
                zx,
                packed,
                state.zero_term,
                state.bias,
            )
        codes, scale = state.codes, state.scale
        scaled_zero, zero_term, group, bias = (
            state.scaled_zero,
            state.zero_term,
            state.group,
            state.bias,
        )
        if not spec.act_static:  # quantized in C, as for W8A8: no torch ops per call
            return native.w4a8_dynamic_linear(
                x.float().contiguous(),
                codes,
                scale,
                scaled_zero,
                zero_term,
                group,
                bias,
                per_token=spec.act_granularity == "token",
                symmetric=spec.act_symmetric,
                eps=SCALE_EPS,
            )
        xq, xs, xz, zx = int8_activations(x, spec, act)
        return native.w4a8_linear(
            xq.contiguous(),
            xs.reshape(-1).float().contiguous(),
            zx,
            codes,
            scale,
            scaled_zero,
            zero_term,
            group,
            bias,
        )


class NativeW8A8Kernel:
    name = "int8-w8a8-native"
    real = True

    def supports(self, spec: LinearSpec) -> str | None:
        if spec.act_bits != 8 or spec.weight_bits != 8 or spec.block[1] != spec.k:
            return "int8 activations × per-channel/per-tensor int8 weights"
        return not_here(spec)

    def prepare(
        self,
        spec: LinearSpec,
        qw: QuantizedWeight,
        bias: torch.Tensor | None,
        act: ActQParams | None,
    ) -> Any:
        w = A8W8Weights.build(qw, bias, "cpu")
        if not _repack():
            return W8A8State(spec, w, act)
        packed = native.pack_int8(w.wq)
        call = None
        if not spec.act_static and w.zero is None:
            call = native.bind_w8a8_packed_dynamic(
                packed,
                w.scale,
                w.bias,
                per_token=spec.act_granularity == "token",
                symmetric=spec.act_symmetric,
                eps=SCALE_EPS,
            )
        empty = w.wq.new_empty((0, w.wq.shape[1]))  # the panels hold the codes
        return W8A8State(spec, replace(w, wq=empty), act, packed, call)

    def run(self, state: W8A8State, x: torch.Tensor) -> torch.Tensor:
        spec, w, act, packed = state.spec, state.w, state.act, state.packed
        if packed is not None and native.packed_path():
            return self._run_packed(state, packed, x)
        wq = state.row_major()
        if not spec.act_static and w.zero is None:
            # Dynamic activations quantized in C with the same arithmetic (same codes, same
            # outputs), instead of ~10 torch ops per call: what small layers and M = 1 pay for.
            return native.w8a8_dynamic_linear(
                x.float().contiguous(),
                wq,
                w.scale,
                w.wsum,
                w.bias,
                per_token=spec.act_granularity == "token",
                symmetric=spec.act_symmetric,
                eps=SCALE_EPS,
            )
        xq, xs, xz, zx = int8_activations(x, spec, act)
        if w.zero is None:
            return native.w8a8_linear(
                xq.contiguous(), xs.reshape(-1).contiguous(), zx, wq, w.scale, w.wsum, w.bias
            )
        # Asymmetric weights: exact int32 product, then all zero-point corrections in the epilogue.
        acc = native.int8_gemm(xq.contiguous(), wq)
        xsum = xq.to(torch.int32).sum(dim=1, keepdim=True)
        return a8w8_epilogue(acc, xs, xz, xsum, w, spec.k, spec.act_symmetric)

    @staticmethod
    def _run_packed(state: W8A8State, packed: native.PackedInt8, x: torch.Tensor) -> torch.Tensor:
        """`run` on the repacked weights (same arithmetic, the panel kernels)."""
        spec, w, act = state.spec, state.w, state.act
        if state.call is not None:
            return state.call(x)
        xq, xs, xz, zx = int8_activations(x, spec, act)
        if w.zero is None:
            return native.w8a8_packed_linear(
                xq.contiguous(), xs.reshape(-1).contiguous(), zx, packed, w.scale, w.bias
            )
        acc = native.int8_gemm_packed(xq.contiguous(), packed)
        xsum = xq.to(torch.int32).sum(dim=1, keepdim=True)
        return a8w8_epilogue(acc, xs, xz, xsum, w, spec.k, spec.act_symmetric)
