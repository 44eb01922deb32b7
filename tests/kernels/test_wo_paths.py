"""Every code path of the weight-only kernel (`native.wo_linear`) against the float64 reference.

The AVX-512 row kernels run only for one activation row (a decode step) with K <= 4096 on the
avx512_vnni path; everything else runs the AVX2 code or the portable scalar loop.  The cases
put the edges where those kernels change: N not a multiple of the 16-row column tile, K not a
multiple of the 128-element block (a zero-padded tail block), groups of 32 and 64 that end
inside a block (per-quarter lane scales), per-channel groups, asymmetric zero points.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from explorer.kernels import native

if not native.available():
    pytest.skip(
        f"native kernels unavailable: {native.unavailable_reason()}", allow_module_level=True
    )

from test_native import (  # noqa: E402  (this folder is on sys.path)
    REL_TOL,
    make_wo_inputs,
    ref_wo_linear,
    rel_err,
)

WO_CODE = {"avx512_vnni": "avx512", "avx2": "avx2", "scalar": "scalar"}
"""The code `wo_linear` runs at M = 1, K <= 4096 on each forced path (`native.wo_isa`)."""


@pytest.fixture(params=tuple(WO_CODE))
def wo_path(
    request: pytest.FixtureRequest, isa_skip_reason: Callable[[str], str | None]
) -> Iterator[str]:
    """Force one path (skipping, with the missing feature, where the CPU lacks it)."""
    reason = isa_skip_reason(request.param)
    if reason:
        pytest.skip(reason)
    try:
        assert native.set_isa(request.param) == request.param
        yield request.param
    finally:
        native.set_isa(None)


# (N, K, G): K % 128 != 0 -> tail block; G = 32 / 64 -> groups end inside a block
CASES = [
    (37, 4096, 128),
    (19, 4096, 32),
    (33, 1056, 32),  # 8.25 blocks, 33 groups
    (21, 704, 64),  # 5.5 blocks
    (17, 200, 200),  # per channel, one partial block
    (5, 96, 32),  # shorter than one block
    (16, 2048, 2048),  # exactly one column tile
]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("zeros", [False, True])
@pytest.mark.parametrize(("n", "k", "g"), CASES)
def test_wo_paths_match_reference(
    wo_path: str, bits: int, zeros: bool, n: int, k: int, g: int
) -> None:
    x, codes, scales, z, b = make_wo_inputs(1, n, k, bits, g, zeros, bias=True, seed=n + k + g)
    assert native.wo_isa(1, k) == WO_CODE[wo_path]
    y = native.wo_linear(x, codes, scales, z, bits=bits, group_size=g, bias=b)
    assert y.shape == (1, n)
    assert rel_err(y, ref_wo_linear(x, codes, scales, z, bits, g, b)) <= REL_TOL


@pytest.mark.parametrize("bits", [4, 8])
def test_wo_paths_offset_activations(wo_path: str, bits: int) -> None:
    """Activations far from zero mean (sum x large next to sum u x): the zero-point term is
    subtracted after the raw-code sums, so this is where float32 cancellation would show."""
    x, codes, scales, z, b = make_wo_inputs(1, 23, 1024, bits, 32, True, bias=False, seed=7)
    x = x + 3.0
    y = native.wo_linear(x, codes, scales, z, bits=bits, group_size=32)
    assert rel_err(y, ref_wo_linear(x, codes, scales, z, bits, 32, None)) <= REL_TOL


def test_wo_isa_names_the_code_for_each_shape(wo_path: str) -> None:
    """Only a decode step with K <= 4096 runs the AVX-512 code; batches and longer rows run
    the AVX2 code (reported so, on every SIMD path), and the answers agree with the reference
    there too."""
    simd = "scalar" if wo_path == "scalar" else "avx2"
    assert native.wo_isa(1, 4096) == WO_CODE[wo_path]
    assert native.wo_isa(2, 4096) == simd
    assert native.wo_isa(1, 4160) == simd
    x, codes, scales, z, b = make_wo_inputs(1, 9, 4160, 4, 32, False, bias=False, seed=1)
    y = native.wo_linear(x, codes, scales, None, bits=4, group_size=32)
    assert rel_err(y, ref_wo_linear(x, codes, scales, None, 4, 32, None)) <= REL_TOL


def test_bench_reports_the_weight_only_code(wo_path: str) -> None:
    from explorer.measure.bench import kernel_isa

    simd = "scalar" if wo_path == "scalar" else "avx2"
    assert kernel_isa("int4-wo-native", 1, 4096) == WO_CODE[wo_path]
    assert kernel_isa("int8-wo-native", 8, 4096) == simd
    assert kernel_isa("int8-wo-native") == simd  # shape unknown: the code batches run


def test_threads_split_the_avx512_rows_like_one_thread(wo_path: str) -> None:
    """Two threads claim column tiles dynamically; the result must not depend on who ran
    which tile (each row is summed by one thread in a fixed order)."""
    x, codes, scales, z, b = make_wo_inputs(1, 70, 512, 4, 64, True, bias=True, seed=5)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = native.wo_linear(x, codes, scales, z, bits=4, group_size=64, bias=b)
        torch.set_num_threads(2)
        y2 = native.wo_linear(x, codes, scales, z, bits=4, group_size=64, bias=b)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(y1, y2)
