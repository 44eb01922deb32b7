"""Shared fixtures of the kernel tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from explorer.kernels import native
from explorer.machine import cpu_flags

SIMD_FEATURES = ("avx2", "fma")
"""What the C kernels' vector path needs (``qe_kernels.c`` checks both at load time)."""


def missing_simd_features() -> list[str]:
    """The `SIMD_FEATURES` this CPU lacks (all of them on a CPU that is not x86-64)."""
    flags = cpu_flags()
    return [f for f in SIMD_FEATURES if f not in flags]


@pytest.fixture(params=["simd", "scalar"])
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a native-kernel test on the AVX2 path and again on the portable scalar path.

    The "simd" case skips, naming the missing CPU feature, where the library would take the
    scalar path anyway: otherwise it would pass without running a single vector instruction."""
    if request.param == "simd":
        missing = missing_simd_features()
        if missing:
            pytest.skip(f"this CPU lacks {' and '.join(missing)}: the SIMD kernels cannot run")
        if native.build_info().get("isa") != "avx2":
            pytest.skip("the native library reports the scalar path on this CPU")
    native.force_scalar(request.param == "scalar")
    try:
        if request.param == "simd":
            # the path actually taken, not the one asked for
            assert native.build_info()["isa"] == "avx2"
        yield request.param
    finally:
        native.force_scalar(False)
