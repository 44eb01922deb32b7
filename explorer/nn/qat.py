"""Quantization-aware training: ``prepare_qat`` → the caller trains → ``convert``.

`prepare_qat` folds batch norms and swaps each planned layer for a fake-quant twin that keeps
float weights but computes with ``fake_quantize`` (straight-through rounding), so training learns
weights that survive rounding. With ``learn_scales`` the weight scales are parameters trained as in
LSQ (Esser et al., arXiv 1902.08153, gradient scaled by ``1/sqrt(numel * qmax)``); otherwise they
are recomputed from the current weights by the config's calibration each step. Static activation
ranges are tracked with an exponential moving average. `convert` hands the trained weights (and
learned scales, and activation ranges) to `quantize_layer`, the same code PTQ runs, so a QAT model
runs on exactly the kernels a PTQ model would.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from explorer.kernels.base import ActQParams
from explorer.nn.convert import (
    QuantReport,
    as_linear,
    calibrate_activations,
    quantize_layer,
    resolve_plan,
    set_submodule,
)
from explorer.nn.fold import fold_batch_norm
from explorer.nn.modules import conv_out_hw
from explorer.quant.config import Plan, QuantConfig
from explorer.quant.observers import weight_range
from explorer.quant.primitives import (
    block_minmax,
    block_size,
    choose_qparams,
    fake_quantize,
    qrange,
    scale_dtype_for,
)

EMA_DECAY = 0.99


class FakeQuantLayer(nn.Module):
    """A float layer computing with fake-quantized weights (and activations)."""

    def __init__(self, layer: nn.Module, config: QuantConfig, act: ActQParams | None) -> None:
        super().__init__()
        assert config.weight_bits is not None
        self.layer = layer
        self.config = config
        w2d = self._w2d()
        self.block = block_size(config, tuple(w2d.shape))
        lo, hi = weight_range(w2d.detach(), config, self.block)
        scale, zero = choose_qparams(
            lo, hi, config.weight_bits, config.symmetric, scale_dtype_for(config)
        )
        self.register_buffer("w_zero", zero)
        if config.learn_scales:
            self.w_scale = nn.Parameter(scale.clone())
        else:
            self.register_buffer("w_scale", scale)
        self.act_range: tuple[float, float] | None = None
        if act is not None:
            qmin, _ = qrange(config.act_bits, config.act_symmetric)
            lo_a = (qmin - act.zero) * act.scale
            self.act_range = (lo_a, lo_a + act.scale * (2**config.act_bits - 1))

    def _w2d(self) -> torch.Tensor:
        w = self.layer.weight
        return w.reshape(w.shape[0], -1)

    def weight_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        if c.learn_scales:
            return self.w_scale, self.w_zero
        lo, hi = weight_range(self._w2d().detach(), c, self.block)
        return choose_qparams(lo, hi, c.weight_bits, c.symmetric, scale_dtype_for(c))

    def fake_weight(self) -> torch.Tensor:
        c = self.config
        scale, zero = self.weight_qparams()
        if c.learn_scales:
            qmax = qrange(c.weight_bits, c.symmetric)[1]
            grad_scale = 1.0 / math.sqrt(self.block[0] * self.block[1] * qmax)
            scale = scale * grad_scale + (scale - scale * grad_scale).detach()
        w2d = fake_quantize(self._w2d(), scale, zero, self.block, c.weight_bits, c.symmetric)
        return w2d.reshape(self.layer.weight.shape)

    def fake_act(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.act_bits is None:
            return x
        flat = x.reshape(-1, x.shape[-1]) if isinstance(self.layer, nn.Linear) else x.reshape(1, -1)
        return self._fake_rows(flat).reshape(x.shape)

    def _fake_rows(self, flat: torch.Tensor) -> torch.Tensor:
        """Fake-quantized activations ``flat`` (rows = tokens), as the real kernel sees them."""
        c = self.config
        if c.act_mode == "static":
            if self.training:
                lo, hi = float(flat.detach().min()), float(flat.detach().max())
                if self.act_range is None:
                    self.act_range = (lo, hi)
                else:
                    d = EMA_DECAY
                    self.act_range = (
                        d * self.act_range[0] + (1 - d) * lo,
                        d * self.act_range[1] + (1 - d) * hi,
                    )
            lo_t = torch.tensor([[self.act_range[0]]])
            hi_t = torch.tensor([[self.act_range[1]]])
            block = tuple(flat.shape)
        else:
            block = (1, flat.shape[1]) if c.act_granularity == "token" else tuple(flat.shape)
            lo_t, hi_t = block_minmax(flat.detach(), block)
        scale, zero = choose_qparams(lo_t, hi_t, c.act_bits, c.act_symmetric)
        return fake_quantize(flat, scale, zero, block, c.act_bits, c.act_symmetric)

    def _per_patch(self) -> bool:
        """A dense convolution with dynamic per-token activations: `QuantConv2d` runs it as
        im2col rows (one per output position) through a per-token kernel, so the tokens whose
        scales QAT must imitate are those patches, not the whole input."""
        c, layer = self.config, self.layer
        return (
            isinstance(layer, nn.Conv2d)
            and layer.groups == 1
            and c.act_bits is not None
            and c.act_mode == "dynamic"
            and c.act_granularity == "token"
            and not isinstance(layer.padding, str)
        )

    def _conv_per_patch(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        b, _, h, wd = x.shape
        cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        rows = self._fake_rows(cols.transpose(1, 2).reshape(-1, cols.shape[1]))  # (B*L, C*kh*kw)
        out = F.linear(rows, w.reshape(w.shape[0], -1), layer.bias)  # (B*L, O)
        geometry = {k: getattr(layer, k) for k in ("kernel_size", "stride", "padding", "dilation")}
        ho, wo = conv_out_hw(h, wd, geometry)
        return out.reshape(b, ho, wo, -1).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fake_weight()
        layer = self.layer
        if self._per_patch():
            return self._conv_per_patch(x, w)
        x = self.fake_act(x)
        if isinstance(layer, nn.Conv2d):
            return F.conv2d(
                x, w, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups
            )
        return F.linear(x, w, layer.bias)

    def act_qparams(self) -> ActQParams | None:
        c = self.config
        if c.act_bits is None or c.act_mode != "static" or self.act_range is None:
            return None
        scale, zero = choose_qparams(
            torch.tensor([self.act_range[0]]),
            torch.tensor([self.act_range[1]]),
            c.act_bits,
            c.act_symmetric,
        )
        return ActQParams(float(scale[0]), int(zero[0]))


def prepare_qat(
    model: nn.Module,
    plan: Plan,
    calibration_data: torch.Tensor | Iterable[torch.Tensor] | None = None,
) -> nn.Module:
    """A trainable copy of ``model`` with fake-quant layers where ``plan`` quantizes."""
    qat = copy.deepcopy(model)
    qat.eval()
    qat, folded = fold_batch_norm(qat)
    assignments = resolve_plan(qat, plan)
    t0 = time.perf_counter()
    acts = calibrate_activations(qat, assignments, calibration_data)
    seconds = {"activations": time.perf_counter() - t0}
    seconds["calibrate"] = seconds["activations"]
    for name, a in assignments.items():
        if a.config is None or a.config.is_float:
            continue
        layer = as_linear(qat.get_submodule(name))
        set_submodule(qat, name, FakeQuantLayer(layer, a.config, acts.get(name)))
    qat.quant_report = QuantReport(assignments, folded, seconds)
    return qat.train()


def convert(qat_model: nn.Module) -> nn.Module:
    """The deployable quantized model: trained weights through PTQ's own `quantize_layer`."""
    model = copy.deepcopy(qat_model).eval()
    report: QuantReport = getattr(model, "quant_report", QuantReport())
    fq = {n: m for n, m in model.named_modules() if isinstance(m, FakeQuantLayer)}
    for name, module in fq.items():
        qparams = None
        if module.config.learn_scales:
            qparams = (module.w_scale.detach(), module.w_zero)
        new = quantize_layer(module.layer, module.config, name, module.act_qparams(), qparams)
        set_submodule(model, name, new)
    for name, a in report.layers.items():  # bf16 baselines in a mixed plan
        if a.config is not None and a.config.is_float and name not in fq:
            set_submodule(model, name, quantize_layer(model.get_submodule(name), a.config, name))
    return model


