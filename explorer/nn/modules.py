"""Quantized modules: `QuantLinear` and `QuantConv2d` hold packed integer weights, scales and zero
points as buffers (exactly the bytes that ship), and run a real kernel chosen per layer.

A layer whose format has no real kernel runs the float reference (accuracy) and is `simulated`:
its latency is measured on `timing_twin()`, the same layer re-quantized to the next wider format
that has a real kernel. A convolution's flattened weight is ``[out_channels, in_channels/groups *
kh * kw]`` (channel-major, as PyTorch stores it), so a weight group runs along input channels ×
kernel window; its kernel is the fastest measured of `explorer.kernels.conv_ops`'s: oneDNN's
int8 convolution (dense or depthwise, per-tensor int8 activations, where it is exact), im2col in
C plus any linear kernel, or the depthwise kernel on stored codes (float activations). Grouped
convolutions quantize activations per tensor whatever the config's granularity (`conv_spec`);
the rest without a kernel are simulated, timed on the nearest wider format that has one.

A `QuantLinear` made by AWQ or SmoothQuant also holds ``input_scale`` (fp32, one per input
channel): its stored weight is ``W diag(s)`` and it multiplies its input by ``1/s`` before the
kernel, so the kernel, the packed format and the kernel choice are those of round-to-nearest.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from explorer.kernels.activation import fake_quantize_activation
from explorer.kernels.base import ActQParams, LinearSpec, timing_configs
from explorer.kernels.conv_ops import ConvGeometry
from explorer.kernels.select import (
    REFERENCE,
    candidates,
    choose,
    choose_conv,
    conv_candidates,
    get_conv_kernel,
    get_kernel,
)
from explorer.quant.config import QuantConfig
from explorer.quant.qtensor import QuantizedWeight


@dataclasses.dataclass(frozen=True)
class PreparedKernel:
    """A kernel and the runtime state its ``prepare`` built for one layer (rebuilt, never
    copied, when the layer is pickled or its kernel changes). ``call`` is ``kernel.run`` with
    the state bound: the per-call path enters the kernel's ``run`` through one C-level partial,
    with no frame of ours in between."""

    kernel: Any
    state: Any
    call: Callable[[torch.Tensor], torch.Tensor] = dataclasses.field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "call", functools.partial(self.kernel.run, self.state))

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.call(x)


@dataclasses.dataclass(frozen=True)
class GroupedWeight:
    """A grouped convolution's dequantized float weight, cached for ``F.conv2d``."""

    weight: torch.Tensor


