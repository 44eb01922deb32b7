"""Shared fixtures of the kernel tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from explorer.kernels import native
from explorer.machine import cpu_flags

SIMD_FEATURES = ("avx2", "fma")
"""What the C kernels' AVX2 path needs (``qe_kernels.c`` checks both at load time)."""

ISA_PARAMS = ("avx512_vnni", "avx_vnni", "avx2", "scalar")
"""Every instruction-set path of the C kernels (`explorer.kernels.native.ISAS`), best first."""


def missing_simd_features() -> list[str]:
    """The `SIMD_FEATURES` this CPU lacks (all of them on a CPU that is not x86-64)."""
    flags = cpu_flags()
    return [f for f in SIMD_FEATURES if f not in flags]


def skip_reason(name: str) -> str | None:
    """Why path ``name`` cannot run on this CPU, naming the missing feature (None: it can).

    The /proc/cpuinfo flags name what is missing; the library's own cpuid check decides, so a
    path is never reported as tested when the library would not take it."""
    missing = native.missing_isa_features(name)
    if missing:
        return f"{', '.join(missing)} not in /proc/cpuinfo flags: the {name} kernels cannot run"
    if not native.isa_supported(name):
        return f"the native library reports that this CPU cannot run the {name} kernels"
    return None


def _on_path(name: str, check_reported: bool = False) -> Iterator[str]:
    """Force path ``name`` for one test (skipping, with the missing feature, where the CPU
    lacks it), then go back to the best path."""
    reason = skip_reason(name)
    if reason:
        pytest.skip(reason)
    try:
        # the path actually taken, not the one asked for
        assert native.set_isa(name) == name
        if check_reported:
            assert native.build_info()["isa"] == name
        yield name
    finally:
        native.set_isa(None)


@pytest.fixture(params=ISA_PARAMS)
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a native-kernel test on every instruction-set path this CPU has (AVX-512 VNNI,
    AVX-VNNI, AVX2, the portable scalar code); the others skip, naming the missing feature."""
    yield from _on_path(request.param, check_reported=True)


@pytest.fixture(params=("avx2", "scalar"))
def wo_isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """The AVX2 and scalar paths of the weight-only kernels and the streaming read, which have no
    VNNI code: a VNNI level runs their AVX2 code, except the weight-only kernels at M = 1 with
    K <= 4096, whose AVX-512F row kernels tests/kernels/test_wo_paths.py tests on avx512_vnni."""
    yield from _on_path(request.param)


@pytest.fixture(params=("avx512_vnni", "avx_vnni", "avx2", "scalar"))
def packed_isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """The paths that read repacked weights (`native.pack_int8`, `native.pack_int4`)."""
    yield from _on_path(request.param)


@pytest.fixture
def isa_skip_reason() -> Callable[[str], str | None]:
    """`skip_reason`, for tests of the skip messages themselves."""
    return skip_reason
