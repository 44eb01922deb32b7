"""Kernels built on PyTorch's own integer ops, on CPU and (where present) CUDA.

- ``int8-w8a8-intmm``: ``torch._int_mm`` (int8 × int8 → int32) with the dequantization epilogue in
  fp32; exact on the integer side, any activation granularity. On CUDA it needs M > 16.
- ``int8-w8a8-fbgemm``: fbgemm's linear with fp32 input quantized by *our* per-tensor qparams
  (``quantized::linear_with_input_q_dq_qweight_dq_output_fp32``). Registered only on CPUs with VNNI:
  without it fbgemm multiplies with ``vpmaddubsw``, whose int16 pair sums saturate for full-range
  uint8 activations, which is a different function.
- ``int8-wo-int8pack-bf16``: ``torch._weight_int8pack_mm`` with bf16 activations (its fast path;
  10-30x slower with fp32), per-channel symmetric int8 weights.
- ``int4-wo-tinygemm-bf16``: ``torch._weight_int4pack_mm_for_cpu`` (CUDA: ``_weight_int4pack_mm``),
  bf16 activations, groups of 32/64/128/256, a bf16 scale and bf16 zero per group: the weight is
  ``(u - 8) * scale + zero``, so our ``scale * (u - z)`` maps to ``zero = (8 - z) * scale``.

The bf16 kernels round activations (and scales) to bf16: the same function to about 3 significant
digits, which the close tests state as their tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from explorer import machine
from explorer.kernels.activation import act_qparams, quantize_activation, to_int8_domain
from explorer.kernels.base import ActQParams, LinearSpec
from explorer.quant.qtensor import QuantizedWeight


@dataclass
class A8W8Weights:
    """int8 weights ``[N, K]`` in the int8 domain with per-output scale and zero, ready for any
    int8 × int8 kernel, plus what the zero-point corrections need."""

    wq: torch.Tensor  # int8 [N, K]
    scale: torch.Tensor  # fp32 [N]
    zero: torch.Tensor | None  # int32 [N] (None when symmetric)
    wsum: torch.Tensor  # int32 [N] = Σ_k wq
    bias: torch.Tensor | None

    @classmethod
    def build(cls, qw: QuantizedWeight, bias: torch.Tensor | None, device: str) -> A8W8Weights:
        n, k = qw.shape
        # 8-bit codes are stored as int8 [N, K] already: share them (no second quantized copy,
        # and no int32 [N, K] on the way; a 151,936-row head's would be 545 MB)
        wq = qw.data if qw.bits == 8 else qw.stored_codes().to(torch.int8)
        scale = qw.scale.float().expand(qw.n_blocks[0], 1).repeat_interleave(qw.block[0], 0)
        zero = None
        if qw.zero is not None:
            zero = qw.stored_zero().reshape(-1, 1).repeat_interleave(qw.block[0], 0).reshape(n)
            zero = zero.to(device)
        return cls(
            wq=wq.to(device),
            scale=scale.reshape(n).contiguous().to(device),
            zero=zero,
            wsum=wq.sum(dim=1, dtype=torch.int32).to(device),
            bias=None if bias is None else bias.float().to(device),
        )


def a8w8_epilogue(
    acc: torch.Tensor,
    xs: torch.Tensor,
    xz: torch.Tensor,
    xsum: torch.Tensor,
    w: A8W8Weights,
    k: int,
    x_symmetric: bool,
) -> torch.Tensor:
    """``s_x s_w Σ_k (x_q - z_x)(w_q - z_w) + b`` from the raw ``acc = Σ_k x_q w_q``."""
    corr = acc
    if not x_symmetric:
        corr = corr - xz * w.wsum[None, :]
    if w.zero is not None:
        corr = corr - xsum * w.zero[None, :]
        if not x_symmetric:
            corr = corr + k * xz * w.zero[None, :]
    y = corr.float() * xs * w.scale[None, :]
    return y if w.bias is None else y + w.bias


def _a8w8_spec_ok(spec: LinearSpec) -> str | None:
    if spec.act_bits != 8 or spec.weight_bits != 8:
        return "needs int8 activations and int8 weights"
    if spec.block[1] != spec.k:
        return "int8 × int8 kernels take per-channel or per-tensor weight scales, not groups"
    return None


class IntMMKernel:
    name = "int8-w8a8-intmm"
    real = True

    def supports(self, spec: LinearSpec) -> str | None:
        why = _a8w8_spec_ok(spec)
        if why:
            return why
        if spec.device == "cuda" and (spec.k % 8 or spec.n % 8):
            return "torch._int_mm on CUDA needs K and N divisible by 8"
        return None

    def prepare(
        self,
        spec: LinearSpec,
        qw: QuantizedWeight,
        bias: torch.Tensor | None,
        act: ActQParams | None,
    ) -> Any:
        w = A8W8Weights.build(qw, bias, spec.device)
        return spec, w, w.wq.t().contiguous(), act

    def run(self, state: Any, x: torch.Tensor) -> torch.Tensor:
        spec, w, wt, act = state
        q, xs, xz = quantize_activation(x, spec, act)
        xq, xz = to_int8_domain(q, xz, spec.act_symmetric)
        m = xq.shape[0]
        if spec.device == "cuda" and m <= 16:  # _int_mm needs more than 16 rows on CUDA
            pad = torch.zeros(17 - m, xq.shape[1], dtype=torch.int8, device=xq.device)
            acc = torch._int_mm(torch.cat([xq, pad]), wt)[:m]
        else:
            acc = torch._int_mm(xq, wt)
        xsum = xq.to(torch.int32).sum(dim=1, keepdim=True) if w.zero is not None else None
        return a8w8_epilogue(acc, xs, xz, xsum, w, spec.k, spec.act_symmetric)


class FbgemmKernel:
    name = "int8-w8a8-fbgemm"
    real = True

    def supports(self, spec: LinearSpec) -> str | None:
        why = _a8w8_spec_ok(spec)
        if why:
            return why
        if spec.device != "cpu":
            return "fbgemm runs on CPU"
        if spec.act_granularity != "tensor":
            return "fbgemm quantizes activations per tensor, not per token"
        if not spec.weight_symmetric:
            return "fbgemm path here takes symmetric weights"
        if not machine.has_vnni():
            return "no VNNI: fbgemm's AVX2 path saturates int16 pair sums for 8-bit activations"
        return None

    def prepare(
        self,
        spec: LinearSpec,
        qw: QuantizedWeight,
        bias: torch.Tensor | None,
        act: ActQParams | None,
    ) -> Any:
        w = A8W8Weights.build(qw, bias, "cpu")
        qweight = torch._make_per_channel_quantized_tensor(
            w.wq, w.scale.double(), torch.zeros(spec.n, dtype=torch.long), 0
        )
        packed = torch.ops.quantized.linear_prepack(qweight, w.bias)
        return spec, packed, act

    def run(self, state: Any, x: torch.Tensor) -> torch.Tensor:
        spec, packed, act = state
        xs, xz = act_qparams(x, spec, act)  # fbgemm quantizes x itself with these qparams
        scale = float(xs[0, 0])
        zero = int(xz[0, 0]) + (128 if spec.act_symmetric else 0)  # uint8 domain
        op = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32
        return op(x.contiguous(), scale, zero, packed)


class Int8PackKernel:
    name = "int8-wo-int8pack-bf16"
    real = True

    def supports(self, spec: LinearSpec) -> str | None:
        if spec.act_bits is not None or spec.weight_bits != 8:
            return "weight-only int8"
        if not spec.weight_symmetric or spec.block[1] != spec.k:
            return "needs symmetric per-channel (or per-tensor) int8 weights"
        if spec.k % 16:
            return "K must be a multiple of 16 (other K crash torch's kernel)"
        return None

    def prepare(
        self,
        spec: LinearSpec,
        qw: QuantizedWeight,
        bias: torch.Tensor | None,
        act: ActQParams | None,
    ) -> Any:
        w = A8W8Weights.build(qw, bias, spec.device)
        return w.wq, w.scale.bfloat16(), w.bias

    def run(self, state: Any, x: torch.Tensor) -> torch.Tensor:
        wq, scale, bias = state
        y = torch._weight_int8pack_mm(x.bfloat16(), wq, scale).float()
        # in place: ``y`` is this call's own fresh tensor, and the sum is the same fp32 add
        return y if bias is None else y.add_(bias)


TINYGEMM_GROUPS = (32, 64, 128, 256)


class TinyGemmInt4Kernel:
    name = "int4-wo-tinygemm-bf16"
    real = True

    def supports(self, spec: LinearSpec) -> str | None:
        if spec.act_bits is not None or spec.weight_bits != 4:
            return "weight-only int4"
        if spec.block[0] != 1 or spec.group_size not in TINYGEMM_GROUPS:
            return f"groups of {list(TINYGEMM_GROUPS)} along K only"
        if spec.k % 32:
            return "K must be a multiple of 32"
        return None

    def prepare(
        self,
        spec: LinearSpec,
        qw: QuantizedWeight,
        bias: torch.Tensor | None,
        act: ActQParams | None,
    ) -> Any:
        n, k = qw.shape
        n_pad = -n % 16  # the packed layout tiles N by 16: pad, and the padding is runtime bytes
        codes = qw.stored_codes()  # unsigned nibbles [N, K]
        scale = qw.scale.float()  # [N, K/G]
        zero = (8 - qw.stored_zero().float()) * scale
        if n_pad:
            codes = torch.cat([codes, torch.full((n_pad, k), 8, dtype=torch.int32)])
            scale = torch.cat([scale, torch.ones(n_pad, scale.shape[1])])
            zero = torch.cat([zero, torch.zeros(n_pad, zero.shape[1])])
        sz = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().bfloat16()
        if spec.device == "cuda":
            packed = _cuda_int4pack(codes)
        else:
            packed = torch._convert_weight_to_int4pack_for_cpu(codes.contiguous(), 2)
        bias_t = None if bias is None else bias.float().to(spec.device)
        cuda = spec.device == "cuda"
        mm = torch._weight_int4pack_mm if cuda else torch._weight_int4pack_mm_for_cpu
        # the slice back to N only where N was padded: a no-op slice costs ~1.3 µs a call
        return mm, packed, spec.group_size, sz.to(spec.device), n if n_pad else None, bias_t

    def run(self, state: Any, x: torch.Tensor) -> torch.Tensor:
        mm, packed, group, sz, n, bias = state
        y = mm(x.bfloat16(), packed, group, sz)
        y = (y if n is None else y[:, :n]).float()
        return y if bias is None else y.add_(bias)


def _cuda_int4pack(codes: torch.Tensor) -> torch.Tensor:
    """CUDA's int4 pack takes uint8 ``[N, K/2]`` with the even element in the high nibble."""
    c = codes.to(torch.uint8)
    packed = (c[:, ::2] << 4) | c[:, 1::2]
    return torch._convert_weight_to_int4pack(packed.contiguous().to("cuda"), 8)
