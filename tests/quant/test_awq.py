"""AWQ: the scale search starts at round-to-nearest and keeps the best grid point, the clipping
search only lowers each group's share of the error, the float function is unchanged by the
rescaling, and salient input channels make AWQ beat round-to-nearest."""

from __future__ import annotations

import pytest
import torch

from explorer.errors import QuantizationError
from explorer.quant.awq import CLIP_SHRINK, awq_candidate_scales, awq_clip, awq_quantize, awq_search
from explorer.quant.config import QuantConfig
from explorer.quant.observers import InputStatistics, weight_range
from explorer.quant.primitives import block_size, choose_qparams, dequantize, quantize
from explorer.quant.qtensor import round_to_nearest

N, K = 96, 256
G128 = QuantConfig(weight_bits=4, granularity="group", group_size=128, algorithm="awq")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The machine is shared: a second intra-op thread only waits for a busy core, and these
    tensors are small."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def salient_inputs(rows: int = 2048, seed: int = 0) -> torch.Tensor:
    """Inputs where 1 % of the channels are 10-30 times larger than the rest, in every row."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, K, generator=gen)
    salient = torch.randperm(K, generator=gen)[: K // 100 + 1]
    x[:, salient] *= torch.linspace(10.0, 30.0, len(salient))
    return x


def weight(seed: int = 1) -> torch.Tensor:
    return torch.randn(N, K, generator=torch.Generator().manual_seed(seed)) * 0.05


def stats_of(x: torch.Tensor) -> InputStatistics:
    stats = InputStatistics.empty(x.shape[1])
    stats.update(x)
    return stats


def output_error(x: torch.Tensor, w: torch.Tensor, w_q: torch.Tensor) -> float:
    return float(((x.double() @ (w - w_q).double().T) ** 2).sum()) / x.shape[0]


def test_alpha_zero_is_round_to_nearest() -> None:
    mean_abs = torch.rand(K) + 0.1
    assert torch.equal(awq_candidate_scales(mean_abs, 0.0), torch.ones(K))
    x, w = salient_inputs(), weight()
    _, _, errors = awq_search(w, stats_of(x), G128)
    assert errors[0] == pytest.approx(output_error(x, w, round_to_nearest(w, G128)), rel=1e-4)


def test_candidate_scales_are_normalised() -> None:
    s = awq_candidate_scales(torch.rand(K) * 5 + 0.01, 0.7)
    assert float(s.max() * s.min()) == pytest.approx(1.0, rel=1e-5)


def test_search_keeps_the_best_grid_point() -> None:
    x, w = salient_inputs(), weight()
    config = G128.with_(awq_grid=10)
    s, alpha, errors = awq_search(w, stats_of(x), config)
    assert len(errors) == 10
    best = min(range(10), key=errors.__getitem__)
    assert alpha == pytest.approx(best / 10)
    assert alpha > 0  # salient channels: some scaling pays
    delta = w - round_to_nearest(w * s, config) / s
    assert output_error(x, w, w - delta) == pytest.approx(errors[best], rel=1e-4)


def test_clip_search_lowers_each_groups_share_of_the_error() -> None:
    x, w = salient_inputs(), weight()
    gram = stats_of(x).gram.float()
    block = block_size(G128, (N, K))
    scale, zero = awq_clip(w, gram, G128)
    lo, hi = weight_range(w, G128, block)
    full = choose_qparams(lo, hi, 4, True, torch.bfloat16)

    def group_errors(qparams: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        deq = dequantize(quantize(w, *qparams, block, 4, True), *qparams, block)
        e = (w - deq).reshape(N, K // 128, 128)
        h = torch.stack([gram[i : i + 128, i : i + 128] for i in range(0, K, 128)])
        return torch.einsum("ngi,gij,ngj->ng", e, h, e)

    assert (group_errors((scale, zero)) <= group_errors(full) * (1 + 1e-5)).all()
    shrunk = scale.float() < full[0].float()
    assert shrunk.any()  # some groups do clip
    assert (scale.float() >= full[0].float() * min(CLIP_SHRINK) * 0.99).all()


def test_per_tensor_grid_has_nothing_to_clip_per_group() -> None:
    config = QuantConfig(weight_bits=4, granularity="tensor", algorithm="awq")
    w = weight()
    scale, zero = awq_clip(w, torch.eye(K), config)
    lo, hi = weight_range(w, config, block_size(config, (N, K)))
    expected = choose_qparams(lo, hi, 4, True)
    assert torch.equal(scale, expected[0]) and torch.equal(zero, expected[1])


@pytest.mark.parametrize(
    "config",
    [
        G128,
        QuantConfig(weight_bits=3, granularity="group", group_size=64, algorithm="awq"),
        QuantConfig(weight_bits=4, symmetric=False, algorithm="awq"),
    ],
    ids=lambda c: c.name,
)
def test_awq_beats_round_to_nearest_on_salient_channels(config: QuantConfig) -> None:
    x, w = salient_inputs(), weight()
    qw, input_scale, info = awq_quantize(w, stats_of(x), config)
    effective = qw.dequantize() * input_scale[None, :]
    awq_err = output_error(x, w, effective)
    rtn_err = output_error(x, w, round_to_nearest(w, config))
    assert awq_err < 0.5 * rtn_err, (awq_err, rtn_err)
    assert 0 < info["alpha"] < 1
    assert input_scale.dtype == torch.float32 and input_scale.shape == (K,)


def test_rescaling_leaves_the_float_function_unchanged() -> None:
    x, w = salient_inputs(rows=64), weight()
    s, _, _ = awq_search(w, stats_of(salient_inputs()), G128)
    assert torch.allclose((x * (1.0 / s)) @ (w * s).T, x @ w.T, rtol=1e-4, atol=1e-4)


def test_mismatched_statistics_are_named() -> None:
    with pytest.raises(QuantizationError, match="have 16 channels, expected 256"):
        awq_quantize(weight(), InputStatistics.empty(16), G128, name="weight of layer `fc`")
