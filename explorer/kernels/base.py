"""The kernel interface: what function a quantized linear layer computes, and who can compute it.

A `LinearSpec` describes the *function* (weight bits, symmetry and block; activation bits,
granularity, symmetry, static or dynamic). Every `LinearKernel` declares which specs it computes
exactly (up to float summation order) with `supports`; the reference kernel computes every spec in
float. Dispatch never hands a spec to a kernel that computes a different function (for example a
per-tensor activation kernel for per-token scales); among the kernels that compute it, the fastest
by measurement is chosen (`explorer.kernels.select`).

Formats without a real kernel (5, 6, 7 bits; 2/3-bit weights in groups that are not multiples of
32; 4-bit activations) run on the reference path for accuracy and are timed on the real kernel of
the next wider format: `timing_configs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from explorer.quant.config import QuantConfig
from explorer.quant.primitives import block_size
from explorer.quant.qtensor import QuantizedWeight


@dataclass(frozen=True)
class LinearSpec:
    n: int
    k: int
    weight_bits: int
    weight_symmetric: bool
    block: tuple[int, int]
    act_bits: int | None = None
    act_granularity: str = "token"
    act_symmetric: bool = True
    act_static: bool = False
    device: str = "cpu"

    @classmethod
    def from_config(cls, config: QuantConfig, n: int, k: int, device: str = "cpu") -> LinearSpec:
        assert config.weight_bits is not None
        return cls(
            n=n,
            k=k,
            weight_bits=config.weight_bits,
            weight_symmetric=config.symmetric,
            block=block_size(config, (n, k)),
            act_bits=config.act_bits,
            act_granularity=config.act_granularity,
            act_symmetric=config.act_symmetric,
            act_static=config.act_mode == "static",
            device=device,
        )

    @property
    def group_size(self) -> int:
        return self.block[1]

    @property
    def per_tensor_weight(self) -> bool:
        return self.block[0] == self.n and self.n > 1

    @property
    def per_channel(self) -> bool:
        return self.block == (1, self.k)

    @property
    def weight_only(self) -> bool:
        return self.act_bits is None


@dataclass
class ActQParams:
    """Static activation qparams (per tensor), from calibration."""

    scale: float
    zero: int


class LinearKernel(Protocol):
    name: str

    def supports(self, spec: LinearSpec) -> str | None:
        """None if this kernel computes ``spec`` exactly; otherwise why not."""
        ...

    def prepare(
        self,
        spec: LinearSpec,
        qw: QuantizedWeight,
        bias: torch.Tensor | None,
        act: ActQParams | None,
    ) -> Any:
        """Repack weights into this kernel's runtime format (done once per layer)."""
        ...

    def run(self, state: Any, x: torch.Tensor) -> torch.Tensor:
        """``x``: float32 ``[M, K]`` → float32 ``[M, N]``."""
        ...


def timing_configs(config: QuantConfig) -> list[QuantConfig]:
    """Wider formats to time a config that has no real kernel on, nearest first (upper bounds).

    Weight bits round up to 4 or 8; 4-bit activations to 8; integer activations only have int8 ×
    int8 kernels, so their weights go to 8-bit per-channel; groups without a kernel go per-channel.
    """
    assert config.weight_bits is not None
    out = []
    if config.act_bits is not None:
        out.append(
            config.with_(
                weight_bits=8,
                act_bits=8,
                granularity="channel",
                group_size=None,
                act_mode="dynamic",
                calibration="minmax",
            )
        )
    else:
        bits = 4 if config.weight_bits <= 4 else 8
        out.append(config.with_(weight_bits=bits))
        out.append(config.with_(weight_bits=bits, granularity="channel", group_size=None))
        out.append(config.with_(weight_bits=8, granularity="channel", group_size=None))
    return out