DEFAULT_QAT_LR = 1e-3
DEFAULT_QAT_BATCH = 64
QAT_WARMUP = 0.1
QAT_CLIP = 1.0
QAT_SCHEDULE = f"adam, linear warm-up {QAT_WARMUP:.0%}, cosine to 0, grad-norm clip {QAT_CLIP}"


def qat_lr_at(step: int, steps: int, lr: float, warmup: float = QAT_WARMUP) -> float:
    """The learning rate of 0-based ``step``: a linear warm-up over the first ``warmup`` share
    of ``steps`` (at least one step), then a cosine decay that reaches 0 after the last step.

    Fine-tuning a trained model at a constant rate jolts it. On the byte-level GPT that was
    tiny-lm until session 7, first 32 held-out rows, W4 g128 (RTN 5.235): 20 constant steps at
    1e-3 gave 6.475; warm-up, decay and clipping at the same peak 5.716; 100 scheduled steps at
    1e-3 5.221, at 1e-4 5.057."""
    ramp = max(1, round(warmup * steps))
    if step < ramp:
        return lr * (step + 1) / ramp
    decay = steps - ramp
    return 0.5 * lr * (1 + math.cos(math.pi * (step - ramp + 1) / (decay + 1)))


def train_qat(
    model: nn.Module,
    plan: Plan,
    batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    lr: float = DEFAULT_QAT_LR,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    calibration_data: torch.Tensor | Iterable[torch.Tensor] | None = None,
    clip: float | None = QAT_CLIP,
    progress: Callable[[int, int], None] | None = None,
) -> nn.Module:
    """prepare → ``steps`` of Adam on ``batches(step) -> (inputs, targets)`` → convert.

    The rate follows `qat_lr_at` (peak ``lr``) and the gradient norm is clipped to ``clip``
    (None: no clipping), as `QAT_SCHEDULE` says; rows record that text in their key.
    ``progress(done, steps)`` is called after each step (a Whisper step takes seconds)."""
    qat = prepare_qat(model, plan, calibration_data)
    params = [p for p in qat.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = qat_lr_at(step, steps, lr)
        x, y = batches(step)
        opt.zero_grad()
        loss_fn(qat(x), y).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        if progress is not None:
            progress(step + 1, steps)
    return convert(qat)
