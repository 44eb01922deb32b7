"""GPTQ: exactly round-to-nearest when nothing couples the columns, the blocked Cholesky form
against an unblocked Optimal-Brain-Quantization oracle, output error below round-to-nearest's,
dead inputs, act-order, and the stored format."""

from __future__ import annotations

import pytest
import torch

from explorer.errors import QuantizationError
from explorer.quant.config import QuantConfig
from explorer.quant.gptq import gptq_codes, gptq_quantize
from explorer.quant.observers import InputStatistics
from explorer.quant.primitives import qrange
from explorer.quant.qtensor import QuantizedWeight, round_to_nearest

N, K = 64, 256


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The machine is shared: a second intra-op thread only waits for a busy core, and these
    tensors are small."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def correlated_inputs(rows: int = 2048, k: int = K, seed: int = 0) -> torch.Tensor:
    """Inputs with correlated channels of unequal energy, as a transformer's hidden states."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=gen) / k**0.5
    energy = torch.logspace(0, 1, k)[torch.randperm(k, generator=gen)]
    return (torch.randn(rows, k, generator=gen) @ mix) * energy  # (rows, K)


def stats_of(x: torch.Tensor) -> InputStatistics:
    stats = InputStatistics.empty(x.shape[1])
    stats.update(x)
    return stats


def weight(seed: int = 1, n: int = N, k: int = K) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.05


def output_error(x: torch.Tensor, w: torch.Tensor, w_q: torch.Tensor) -> float:
    return float(((x.double() @ (w - w_q).double().T) ** 2).sum())


CONFIGS = [
    QuantConfig(weight_bits=4),
    QuantConfig(weight_bits=4, granularity="group", group_size=32),
    QuantConfig(weight_bits=3, granularity="group", group_size=64, symmetric=False),
    QuantConfig(weight_bits=8, granularity="tensor"),
    QuantConfig(weight_bits=4, granularity="group", group_size=32, calibration="mse"),
    QuantConfig(weight_bits=2, granularity="group", group_size=32, calibration="percentile"),
]


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_uncoupled_columns_give_round_to_nearest_exactly(config: QuantConfig, act_order) -> None:
    """With a diagonal Hessian no column's error moves another column, so GPTQ is exactly
    round-to-nearest: same codes, scales and zero points, bit for bit."""
    config = config.with_(algorithm="gptq", act_order=act_order, gptq_block=48)
    w = weight()
    gram = torch.diag(torch.linspace(1.0, 3.0, K)[torch.randperm(K)]).double()
    stats = InputStatistics(K, gram, torch.ones(K, dtype=torch.float64), torch.ones(K), rows=1)
    qw, input_scale, _ = gptq_quantize(w, stats, config)
    rtn = QuantizedWeight.from_float(w, config)
    assert input_scale is None
    assert torch.equal(qw.data, rtn.data)
    assert torch.equal(qw.scale, rtn.scale) and qw.scale.dtype == rtn.scale.dtype
    assert (qw.zero is None) == (rtn.zero is None)
    if rtn.zero is not None:
        assert torch.equal(qw.zero, rtn.zero)


def obq_oracle(w: torch.Tensor, gram: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """Per-channel symmetric GPTQ written the long way (float64, one column at a time, the
    inverse Hessian of the remaining columns updated by Gaussian elimination, no Cholesky, no
    blocks): codes (N, K)."""
    assert config.granularity == "channel" and config.symmetric and config.weight_bits
    qmin, qmax = qrange(config.weight_bits, True)
    w = w.double().clone()
    h = gram.double().clone()
    h += config.gptq_damp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=torch.float64)
    h_inv = torch.linalg.inv(h)
    scale = (w.abs().amax(dim=1) / qmax).float().double()  # as choose_qparams, fp32 scales
    codes = torch.empty(w.shape, dtype=torch.int32)
    for j in range(w.shape[1]):
        q = torch.round((w[:, j].float() / scale.float()).double()).clamp(qmin, qmax)
        codes[:, j] = q.int()
        err = (w[:, j] - q * scale) / h_inv[j, j]
        w[:, j:] -= err[:, None] * h_inv[j, j:][None, :]
        h_inv = h_inv - h_inv[:, j : j + 1] @ h_inv[j : j + 1, :] / h_inv[j, j]
    return codes


def test_blocked_cholesky_form_matches_the_unblocked_oracle() -> None:
    config = QuantConfig(weight_bits=4, algorithm="gptq", gptq_block=32)
    x = correlated_inputs()
    w = weight()
    stats = stats_of(x)
    codes, _, _ = gptq_codes(w, stats.gram, config)
    oracle = obq_oracle(w, stats.gram, config)
    agree = (codes == oracle).float().mean()
    assert agree >= 0.999, agree  # float32 against float64: a near-tie may round either way
    qw, _, _ = gptq_quantize(w, stats, config)
    scale = qw.scale.float()[:, :1]
    err = output_error(x, w, qw.dequantize())
    err_oracle = output_error(x, w, oracle.float() * scale)
    assert err == pytest.approx(err_oracle, rel=1e-3)


@pytest.mark.parametrize("block", [1, 7, 128, 1000])
def test_block_size_is_only_a_speed_up(block: int) -> None:
    config = QuantConfig(weight_bits=3, granularity="group", group_size=32, algorithm="gptq")
    x = correlated_inputs()
    w = weight()
    stats = stats_of(x)
    ref, ref_scale, _ = gptq_codes(w, stats.gram, config.with_(gptq_block=K))
    codes, scale, _ = gptq_codes(w, stats.gram, config.with_(gptq_block=block))
    assert (codes == ref).float().mean() >= 0.995
    assert (scale == ref_scale).float().mean() >= 0.99


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("config", CONFIGS[:4], ids=lambda c: c.name)
def test_output_error_is_below_round_to_nearest(config: QuantConfig, act_order: bool) -> None:
    x = correlated_inputs()
    w = weight()
    config = config.with_(algorithm="gptq", act_order=act_order)
    qw, _, _ = gptq_quantize(w, stats_of(x), config)
    gptq_err = output_error(x, w, qw.dequantize())
    rtn_err = output_error(x, w, round_to_nearest(w, config))
    assert gptq_err <= 0.7 * rtn_err, (gptq_err, rtn_err)


def test_act_order_helps_when_input_energy_is_uneven() -> None:
    x = correlated_inputs()
    w = weight()
    config = QuantConfig(weight_bits=4, granularity="group", group_size=32, algorithm="gptq")
    errors = {}
    for act_order in (False, True):
        qw, _, _ = gptq_quantize(w, stats_of(x), config.with_(act_order=act_order))
        errors[act_order] = output_error(x, w, qw.dequantize())
    assert errors[True] < 0.8 * errors[False], errors


def test_dead_inputs_get_zero_weights_and_no_nan() -> None:
    x = correlated_inputs()
    x[:, :8] = 0.0  # channels that never fire in calibration
    w = weight()
    config = QuantConfig(weight_bits=4, granularity="group", group_size=32, algorithm="gptq")
    qw, _, _ = gptq_quantize(w, stats_of(x), config)
    deq = qw.dequantize()
    assert torch.isfinite(deq).all()
    assert torch.equal(deq[:, :8], torch.zeros(N, 8))


def test_act_order_keeps_contiguous_groups_in_the_stored_format() -> None:
    x = correlated_inputs()
    w = weight()
    config = QuantConfig(
        weight_bits=4, granularity="group", group_size=64, algorithm="gptq", act_order=True
    )
    qw, _, _ = gptq_quantize(w, stats_of(x), config)
    rtn = QuantizedWeight.from_float(w, config)
    assert qw.block == rtn.block == (1, 64)
    assert qw.scale.shape == rtn.scale.shape and qw.scale.dtype == torch.bfloat16
    assert qw.data.dtype == rtn.data.dtype and qw.data.shape == rtn.data.shape
    # static groups: the scales are round-to-nearest's, chosen from the float weight
    assert torch.equal(qw.scale, rtn.scale)


def test_asymmetric_codes_stay_in_range() -> None:
    x = correlated_inputs()
    w = weight() + 0.03
    config = QuantConfig(weight_bits=3, symmetric=False, algorithm="gptq")
    codes, _, zero = gptq_codes(w, stats_of(x).gram, config)
    assert int(codes.min()) >= 0 and int(codes.max()) <= 7
    assert int(zero.min()) >= 0 and int(zero.max()) <= 7


def test_statistics_match_the_direct_computation() -> None:
    x = correlated_inputs(rows=1000)
    stats = InputStatistics.empty(K)
    for part in x.split(300):  # batches of unequal size
        stats.update(part.reshape(-1, 10, K) if len(part) == 300 else part)
    assert stats.rows == 1000
    assert torch.allclose(stats.gram, x.double().T @ x.double(), rtol=1e-5, atol=1e-3)
    assert torch.allclose(stats.mean_abs, x.abs().mean(dim=0), rtol=1e-5)
    assert torch.equal(stats.abs_max, x.abs().amax(dim=0))
    delta = weight() - round_to_nearest(weight(), QuantConfig(weight_bits=3))
    direct = output_error(x, weight(), weight() - delta) / 1000
    assert stats.output_error(delta) == pytest.approx(direct, rel=1e-4)
    x[3, 7] = float("nan")
    with pytest.raises(QuantizationError, match="NaN or Inf"):
        stats.update(x)


def test_mismatched_statistics_and_missing_gram_are_named() -> None:
    config = QuantConfig(weight_bits=4, algorithm="gptq")
    with pytest.raises(QuantizationError, match=r"\(16, 16\), expected \(256, 256\)"):
        gptq_codes(weight(), torch.eye(16), config, name="weight of layer `fc`")
    no_gram = InputStatistics.empty(K, gram=False)
    with pytest.raises(QuantizationError, match="Gram matrix"):
        gptq_quantize(weight(), no_gram, config)
