"""The kernel benchmark's bandwidth floor (explorer.measure.bench)."""

from __future__ import annotations

import pytest

from explorer.kernels import native
from explorer.machine import torch_capability
from explorer.measure.bench import bench_linear, format_table


@pytest.mark.skipif(not native.available(), reason="the floor is timed with the native read")
def test_rows_carry_a_floor_proportional_to_their_weight_bytes() -> None:
    rows = bench_linear(ms=(1,), n=256, k=512, repeats=3)
    by_kernel = {(r["kernel"], r["format"]): r for r in rows}
    assert "read" not in {r["kernel"] for r in rows}  # the floor is not a kernel row
    fp32 = by_kernel[("fp32", "fp32")]
    rate = {r["read_gbps"] for r in rows}
    assert len(rate) == 1 and rate.pop() > 0  # one read rate per M, shared by every row
    for r in rows:
        bytes_ratio = r["weight_bytes"] / fp32["weight_bytes"]
        assert r["floor_ms"] == pytest.approx(fp32["floor_ms"] * bytes_ratio, rel=0.01)
        assert r["of_floor"] == pytest.approx(r["floor_ms"] / r["ms"], rel=0.05)  # ms: 4 decimals
    int8 = by_kernel[("int8-wo-native", "w8-channel")]
    # int8 per-channel: N*K bytes of codes plus N fp32 scales against 4*N*K bytes of fp32
    assert int8["weight_bytes"] == 256 * 512 + 256 * 4
    assert int8["floor_ms"] / fp32["floor_ms"] == pytest.approx((512 + 4) / (4 * 512), rel=0.01)
    # the instruction-set path each row took (explorer bench --json)
    # fp32 is MKL's (or ATen's) code, labelled by the library that ran it, never assumed
    assert fp32["isa"].partition("-")[0] in ("mkl", "onednn", "torch")
    assert by_kernel[("bf16", "bf16")]["isa"].partition("-")[0] in ("onednn", "torch")
    if by_kernel[("bf16", "bf16")]["isa"].startswith("torch-"):
        assert by_kernel[("bf16", "bf16")]["isa"] == f"torch-{torch_capability()}"
    assert by_kernel[("int8-w8a8-native", "w8a8-token")]["isa"] == native.isa()
    # no VNNI code: AVX2, or the AVX-512 row kernels at M = 1 (K = 512 <= 4096)
    assert int8["isa"] == {"scalar": "scalar", "avx512_vnni": "avx512"}.get(native.isa(), "avx2")
    table = format_table({"rows": rows})
    assert (
        "floor" in table.splitlines()[0]
        and "isa" in table.splitlines()[0]
        and "GB/s" in table.splitlines()[-1]
    )