class QuantModule(nn.Module):
    """Buffers: ``qweight``, ``scale``, optional ``zero``, ``bias``, ``act_scale``/``act_zero``
    (and, on a `QuantLinear`, ``input_scale``)."""

    def _init_quant(
        self,
        qw: QuantizedWeight,
        bias: torch.Tensor | None,
        config: QuantConfig,
        act: ActQParams | None,
        kernel: str | None,
    ) -> None:
        self.config = config
        self.weight_shape = qw.shape
        for name, t in qw.tensors().items():
            self.register_buffer(name, t)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), False)
        if act is not None:
            self.register_buffer("act_scale", torch.tensor([act.scale], dtype=torch.float32))
            self.register_buffer("act_zero", torch.tensor([act.zero], dtype=torch.int32))
        self.spec = LinearSpec.from_config(config, *qw.shape)
        self.kernel_name = kernel if kernel is not None else self._default_kernel()
        self._state: PreparedKernel | GroupedWeight | None = None

    # --- what the layer is ----------------------------------------------------------------
    def qweight_view(self) -> QuantizedWeight:
        return QuantizedWeight(
            shape=self.weight_shape,
            bits=self.spec.weight_bits,
            symmetric=self.spec.weight_symmetric,
            block=self.spec.block,
            data=self.qweight,
            scale=self.scale,
            zero=getattr(self, "zero", None),
        )

    def effective_weight(self) -> torch.Tensor:
        """The float weight (N, K) this layer applies to its input: the dequantized stored
        weight, times the input scale where the layer has one."""
        w = self.qweight_view().dequantize()
        input_scale = getattr(self, "input_scale", None)
        return w if input_scale is None else w * input_scale[None, :]

    @property
    def weight(self) -> torch.Tensor:
        """`effective_weight`, for model code that reads a layer's ``.weight`` (ViT casts its
        pixels to ``patch_embeddings.projection.weight.dtype``); not a parameter or buffer."""
        return self.effective_weight()

    def act_qparams(self) -> ActQParams | None:
        if not hasattr(self, "act_scale"):
            return None
        return ActQParams(float(self.act_scale[0]), int(self.act_zero[0]))

    @property
    def simulated(self) -> bool:
        return self.kernel_name == REFERENCE.name

    def _default_kernel(self) -> str:
        found = candidates(self.spec) if self._kernel_capable() else []
        return found[0].name if found else REFERENCE.name

    def _kernel_capable(self) -> bool:
        return True

    def select_kernel(self, rows: int) -> str:
        """Pick the fastest real kernel for inputs of ``rows`` rows (measured), and keep it."""
        if self._kernel_capable():
            best = choose(self.spec, self.qweight_view(), self.bias, self.act_qparams(), rows)
            if best is not None and best != self.kernel_name:
                self.kernel_name = best
                self._state = None
        return self.kernel_name

    def use_kernel(self, name: str) -> None:
        kernel = get_kernel(name)
        why = kernel.supports(self.spec)
        if why:
            raise ValueError(f"kernel {name} cannot run this layer: {why}")
        self.kernel_name = name
        self._state = None

    def _prepare(self) -> PreparedKernel:
        """Build the kernel's runtime state once (packing, bias in its dtype, shapes): every
        check and conversion that does not depend on the input happens here, not per call."""
        kernel = get_kernel(self.kernel_name)
        state = kernel.prepare(self.spec, self.qweight_view(), self.bias, self.act_qparams())
        prepared = PreparedKernel(kernel, state)
        self._state = prepared
        return prepared

    def _matmul(self, x2d: torch.Tensor) -> torch.Tensor:
        prepared = self._state
        if not isinstance(prepared, PreparedKernel):
            prepared = self._prepare()
        # each no-op ``.float()``/``.contiguous()`` is still a dispatcher call (~0.2 µs)
        if x2d.dtype is not torch.float32:
            x2d = x2d.float()
        if not x2d.is_contiguous():
            x2d = x2d.contiguous()
        return prepared.call(x2d)

    def _twin_config(self) -> QuantConfig:
        for config in timing_configs(self.config):
            n, k = self.weight_shape
            if config.granularity == "group" and k % (config.group_size or 1):
                continue
            if candidates(LinearSpec.from_config(config, n, k)):
                return config
        return QuantConfig.float("fp32")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_state"] = None  # runtime kernel state is rebuilt on first use, never copied
        return state

    def extra_repr(self) -> str:
        tag = " simulated" if self.simulated else ""
        return f"{self.weight_shape}, {self.config.name}, kernel={self.kernel_name}{tag}"


