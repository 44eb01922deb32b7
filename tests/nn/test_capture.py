"""`capture_outputs`: named layers' outputs from one pass; hooks never outlive the call."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from explorer.nn.capture import capture_outputs


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()


def test_outputs_equal_direct_calls_and_unknown_names_are_left_out() -> None:
    model = _model()
    x = torch.randn(5, 4, dtype=torch.float64)
    out = capture_outputs(model, ["0", "2", "missing"], x)
    assert set(out) == {"0", "2"}
    torch.testing.assert_close(out["0"], model[0](x), rtol=0, atol=0)
    torch.testing.assert_close(out["2"], model(x), rtol=0, atol=0)
    assert not any(m._forward_hooks for m in model.modules())


def test_rows_keeps_a_copy_of_the_first_samples() -> None:
    model = _model()
    x = torch.randn(5, 4, dtype=torch.float64)
    out = capture_outputs(model, ["2"], x, rows=2)
    torch.testing.assert_close(out["2"], model(x)[:2], rtol=0, atol=0)
    assert out["2"].untyped_storage().nbytes() == 2 * 3 * 8  # not a view of the full output


def test_hooks_are_removed_when_the_forward_fails() -> None:
    model = _model()
    with pytest.raises(RuntimeError):
        capture_outputs(model, ["0"], torch.randn(5, 7, dtype=torch.float64))
    assert not any(m._forward_hooks for m in model.modules())
