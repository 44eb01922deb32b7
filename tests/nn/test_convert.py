"""quantize_model: no mutation, plan resolution and fallbacks, BN folding, calibration, kernels."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from explorer.errors import QuantConfigError, QuantizationError
from explorer.measure.metrics import sqnr_db
from explorer.nn import quantize_model
from explorer.nn.convert import MIN_CALIBRATION_SAMPLES, quant_modules, resolve_plan
from explorer.nn.fold import fold_batch_norm
from explorer.nn.modules import Bf16Linear, QuantConv2d, QuantLinear
from explorer.quant.config import Plan, QuantConfig


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
    bn = model[1]
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.2, 3.0)
    bn.weight.data.uniform_(0.5, 2.0)
    return model.eval()


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"fc1": nn.Linear(64, 128), "fc2": nn.Linear(128, 64)}) for _ in range(2)
        )
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = x + b["fc2"](torch.relu(b["fc1"](x)))
        return self.head(x)


def test_input_model_is_not_mutated() -> None:
    model = small_cnn()
    before = copy.deepcopy(model.state_dict())
    quantize_model(model, Plan.uniform(QuantConfig(weight_bits=4)))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(model[1], nn.BatchNorm2d) and isinstance(model[6], nn.Linear)


def test_batch_norm_folding_preserves_outputs() -> None:
    model = small_cnn()
    x = torch.randn(4, 3, 8, 8)
    folded, names = fold_batch_norm(copy.deepcopy(model))
    assert names == ["0"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_batch_norm_folding_through_fx_for_non_sequential_models() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.bn = nn.BatchNorm2d(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.bn(self.conv(x)))

    net = Net().eval()
    net.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 6, 6)
    folded, names = fold_batch_norm(copy.deepcopy(net))
    assert names == ["conv"]
    torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)


def test_w8_per_channel_is_close_to_float() -> None:
    model = small_cnn()
    x = torch.randn(8, 3, 8, 8)
    q = quantize_model(model, Plan.uniform(QuantConfig()), example_input=x)
    assert sqnr_db(model(x), q(x)) > 30
    kinds = {type(m) for m in quant_modules(q).values()}
    assert kinds == {QuantConv2d, QuantLinear}


def test_plan_patterns_explicit_and_float_layers() -> None:
    model = Mlp()
    w4 = QuantConfig(weight_bits=4, granularity="group", group_size=32)
    plan = Plan(
        default=QuantConfig(),
        rules=(("head", None), ("blocks.*.fc1", w4), ("blocks.1.fc2", QuantConfig.float("bf16"))),
    )
    q = quantize_model(model, plan)
    assert isinstance(q.head, nn.Linear) and not isinstance(q.head, QuantLinear)
    assert q.blocks[0]["fc1"].config == w4 and q.blocks[1]["fc1"].config == w4
    assert q.blocks[0]["fc2"].config == QuantConfig()
    assert isinstance(q.blocks[1]["fc2"], Bf16Linear)
    report = q.quant_report.layers
    assert report["blocks.0.fc1"].source == "pattern:blocks.*.fc1"
    assert report["head"].source == "explicit"


def test_explicit_misfit_is_an_error_naming_value_and_layer() -> None:
    bad = QuantConfig(weight_bits=4, granularity="group", group_size=48)
    with pytest.raises(
        QuantConfigError,
        match=r"group size 48 does not divide in_features 64 "
        r"of layer `blocks.0.fc1`",
    ):
        quantize_model(Mlp(), Plan(rules=(("blocks.0.fc1", bad),)))


@pytest.mark.parametrize("policy", ["channel", "float", "error"])
def test_pattern_misfit_falls_back_by_policy(policy: str) -> None:
    g48 = QuantConfig(weight_bits=4, granularity="group", group_size=48)
    plan = Plan(default=g48, fallback=policy)  # divides 128 (fc2's input)? no: 128 % 48 != 0
    if policy == "error":
        with pytest.raises(QuantConfigError, match="group size 48"):
            quantize_model(Mlp(), plan)
        return
    q = quantize_model(Mlp(), plan)
    fallbacks = q.quant_report.fallbacks
    assert set(fallbacks) == {
        "blocks.0.fc1",
        "blocks.0.fc2",
        "blocks.1.fc1",
        "blocks.1.fc2",
        "head",
    }
    if policy == "channel":
        assert q.head.config.granularity == "channel" and q.head.config.weight_bits == 4
        assert "per-channel instead" in fallbacks["head"]
    else:
        assert type(q.head) is nn.Linear
        assert "kept in fp32" in fallbacks["head"]


def test_plan_naming_missing_layer_is_an_error() -> None:
    with pytest.raises(QuantConfigError, match="does not have"):
        resolve_plan(Mlp(), Plan(rules=(("blocks.7.fc1", QuantConfig()),)))


def test_static_activations_need_enough_calibration_samples() -> None:
    config = QuantConfig(act_bits=8, act_granularity="tensor", act_mode="static")
    with pytest.raises(QuantConfigError, match=f"at least {MIN_CALIBRATION_SAMPLES}"):
        quantize_model(Mlp(), Plan.uniform(config))
    with pytest.raises(QuantConfigError, match="got 2"):
        quantize_model(Mlp(), Plan.uniform(config), calibration_data=torch.randn(2, 64))
    model = Mlp()
    calib = [torch.randn(16, 64) for _ in range(4)]
    q = quantize_model(model, Plan.uniform(config), calibration_data=calib)
    x = torch.randn(32, 64)
    assert q.blocks[0]["fc1"].act_qparams() is not None
    assert sqnr_db(model(x), q(x)) > 25


def test_non_finite_weights_name_the_layer() -> None:
    model = Mlp()
    with torch.no_grad():
        model.blocks[1]["fc1"].weight[3, :2] = float("nan")
        model.blocks[1]["fc1"].weight[4, 0] = float("inf")
    with pytest.raises(
        QuantizationError, match=r"layer `blocks.1.fc1`.* 3 non-finite .*2 NaN, 1 Inf"
    ):
        quantize_model(model, Plan.uniform(QuantConfig()))


def test_simulated_layers_use_the_reference_and_have_a_real_twin() -> None:
    model = Mlp()
    x = torch.randn(4, 64)
    w3g16 = QuantConfig(weight_bits=3, granularity="group", group_size=16)  # no kernel: < 32
    q = quantize_model(model, Plan.uniform(w3g16), example_input=x)
    layer = q.blocks[0]["fc1"]
    assert layer.simulated
    twin = layer.timing_twin()
    assert isinstance(twin, QuantLinear) and not twin.simulated
    assert twin.config.weight_bits == 4
    real = quantize_model(model, Plan.uniform(QuantConfig(weight_bits=4)), example_input=x)
    assert not any(m.simulated for m in quant_modules(real).values())


def test_quantized_model_deepcopies_and_still_runs() -> None:
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8)
    q = quantize_model(model, Plan.uniform(QuantConfig(act_bits=8)), example_input=x)
    y = q(x)
    q2 = copy.deepcopy(q)
    torch.testing.assert_close(q2(x), y)


class _TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(64, 32)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 64, bias=False)
        self.head.weight = self.embed.weight  # tied, as Hugging Face LMs save them

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.embed(ids)))


def test_replaced_weights_are_shared_not_copied_and_the_input_is_untouched() -> None:
    """quantize_model copies the model but not the float weights of the layers it replaces (a
    second float copy of a 0.5 B model while quantizing); a tie to one stays shared."""
    torch.manual_seed(0)
    model = _TiedLM().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 64, (2, 8))
    expected = model(ids)
    qmodel = quantize_model(model, Plan.uniform(QuantConfig(weight_bits=8, granularity="channel")))
    assert isinstance(qmodel.head, QuantLinear) and isinstance(model.head, nn.Linear)
    assert qmodel.embed.weight is model.embed.weight  # the tied embedding: shared
    assert qmodel.norm.weight is not model.norm.weight  # layers that stay float: copied
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(ids), expected)
    assert sqnr_db(expected, qmodel(ids)) > 30
