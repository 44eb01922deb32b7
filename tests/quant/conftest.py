"""Seeded weights shared by the quantization tests.

Session-scoped and read-only: tests must not modify them in place.
"""

from __future__ import annotations

import pytest
import torch

WEIGHT_SHAPE = (512, 4096)  # (out_features, in_features): an LLM-sized row, 2M weights


@pytest.fixture(scope="session")
def gaussian_weight() -> torch.Tensor:
    """N(0, 1) weights, the usual stand-in for a trained linear layer."""
    return torch.randn(WEIGHT_SHAPE, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def student_t_weight() -> torch.Tensor:
    """Heavy-tailed weights (Student-t, 3 degrees of freedom): rare large outliers per row."""
    gen = torch.Generator().manual_seed(1)
    normal = torch.randn((128, 1024), generator=gen)
    chi2 = (torch.randn((3, 128, 1024), generator=gen) ** 2).sum(dim=0)
    return normal / torch.sqrt(chi2 / 3.0)


@pytest.fixture(scope="session")
def laplace_weight() -> torch.Tensor:
    """Laplace weights: exponential tails, between Gaussian and Student-t."""
    gen = torch.Generator().manual_seed(2)
    # Inverse CDF of Laplace(0, 1); the clamp keeps log1p away from log(0) at u = -0.5.
    u = (torch.rand((128, 1024), generator=gen) - 0.5).clamp(-0.4999, 0.4999)
    return -torch.sign(u) * torch.log1p(-2.0 * u.abs())
