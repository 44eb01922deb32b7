"""Shared fixtures of the kernel tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from explorer.kernels import native


@pytest.fixture(params=["simd", "scalar"])
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a native-kernel test on the AVX2 path and again on the portable scalar path."""
    native.force_scalar(request.param == "scalar")
    try:
        yield request.param
    finally:
        native.force_scalar(False)
