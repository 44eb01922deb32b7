"""SmoothQuant: the smoothing factors' formula and its balance at alpha 0.5, channels never seen
in calibration left alone, and W8A8 with per-tensor activations rescued on outlier channels (on
the real int8 kernels)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from explorer.kernels.base import ActQParams
from explorer.measure.metrics import sqnr_db
from explorer.nn.modules import QuantLinear
from explorer.quant.config import QuantConfig
from explorer.quant.observers import InputStatistics
from explorer.quant.smoothquant import smoothing_scales, smoothquant_quantize

K, N = 256, 128
OUTLIERS = torch.randperm(K, generator=torch.Generator().manual_seed(0))[:6]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The machine is shared: a second intra-op thread only waits for a busy core, and these
    tensors are small."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def outlier_inputs(rows: int = 1024, seed: int = 0) -> torch.Tensor:
    """LLM.int8()'s picture: the same 6 hidden channels about 20 times larger, in every token."""
    x = torch.randn(rows, K, generator=torch.Generator().manual_seed(seed))
    x[:, OUTLIERS] *= 20.0
    return x


def weight(seed: int = 1) -> torch.Tensor:
    return torch.randn(N, K, generator=torch.Generator().manual_seed(seed)) * 0.05


def stats_of(x: torch.Tensor) -> InputStatistics:
    stats = InputStatistics.empty(x.shape[1], gram=False)
    stats.update(x)
    return stats


def test_formula_and_the_balance_at_alpha_half() -> None:
    x, w = outlier_inputs(), weight()
    act_max = x.abs().amax(dim=0)
    w_max = w.abs().amax(dim=0)
    for alpha in (0.0, 0.3, 0.5, 0.85, 1.0):
        s = smoothing_scales(act_max, w, alpha)
        assert torch.allclose(s, act_max**alpha / w_max ** (1 - alpha), rtol=1e-5)
    s = smoothing_scales(act_max, w, 0.5)
    # at 0.5 every channel's activation range and weight range end up equal
    assert torch.allclose(act_max / s, w_max * s, rtol=1e-5)


def test_channels_never_seen_keep_scale_one() -> None:
    act_max = torch.rand(K) + 0.5
    act_max[:4] = 0.0
    s = smoothing_scales(act_max, weight(), 0.5)
    assert torch.equal(s[:4], torch.ones(4))


@pytest.mark.parametrize("act_mode", ["dynamic", "static"])
def test_per_tensor_int8_activations_hold_after_smoothing(act_mode: str) -> None:
    x, w = outlier_inputs(), weight()
    linear = nn.Linear(K, N)
    with torch.no_grad():
        linear.weight.copy_(w)
    rtn = QuantConfig(act_bits=8, act_granularity="tensor", act_mode=act_mode)
    smooth = rtn.with_(algorithm="smoothquant")
    qw, input_scale, _ = smoothquant_quantize(w, stats_of(x), smooth)
    act = rtn_act = None
    if act_mode == "static":  # the range of what each kernel quantizes, as calibration finds it
        act = ActQParams(float((x * input_scale).abs().max()) / 127, 0)
        rtn_act = ActQParams(float(x.abs().max()) / 127, 0)
    q_smooth = QuantLinear(qw, linear.bias, smooth, act, input_scale=input_scale)
    q_rtn = QuantLinear.from_float(linear, rtn, rtn_act)
    assert q_smooth.kernel_name == q_rtn.kernel_name != "reference"
    x_test = outlier_inputs(rows=256, seed=2)
    with torch.no_grad():
        ref = linear(x_test)
        gain = sqnr_db(ref, q_smooth(x_test)) - sqnr_db(ref, q_rtn(x_test))
    assert gain >= 6.0, gain
