"""CUDA dispatch: the same interface runs torch's CUDA integer kernels (`torch._int_mm`, which needs
more than 16 rows, and `_weight_int4pack_mm`). Skips cleanly without a CUDA device."""

from __future__ import annotations

import pytest
import torch

from explorer.kernels.base import LinearSpec
from explorer.kernels.reference import ReferenceKernel
from explorer.kernels.select import candidates
from explorer.quant.config import QuantConfig
from explorer.quant.qtensor import QuantizedWeight

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize(
    ("config", "kernel", "tol"),
    [
        (QuantConfig(act_bits=8), "int8-w8a8-intmm", 1e-4),
        (
            QuantConfig(act_bits=8, act_granularity="tensor", act_symmetric=False),
            "int8-w8a8-intmm",
            1e-4,
        ),
        (
            QuantConfig(weight_bits=4, granularity="group", group_size=128),
            "int4-wo-tinygemm-bf16",
            2e-2,
        ),
    ],
)
@pytest.mark.parametrize("m", [1, 16, 17, 64])
def test_cuda_kernels_match_reference(config: QuantConfig, kernel: str, tol: float, m: int) -> None:
    n, k = 256, 512
    gen = torch.Generator().manual_seed(m)
    w = torch.randn(n, k, generator=gen)
    x = torch.randn(m, k, generator=gen)
    qw = QuantizedWeight.from_float(w, config)
    spec = LinearSpec.from_config(config, n, k, device="cuda")
    found = {c.name: c for c in candidates(spec)}
    assert kernel in found
    ref = ReferenceKernel(torch.float64)
    ref_spec = LinearSpec.from_config(config, n, k)
    expected = ref.run(ref.prepare(ref_spec, qw, None, None), x)
    got = found[kernel].run(found[kernel].prepare(spec, qw, None, None), x.cuda()).cpu()
    err = float((got.double() - expected).norm() / expected.norm())
    assert err <= tol