class QuantLinear(QuantModule):
    def __init__(
        self,
        qw: QuantizedWeight,
        bias: torch.Tensor | None,
        config: QuantConfig,
        act: ActQParams | None = None,
        kernel: str | None = None,
        input_scale: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = qw.shape[1], qw.shape[0]
        self._init_quant(qw, bias, config, act, kernel)
        if input_scale is not None:
            if tuple(input_scale.shape) != (self.in_features,):
                raise ValueError(
                    f"input_scale has shape {tuple(input_scale.shape)}, expected "
                    f"({self.in_features},)"
                )
            input_scale = input_scale.detach().float().clone()
        self.register_buffer("input_scale", input_scale)

    @classmethod
    def from_float(
        cls,
        linear: nn.Linear,
        config: QuantConfig,
        act: ActQParams | None = None,
        name: str = "weight",
        qparams: tuple[torch.Tensor, torch.Tensor] | None = None,
        input_scale: torch.Tensor | None = None,
    ) -> QuantLinear:
        """Round-to-nearest of ``linear`` (``qparams`` override calibration). With
        ``input_scale`` (K,), ``linear``'s weight is taken as the already rescaled ``W diag(s)``
        and the input is multiplied by ``input_scale`` (``1/s``) before the kernel."""
        qw = QuantizedWeight.from_float(linear.weight, config, name, qparams)
        return cls(qw, linear.bias, config, act, input_scale=input_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a decode step calls every linear layer once per token: ``_buffers`` is read directly
        # (``nn.Module.__getattr__`` costs ~0.6 µs a lookup), and 2-D inputs skip both reshapes
        input_scale = self._buffers["input_scale"]
        if input_scale is not None:
            x = x * input_scale
        if x.dim() == 2 and x.shape[1] == self.in_features:
            return self._matmul(x)
        return self._matmul(x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], -1)

    def timing_twin(self) -> nn.Module:
        """This layer at the next wider format with a real kernel (for simulated latency); an
        input scale stays on the twin (its multiply is part of the layer's time), except on a
        float twin, whose weight absorbs it."""
        config = self._twin_config()
        float_twin = config.is_float
        w = self.effective_weight() if float_twin else self.qweight_view().dequantize()
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(w)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        if float_twin:
            return lin
        act = self.act_qparams() if config.act_mode == "static" else None
        return QuantLinear.from_float(lin, config, act, input_scale=self.input_scale)


class QuantConv2d(QuantModule):
    def __init__(
        self,
        qw: QuantizedWeight,
        bias: torch.Tensor | None,
        config: QuantConfig,
        conv: dict[str, Any],
        act: ActQParams | None = None,
        kernel: str | None = None,
    ) -> None:
        super().__init__()
        self.conv = (
            conv  # in_channels, out_channels, kernel_size, stride, padding, dilation, groups
        )
        self._input_shape: tuple[int, ...] | None = None  # of the last call, for kernel choice
        self._init_quant(qw, bias, config, act, kernel)

    @classmethod
    def from_float(
        cls,
        conv: nn.Conv2d,
        config: QuantConfig,
        act: ActQParams | None = None,
        name: str = "weight",
        qparams: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> QuantConv2d:
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise ValueError(f"{name}: only numeric zero padding is supported")
        w2d = conv.weight.detach().reshape(conv.out_channels, -1)
        qw = QuantizedWeight.from_float(w2d, config, name, qparams)
        geometry = {
            "in_channels": conv.in_channels,
            "out_channels": conv.out_channels,
            "kernel_size": tuple(conv.kernel_size),
            "stride": tuple(conv.stride),
            "padding": tuple(conv.padding),
            "dilation": tuple(conv.dilation),
            "groups": conv.groups,
        }
        return cls(qw, conv.bias, config, geometry, act)

    @property
    def geometry(self) -> ConvGeometry:
        return ConvGeometry(**self.conv)

    @property
    def conv_spec(self) -> LinearSpec:
        """The function the kernels compute: `spec`, with per-tensor activations for grouped
        convolutions (their reference, `_grouped`, quantizes the whole input per tensor)."""
        if self.conv["groups"] == 1 or self.spec.act_bits is None:
            return self.spec
        return dataclasses.replace(self.spec, act_granularity="tensor")

    def _kernel_capable(self) -> bool:
        """Whether the linear kernels (behind im2col) apply: dense convolutions only; the
        layer's own candidates are `conv_candidates`."""
        return self.conv["groups"] == 1

    def _default_kernel(self) -> str:
        found = conv_candidates(self.conv_spec, self.geometry)
        return found[0].name if found else REFERENCE.name

    def select_kernel(self, rows: int) -> str:
        """Pick the fastest real kernel for inputs of the last call's shape (or ``rows`` output
        positions of one square image when the layer has not run yet), measured, and keep it."""
        shape = self._input_shape
        if shape is None:
            side = max(1, round(rows**0.5))
            shape = (1, self.conv["in_channels"], side, side)
        best = choose_conv(
            self.conv_spec,
            self.geometry,
            self.qweight_view(),
            self.bias,
            self.act_qparams(),
            tuple(shape),  # type: ignore[arg-type]
            channels_last=self.__dict__.get("_input_nhwc", False),
        )
        if best is not None and best != self.kernel_name:
            self.kernel_name = best
            self._state = None
        return self.kernel_name

    def use_kernel(self, name: str) -> None:
        kernel = get_conv_kernel(name)
        if kernel is not REFERENCE:
            why = kernel.supports(self.conv_spec, self.geometry)
            if why:
                raise ValueError(f"kernel {name} cannot run this layer: {why}")
        self.kernel_name = name
        self._state = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.__dict__["_input_shape"] = tuple(x.shape)  # nn.Module.__setattr__ costs µs a call
        # the layout too: kernels are timed on it (NHWC codes cost some kernels a transpose)
        self.__dict__["_input_nhwc"] = not x.is_contiguous()
        if self.simulated:
            return self._reference(x)
        prepared = self._state
        if not isinstance(prepared, PreparedKernel):
            kernel = get_conv_kernel(self.kernel_name)
            state = kernel.prepare(
                self.conv_spec, self.geometry, self.qweight_view(), self.bias, self.act_qparams()
            )
            prepared = PreparedKernel(kernel, state)
            self._state = prepared
        return prepared.call(x)

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        """The float reference: im2col plus the reference linear kernel (dense), or a float
        convolution of the dequantized weight (grouped)."""
        c = self.conv
        if c["groups"] != 1:
            return self._grouped(x)
        b, _, h, w = x.shape
        cols = F.unfold(x.float(), c["kernel_size"], c["dilation"], c["padding"], c["stride"])
        out = self._matmul(cols.transpose(1, 2).reshape(-1, cols.shape[1]))  # (B*L, O)
        ho, wo = conv_out_hw(h, w, c)
        return out.reshape(b, ho, wo, -1).permute(0, 3, 1, 2)

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        """Grouped/depthwise: float conv of the dequantized weight; activations per tensor."""
        c = self.conv
        x = x.float()
        if self.spec.act_bits is not None:
            flat = fake_quantize_activation(x.reshape(1, -1), self.conv_spec, self.act_qparams())
            x = flat.reshape(x.shape)
        return F.conv2d(
            x,
            self._dequantized_weight(),
            self.bias,
            c["stride"],
            c["padding"],
            c["dilation"],
            c["groups"],
        )

    def _dequantized_weight(self) -> torch.Tensor:
        if not isinstance(self._state, GroupedWeight):
            c = self.conv
            w = self.qweight_view().dequantize()
            self._state = GroupedWeight(w.reshape(c["out_channels"], -1, *c["kernel_size"]))
        return self._state.weight

    def timing_twin(self) -> nn.Module:
        c = self.conv
        conv = nn.Conv2d(
            c["in_channels"],
            c["out_channels"],
            c["kernel_size"],
            c["stride"],
            c["padding"],
            c["dilation"],
            c["groups"],
            bias=self.bias is not None,
        )
        with torch.no_grad():
            conv.weight.copy_(self.qweight_view().dequantize().reshape(conv.weight.shape))
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        config = self._twin_config()
        if config.is_float:
            return conv
        act = self.act_qparams() if config.act_mode == "static" else None
        return QuantConv2d.from_float(conv, config, act)

    def _twin_config(self) -> QuantConfig:
        """The nearest wider format (`timing_configs`) that has a real convolution kernel for
        this geometry, else fp32."""
        n, k = self.weight_shape
        for config in timing_configs(self.config):
            if config.granularity == "group" and k % (config.group_size or 1):
                continue
            spec = LinearSpec.from_config(config, n, k)
            if self.conv["groups"] != 1 and spec.act_bits is not None:
                spec = dataclasses.replace(spec, act_granularity="tensor")
            if conv_candidates(spec, self.geometry):
                return config
        return QuantConfig.float("fp32")


def conv_out_hw(h: int, w: int, c: Mapping[str, Any]) -> tuple[int, int]:
    """Output height and width of a convolution with ``c``'s ``kernel_size``, ``stride``,
    ``padding`` and ``dilation`` (pairs, as `QuantConv2d.conv` holds them) on an ``h × w``
    input: PyTorch's formula."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
        c["kernel_size"],
        c["stride"],
        c["padding"],
        c["dilation"],
    )
    return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1


class Bf16Linear(nn.Module):
    """The bf16 float baseline: bf16 weights, activations cast to bf16 (the cast is timed)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().bfloat16(), False)
        self.bias = (
            None if linear.bias is None else nn.Parameter(linear.bias.detach().bfloat16(), False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.bfloat16(), self.weight, self.bias).float()


class Bf16Conv2d(nn.Module):
    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
        )
        self.conv.load_state_dict(conv.state_dict())
        self.conv.bfloat16().requires_grad_(False)

    @property
    def weight(self) -> torch.Tensor:
        """The bf16 weight, for model code that reads ``.weight`` (ViT's input cast)."""
        return self.conv.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.bfloat16()).float()
