"""Depthwise int8 convolution on oneDNN (``onednn::qconv2d_pointwise``), with fp32 output.

Dense convolutions run as im2col plus a linear kernel (`explorer.nn.modules`). Depthwise ones have
no useful GEMM form (one 3x3 dot product per channel), so they get this kernel: uint8 activations
(per-tensor scale and zero point; symmetric int8 codes are shifted by +128) times per-channel
symmetric int8 weights, int32 accumulation, dequantized to fp32. Tests check it against the float
reference at 1e-6 and bit-exact on extreme operands. oneDNN's *dense* int8 convolution on AVX2
machines is not exact (its ``vpmaddubsw`` pair sums saturate), so it is not used for those.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from explorer.kernels.activation import act_qparams
from explorer.kernels.base import ActQParams, LinearSpec
from explorer.quant.qtensor import QuantizedWeight


@dataclass(frozen=True)
class ConvGeometry:
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int


@dataclass(frozen=True)
class DepthwiseState:
    """What `OnednnDepthwiseKernel.prepare` packs once per layer."""

    spec: LinearSpec
    geom: ConvGeometry
    packed: Any  # oneDNN's opaque prepacked weight
    weight_scale: torch.Tensor  # fp32 [out_channels]
    weight_zero: torch.Tensor  # int64 zeros [out_channels] (symmetric weights)
    bias: torch.Tensor | None
    act: ActQParams | None


class OnednnDepthwiseKernel:
    name = "int8-dwconv-onednn"
    real = True

    def supports(self, spec: LinearSpec, geom: ConvGeometry) -> str | None:
        if spec.device != "cpu":
            return "CPU kernel"
        if geom.groups == 1 or geom.groups != geom.in_channels:
            return "depthwise convolutions only (groups == in_channels)"
        if spec.act_bits != 8 or spec.act_granularity != "tensor":
            return "needs int8 activations with a per-tensor scale"
        if spec.weight_bits != 8 or not spec.weight_symmetric or spec.block[1] != spec.k:
            return "needs symmetric per-channel int8 weights"
        if not hasattr(torch.ops.onednn, "qconv2d_pointwise"):
            return "this torch build has no oneDNN quantized convolution"
        return None

    def prepare(
        self,
        spec: LinearSpec,
        geom: ConvGeometry,
        qw: QuantizedWeight,
        bias: torch.Tensor | None,
        act: ActQParams | None,
    ) -> DepthwiseState:
        o = geom.out_channels
        wq = qw.stored_codes().to(torch.int8).reshape(o, 1, *geom.kernel_size)
        ws = qw.scale.float().reshape(-1).expand(qw.n_blocks[0]).repeat_interleave(qw.block[0])
        ws = ws.contiguous()
        # The runtime activation scale and zero point are passed per call; the prepacked weight
        # does not depend on them (checked in the tests with several zero points).
        packed = torch.ops.onednn.qconv_prepack(
            wq,
            ws,
            1.0,
            0,
            list(geom.stride),
            list(geom.padding),
            list(geom.dilation),
            geom.groups,
            None,
        )
        wz = torch.zeros(o, dtype=torch.long)
        b = None if bias is None else bias.float().contiguous()
        return DepthwiseState(spec, geom, packed, ws, wz, b, act)

    def run(self, state: DepthwiseState, x: torch.Tensor) -> torch.Tensor:
        spec, geom = state.spec, state.geom
        flat = x.reshape(1, -1).float()
        scale, zero = act_qparams(flat, spec, state.act)
        s = float(scale[0, 0])
        z = int(zero[0, 0]) + (128 if spec.act_symmetric else 0)  # uint8 domain
        xq = torch.clamp(torch.round(x.float() / s) + z, 0, 255).to(torch.uint8)
        y = torch.ops.onednn.qconv2d_pointwise(
            xq.contiguous(memory_format=torch.channels_last),
            s,
            z,
            state.packed,
            state.weight_scale,
            state.weight_zero,
            state.bias,
            list(geom.stride),
            list(geom.padding),
            list(geom.dilation),
            geom.groups,
            1.0,
            0,
            torch.float32,
            "none",
            [],
            "",
        )
        return y.contiguous()


DEPTHWISE = OnednnDepthwiseKernel()
