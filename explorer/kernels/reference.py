"""The reference kernel: every spec, computed in float from the dequantized weights and the
fake-quantized activations. Integer kernels must agree with it up to summation order; it is also
the accuracy path for formats that have no real kernel (then the layer is `simulated`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from explorer.kernels.activation import fake_quantize_activation
from explorer.kernels.base import ActQParams, LinearSpec
from explorer.quant.qtensor import QuantizedWeight


@dataclass
class _RefState:
    spec: LinearSpec
    weight: torch.Tensor
    bias: torch.Tensor | None
    act: ActQParams | None


class ReferenceKernel:
    name = "reference"
    real = False

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype

    def supports(self, spec: LinearSpec) -> str | None:
        return None

    def prepare(
        self,
        spec: LinearSpec,
        qw: QuantizedWeight,
        bias: torch.Tensor | None,
        act: ActQParams | None,
    ) -> _RefState:
        w = qw.dequantize(self.dtype).to(spec.device)
        b = None if bias is None else bias.to(self.dtype)
        return _RefState(spec, w, b, act)

    def run(self, state: _RefState, x: torch.Tensor) -> torch.Tensor:
        if state.spec.act_bits is not None:
            x = fake_quantize_activation(x.float(), state.spec, state.act)
        return F.linear(x.to(self.dtype), state.weight, state.bias).float()
