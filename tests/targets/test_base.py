"""The Target registry and the native target (a thin wrapper: same outputs as the model)."""

from __future__ import annotations

import pytest
import torch

from explorer.models import digits
from explorer.nn.convert import quantize_model
from explorer.quant.config import Plan, QuantConfig
from explorer.targets import TargetError, get_target


def test_unknown_target_names_the_choices() -> None:
    with pytest.raises(
        TargetError, match=r"^unknown target 'tpu'; choose from native, onnxruntime, llamacpp$"
    ):
        get_target("tpu")


def test_native_target_is_the_quantized_model() -> None:
    torch.manual_seed(0)
    model = digits.build().eval()
    x = torch.randn(8, 1, 8, 8)
    qmodel = quantize_model(model, Plan.uniform(QuantConfig(weight_bits=8)))
    target = get_target("native")
    art = target.build(qmodel, x)
    with torch.inference_mode():
        assert torch.equal(target.evaluate(art, [x])[0], qmodel(x))
    (lat,) = target.time(art, [x], warmup=1, repeats=3)
    assert lat.median_ms > 0
    assert target.settings() == {"threads": torch.get_num_threads()}
    assert target.version() == torch.__version__
