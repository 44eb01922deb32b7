"""The W4A8 kernel (`int4-w4a8-native`): int8 activations x packed int4 weights.

Its integer part is exact, so with power-of-two scales the whole output is an integer the
int64 reference must equal bit for bit (SIMD and scalar paths, every zero-point combination,
group sizes from 32 to the whole row, K up to 4096 at the extreme codes); with real scales it
stays within 1e-5 relative error of the float64 reference kernel; bad inputs are named."""

from __future__ import annotations

import pytest
import torch

from explorer.kernels import native
from explorer.kernels.base import ActQParams, LinearSpec
from explorer.kernels.reference import ReferenceKernel
from explorer.kernels.select import KERNELS, candidates
from explorer.nn.convert import quant_modules, quantize_model
from explorer.quant.config import Plan, QuantConfig
from explorer.quant.qtensor import QuantizedWeight

pytestmark = pytest.mark.skipif(not native.available(), reason="native kernels unavailable")
REF64 = ReferenceKernel(torch.float64)
KERNEL = KERNELS["int4-w4a8-native"]


def pack(codes: torch.Tensor) -> torch.Tensor:
    """int [N, K] in [0, 15] -> uint8 [N, K/2], element 2j in the low nibble of byte j."""
    c = codes.to(torch.int64)
    return (c[:, 0::2] | (c[:, 1::2] << 4)).to(torch.uint8)


