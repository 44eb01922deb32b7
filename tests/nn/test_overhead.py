"""The quantized linear layer's per-call path (issue 15, ask 5): the kernel state is prepared once,
and the lean path (no no-op conversions, no reshapes for 2-D inputs, bias added in place,
tinygemm's slice only where N was padded) computes exactly what the kernel computes on the
spelled-out ``x.reshape(-1, K).float().contiguous()``, for every kernel a layer can run."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from explorer.kernels.select import candidates
from explorer.nn.modules import PreparedKernel, QuantLinear
from explorer.quant.config import QuantConfig

CONFIGS = {
    "W8": QuantConfig(weight_bits=8),
    "W4g32": QuantConfig(weight_bits=4, granularity="group", group_size=32),
    "W8A8": QuantConfig(weight_bits=8, act_bits=8),
}
# N = 40 is not a multiple of 16: tinygemm pads its packed layout and slices back to N
SHAPES = [(40, 64, True), (32, 96, False)]


def _layer(config: QuantConfig, n: int, k: int, bias: bool, scaled: bool = False) -> QuantLinear:
    gen = torch.Generator().manual_seed(n * k)
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=gen))
        if bias:
            lin.bias.copy_(torch.randn(n, generator=gen))
    input_scale = torch.rand(k, generator=gen) + 0.5 if scaled else None
    return QuantLinear.from_float(lin, config, input_scale=input_scale)


def _inputs(k: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(k)
    wide = torch.randn(3, 2 * k, generator=gen)
    return {
        "1d": torch.randn(k, generator=gen),
        "2d": torch.randn(3, k, generator=gen),
        "3d decode": torch.randn(1, 1, k, generator=gen),
        "3d": torch.randn(2, 5, k, generator=gen),
        "2d strided": wide[:, ::2],
        "2d transposed": torch.randn(k, 4, generator=gen).t(),
        "bf16": torch.randn(2, 3, k, generator=gen).bfloat16(),
    }


def _spelled_out(q: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """The layer's function as the kernel contract states it: float32 contiguous [M, K] in."""
    prepared = q._state
    assert isinstance(prepared, PreparedKernel)
    if q.input_scale is not None:
        x = x * q.input_scale
    x2d = x.reshape(-1, q.in_features).float().contiguous()
    return prepared.kernel.run(prepared.state, x2d).reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("label", CONFIGS)
@pytest.mark.parametrize(("n", "k", "bias"), SHAPES)
def test_forward_is_bit_identical_to_the_kernel_on_spelled_out_input(
    label: str, n: int, k: int, bias: bool
) -> None:
    q = _layer(CONFIGS[label], n, k, bias, scaled=label == "W8")
    names = [kernel.name for kernel in candidates(q.spec)] + ["reference"]
    with torch.no_grad():
        for name in names:
            q.use_kernel(name)
            for what, x in _inputs(k).items():
                got = q(x)
                want = _spelled_out(q, x)
                assert got.dtype == torch.float32, (name, what)
                assert got.shape == (*x.shape[:-1], n), (name, what)
                assert torch.equal(got, want), (name, what)


def test_torch_weight_only_kernels_match_their_ops_exactly() -> None:
    """The int8pack and tinygemm paths are the plain op chain: bf16 in, fp32 out, + bias."""
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(3))
    for label, name in (("W8", "int8-wo-int8pack-bf16"), ("W4g32", "int4-wo-tinygemm-bf16")):
        q = _layer(CONFIGS[label], 40, 64, bias=True)
        if name not in [kernel.name for kernel in candidates(q.spec)]:
            continue  # this torch build lacks the op
        q.use_kernel(name)
        with torch.no_grad():
            got = q(x)
            state = q._state.state
            if name.startswith("int8"):
                wq, scale, b = state
                y = torch._weight_int8pack_mm(x.bfloat16(), wq, scale)
            else:
                mm, packed, group, sz, n, b = state
                assert n == 40  # padded to 48 in the packed layout, sliced back here
                y = mm(x.bfloat16(), packed, group, sz)[:, :40]
            assert torch.equal(got, y.float() + b)


def test_kernel_state_is_prepared_once_and_rebuilt_on_kernel_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    q = _layer(CONFIGS["W8"], 40, 64, bias=True)
    calls = []
    original = QuantLinear._prepare

    def counting(self: QuantLinear) -> PreparedKernel:
        calls.append(self.kernel_name)
        return original(self)

    monkeypatch.setattr(QuantLinear, "_prepare", counting)
    x = torch.randn(1, 1, 64)
    with torch.no_grad():
        first = q(x)
        for _ in range(3):
            assert torch.equal(q(x), first)
        assert calls == [q.kernel_name]
        q.use_kernel("reference")
        q(x)
        assert calls == [calls[0], "reference"]
        twin = copy.deepcopy(q)  # the bound state is dropped on copy and rebuilt
        assert twin._state is None
        assert torch.equal(twin(x), q(x))
