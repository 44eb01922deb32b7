"""The sensitivity proxy (`explorer.sweep.sensitivity`): the input-energy-weighted weight error
against a float64 reference on a toy layer, the proxy mode's table on tiny-lm, and what the
proxy refuses. Its rank correlation with the measured perplexity drop: tests/sweep/test_mixed.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from explorer.errors import ExplorerError
from explorer.nn.convert import quantize_layer
from explorer.quant.qtensor import round_to_nearest
from explorer.sweep.context import ModelContext, ModelSource, open_context
from explorer.sweep.sensitivity import (
    PROXY_LAYERS,
    input_energy,
    measure_sensitivity,
    proxy_damage,
    resolve_mode,
    setting_config,
)


def _stored_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


SETTINGS = ("W4 g32", "W2 g32")


@pytest.fixture(scope="module")
def tiny_lm() -> ModelContext:
    return open_context(ModelSource(model="tiny-lm"))


def test_proxy_is_the_energy_weighted_weight_error_in_float64() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(64, 16)
    model = nn.Sequential(layer)
    batches = [torch.randn(5, 64) * torch.linspace(0.1, 3.0, 64) for _ in range(3)]
    energy = input_energy(model, None, ["0"], batches)["0"]
    x = torch.cat(batches).double()
    assert torch.allclose(energy, x.square().mean(dim=0), rtol=1e-6, atol=0)
    config = setting_config("W4 g32")
    assert config is not None
    w = layer.weight.detach()
    delta = (w - round_to_nearest(w, config)).double()
    # the proxy is E||delta x||^2 when the features are uncorrelated: here, the diagonal term
    expected = float((x.square().mean(dim=0)[None, :] * delta.square()).sum())
    assert proxy_damage(w, config, energy, layer) == pytest.approx(expected, rel=1e-5)


def test_proxy_mode_is_one_calibration_pass_and_no_metric(tiny_lm: ModelContext) -> None:
    """Proxy mode: every cell's proxy is `proxy_damage` of the layer's weight under the input
    energy of the same calibration samples, its size the quantized layer's stored bytes; no
    metric pass, and the search ranks by the proxy. (Its rank correlation with the measured
    perplexity drop is asserted where the measured table already exists: test_mixed.py.)"""
    proxy = measure_sensitivity(tiny_lm, SETTINGS, samples=8, latency=False, mode="proxy")
    assert proxy.mode == "proxy" and proxy.float_metric is None
    x = tiny_lm.calibration_split[0][:8]
    energy = input_energy(tiny_lm.folded, tiny_lm.task_spec, proxy.layers, list(x.split(8)))
    modules = dict(tiny_lm.folded.named_modules())
    for layer in (proxy.layers[0], proxy.layers[-1]):
        module = modules[layer]
        for setting in SETTINGS:
            cell = proxy.cell(layer, setting)
            config = setting_config(setting)
            expected = proxy_damage(module.weight.detach(), config, energy[layer], module)
            assert cell.proxy == pytest.approx(expected, rel=1e-12)
            assert cell.size_bytes == _stored_bytes(quantize_layer(module, config, layer))
            assert cell.metric_drop is None and cell.kl is None
    table = proxy.to_search_table()  # no measured damage: the search ranks by the proxy
    assert table.damage[0][0] == proxy.cell(proxy.layers[0], SETTINGS[0]).proxy


def test_auto_mode_and_what_the_proxy_refuses() -> None:
    configs = {s: setting_config(s) for s in ("W4 g32", "bf16", "fp32")}
    assert resolve_mode("auto", PROXY_LAYERS, configs) == "measured"
    assert resolve_mode("auto", PROXY_LAYERS + 1, configs) == "proxy"
    with pytest.raises(ExplorerError, match="'W8A8 channel' quantizes activations"):
        resolve_mode("proxy", 10, {"W8A8 channel": setting_config("W8A8 channel")})
    with pytest.raises(ExplorerError, match="'W4 g128 gptq' names an algorithm"):
        resolve_mode("auto", 500, {"W4 g128 gptq": setting_config("W4 g128 gptq")})
    with pytest.raises(ExplorerError, match="sensitivity mode must be one of"):
        resolve_mode("cheap", 10, configs)