def operands(codes: torch.Tensor, zero: torch.Tensor, group: int) -> dict[str, torch.Tensor]:
    """Unit weight scales: the kernel's weight-side arguments for codes [N, K], zeros [N, K/G]."""
    n, k = codes.shape
    scale = torch.ones(n, k // group)
    sums = codes.reshape(n, k // group, group).sum(-1).float()
    return {
        "codes": pack(codes),
        "w_scale": scale,
        "w_zero_scaled": zero.float(),
        "zero_term": (sums - group * zero.float()).sum(1),
    }


def exact(xq: torch.Tensor, zx: torch.Tensor, codes: torch.Tensor, zero: torch.Tensor, group: int):
    """sum_k (code - z) (xq - zx) in int64."""
    w = codes.long() - zero.long().repeat_interleave(group, dim=1)
    return (xq.long() - zx.long()[:, None]) @ w.T


@pytest.mark.parametrize(
    ("m", "n", "k", "group"),
    [
        (1, 5, 32, 32),  # one 32-element chunk, no 64-block
        (1, 17, 256, 64),
        (2, 9, 128, 128),
        (3, 16, 96, 32),  # a 64-block, then a 32-element tail
        (1, 4, 160, 32),
        (2, 7, 192, 96),  # groups that end in the middle of a 64-block
        (5, 33, 512, 128),
        (1, 6, 2048, 2048),  # per channel: more 64-blocks than int16 may sum
    ],
)
@pytest.mark.parametrize("weight_zero", [False, True])
@pytest.mark.parametrize("act_zero", [False, True])
def test_integer_part_is_exact(
    isa: str, m: int, n: int, k: int, group: int, weight_zero: bool, act_zero: bool
) -> None:
    gen = torch.Generator().manual_seed(m * 1000 + n + k)
    codes = torch.randint(0, 16, (n, k), generator=gen)
    zero = (
        torch.randint(0, 16, (n, k // group), generator=gen)
        if weight_zero
        else torch.full((n, k // group), 8)
    )
    xq = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
    zx = torch.randint(-128, 128, (m,), generator=gen) if act_zero else torch.zeros(m)
    y = native.w4a8_linear(
        xq,
        torch.ones(m),
        zx.to(torch.int32) if act_zero else None,
        group_size=group,
        **operands(codes, zero, group),
    )
    assert torch.equal(y.double(), exact(xq, zx, codes, zero, group).double())


@pytest.mark.parametrize(("code", "x"), [(15, -128), (0, -128), (15, 127)])
def test_extreme_codes_over_a_4096_row_are_exact(isa: str, code: int, x: int) -> None:
    """Per-channel grouping (G = K = 4096): the longest integer run, at the extreme operands."""
    n, k = 8, 4096
    codes = torch.full((n, k), code)
    zero = torch.full((n, 1), 8)
    xq = torch.full((2, k), x, dtype=torch.int8)
    y = native.w4a8_linear(xq, torch.ones(2), None, group_size=k, **operands(codes, zero, k))
    assert torch.equal(y.double(), exact(xq, torch.zeros(2), codes, zero, k).double())
    assert float(y[0, 0]) == (code - 8) * x * k


def test_threads_do_not_change_the_output() -> None:
    gen = torch.Generator().manual_seed(3)
    n, k, group = 70, 512, 32
    codes = torch.randint(0, 16, (n, k), generator=gen)
    args = operands(codes, torch.full((n, k // group), 8), group)
    args["w_scale"] = torch.rand(n, k // group, generator=gen) + 0.5
    args["w_zero_scaled"] = args["w_scale"] * 8
    xq = torch.randint(-128, 128, (4, k), generator=gen, dtype=torch.int8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native.w4a8_linear(xq, torch.full((4,), 0.1), None, group_size=group, **args)
        torch.set_num_threads(2)
        two = native.w4a8_linear(xq, torch.full((4,), 0.1), None, group_size=group, **args)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


CONFIGS = {
    "g32 token": QuantConfig(weight_bits=4, granularity="group", group_size=32, act_bits=8),
    "g128 asym, tensor asym": QuantConfig(
        weight_bits=4,
        granularity="group",
        group_size=128,
        symmetric=False,
        act_bits=8,
        act_granularity="tensor",
        act_symmetric=False,
    ),
    "channel, static": QuantConfig(
        weight_bits=4, act_bits=8, act_granularity="tensor", act_mode="static"
    ),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("m", [1, 2, 7])
def test_matches_the_float64_reference_on_real_scales(isa: str, name: str, m: int) -> None:
    """Relative error <= 1e-5 against the reference kernel computing the same function."""
    config = CONFIGS[name]
    gen = torch.Generator().manual_seed(m)
    n, k = 40, 256
    w, bias = torch.randn(n, k, generator=gen), torch.randn(n, generator=gen)
    x = torch.randn(m, k, generator=gen) * 2 + 0.3
    qw = QuantizedWeight.from_float(w, config)
    spec = LinearSpec.from_config(config, n, k)
    act = ActQParams(scale=0.05, zero=0) if spec.act_static else None
    assert KERNEL.name in [c.name for c in candidates(spec)]
    ref = REF64.run(REF64.prepare(spec, qw, bias, act), x)
    y = KERNEL.run(KERNEL.prepare(spec, qw, bias, act), x)
    err = float((y.double() - ref).norm() / ref.norm())
    assert err <= 1e-5, err


def test_a_w4a8_model_runs_measured_not_simulated() -> None:
    """W4A8 used to be simulated (timed on W8A8); now its layers run the real kernel."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 32))
    config = CONFIGS["g32 token"]
    qmodel = quantize_model(model, Plan.uniform(config))
    layers = quant_modules(qmodel)
    assert {m.kernel_name for m in layers.values()} == {KERNEL.name}
    assert not any(m.simulated for m in layers.values())
    x = torch.randn(8, 64)
    with torch.inference_mode():
        y = qmodel(x)
        for module in layers.values():
            module.use_kernel("reference")
        ref = qmodel(x)
    assert float((y - ref).norm() / ref.norm()) <= 1e-5


def _good() -> dict:
    n, k, group = 4, 64, 32
    codes = torch.randint(0, 16, (n, k))
    return {
        "xq": torch.zeros(2, k, dtype=torch.int8),
        "x_scale": torch.ones(2),
        "x_zero": None,
        "group_size": group,
        **operands(codes, torch.full((n, k // group), 8), group),
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"xq": torch.zeros(2, 48, dtype=torch.int8)}, "K=48 and group_size=32 must be multiples"),
        ({"group_size": 48}, "group_size=48 must be multiples of 32"),
        ({"xq": torch.zeros(2, 64)}, "xq must have dtype torch.int8"),
        ({"codes": torch.zeros(4, 64, dtype=torch.uint8)}, r"codes must have shape \[4, 32\]"),
        ({"w_scale": torch.ones(4, 1)}, r"w_scale must have shape \[4, 2\]"),
        ({"x_zero": torch.zeros(2, dtype=torch.int32), "zero_term": None}, "zero_term is required"),
    ],
)
def test_bad_inputs_are_named(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        native.w4a8_linear(**{**_good(), **change})


@pytest.mark.parametrize("gran", ["token", "tensor"])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("inputs", ["gaussian", "positive", "zeros", "ties"])
@pytest.mark.parametrize("shape", [(1, 20, 4096, 128), (3, 9, 96, 32), (17, 5, 256, 64)])
def test_dynamic_activations_in_c_equal_quantizing_in_torch(
    isa: str, gran: str, sym: bool, inputs: str, shape: tuple[int, int, int, int]
) -> None:
    """The C path quantizes x to the very codes the torch primitives give: outputs are equal."""
    from explorer.kernels.activation import quantize_activation, to_int8_domain
    from explorer.quant.primitives import SCALE_EPS

    m, n, k, group = shape
    gen = torch.Generator().manual_seed(m * 1000 + k)
    x = {
        "gaussian": lambda: torch.randn(m, k, generator=gen) * 3,
        "positive": lambda: torch.rand(m, k, generator=gen) + 0.5,
        "zeros": lambda: torch.zeros(m, k),
        "ties": lambda: torch.randint(-254, 255, (m, k), generator=gen).float() / 2,
    }[inputs]()
    if inputs == "ties":
        x[:, 0] = 127.0  # symmetric scale exactly 1.0: x / scale lands on .5 ties
    codes = torch.randint(0, 16, (n, k), generator=gen)
    zero = torch.randint(0, 16, (n, k // group), generator=gen)
    args = operands(codes, zero, group)
    args["w_scale"] = torch.rand(n, k // group, generator=gen) + 0.1
    args["w_zero_scaled"] = args["w_scale"] * zero
    args["zero_term"] = (
        args["w_scale"] * (codes.reshape(n, k // group, group).sum(-1) - group * zero)
    ).sum(1)
    bias = torch.randn(n, generator=gen)
    config = QuantConfig(weight_bits=4, act_bits=8, act_granularity=gran, act_symmetric=sym)
    spec = LinearSpec.from_config(config, n, k)
    q, xs, xz = quantize_activation(x, spec, None)
    xq, xz = to_int8_domain(q, xz, sym)
    zx = None if sym else xz.reshape(-1).to(torch.int32).contiguous()
    ref = native.w4a8_linear(
        xq.contiguous(), xs.reshape(-1).contiguous(), zx, group_size=group, bias=bias, **args
    )
    y = native.w4a8_dynamic_linear(
        x,
        group_size=group,
        bias=bias,
        per_token=gran == "token",
        symmetric=sym,
        eps=SCALE_EPS,
        **args,
    )
    assert torch.equal(y, ref)


def test_dynamic_rejects_bad_input() -> None:
    good = _good()
    weights = {k: good[k] for k in ("codes", "w_scale", "w_zero_scaled", "zero_term")}
    with pytest.raises(ValueError, match="zero_term is required for asymmetric"):
        native.w4a8_dynamic_linear(
            torch.randn(2, 64),
            **{**weights, "zero_term": None},
            group_size=32,
            symmetric=False,
            eps=1e-8,
        )
    with pytest.raises(ValueError, match="x must have dtype torch.float32"):
        native.w4a8_dynamic_linear(
            torch.zeros(2, 64, dtype=torch.int8), **weights, group_size=32, eps=1e-8
        )
    with pytest.raises(ValueError, match="K=40 and group_size=32"):
        native.w4a8_dynamic_linear(torch.randn(2, 40), **weights, group_size=32, eps=1e-8)
