"""Capture named layers' outputs in one forward pass, with forward hooks that are always removed."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def capture_outputs(
    model: nn.Module, names: Sequence[str], x: torch.Tensor, *, rows: int | None = None
) -> dict[str, torch.Tensor]:
    """Run ``model(x)`` once (inference mode) and return each named submodule's output.

    Names the model does not have are left out. With ``rows``, only the first ``rows`` samples
    of each output are kept, copied so that the full activation is freed; without it the output
    itself is kept (detached).
    """
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str, out: torch.Tensor) -> None:
        out = out.detach()
        outputs[name] = out if rows is None else out[:rows].clone()

    modules = dict(model.named_modules())
    hooks = [
        modules[n].register_forward_hook(lambda _m, _a, out, n=n: keep(n, out))
        for n in names
        if n in modules
    ]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return outputs
