"""ggml's CPU matmul (explorer.kernels.ggml) against a float64 product with the weight ggml
dequantizes: exact up to float32 summation for F32 weights, within the error of quantizing the
input rows to 8 bits (ggml's Q8_0/Q8_K dot-product partner) for quantized weights."""

from __future__ import annotations

import pytest
import torch

from explorer.quant import ggml

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from explorer.kernels.ggml import GgmlLinear  # noqa: E402


@pytest.mark.parametrize(("name", "rtol"), [("f32", 1e-5), ("q8_0", 2e-2), ("q4_k", 2e-2)])
def test_matmul_matches_a_float64_reference(name: str, rtol: float) -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 512, generator=gen) * 0.05
    x = torch.randn(8, 512, generator=gen)
    fmt = ggml.format_of(name)
    layer = GgmlLinear(w, fmt, ms=(1, 8), threads=2)
    deq = w if name == "f32" else ggml.round_trip(w, fmt)
    ref = x.double() @ deq.double().T
    y = layer(x)
    err = (y.double() - ref).norm() / ref.norm()
    assert y.shape == (8, 64) and err < rtol, float(err)
    # the M = 1 graph computes the same row (another code path may sum in another order)
    torch.testing.assert_close(layer(x[:1]), y[:1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ggml.GgmlError, match="built for"):
        layer(x[:3])


@pytest.mark.parametrize("name", ["q4_0", "q4_k", "q6_k"])
def test_repacked_layout_computes_the_plain_layouts_product(name: str) -> None:
    """llama.cpp's CPU_REPACK layout (8 interleaved rows) where ggml has one on this CPU: the
    same quantized input and weights, summed in another order; Q6_K has no repacked layout."""
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(64, 512, generator=gen) * 0.05
    x = torch.randn(8, 512, generator=gen)
    fmt = ggml.format_of(name)
    data = ggml.quantize(w, fmt)
    plain = GgmlLinear(data, fmt, ms=(1, 8), threads=1)
    packed = GgmlLinear(data, fmt, ms=(1, 8), threads=1, repack=True)
    assert not plain.repacked
    assert packed.repacked == (name != "q6_k" and ggml_cpu_has("avx2"))
    for m in (1, 8):
        torch.testing.assert_close(packed(x[:m]), plain(x[:m]), rtol=1e-4, atol=1e-4)


def ggml_cpu_has(feature: str) -> bool:
    from explorer.kernels.ggml import _libs

    return bool(getattr(_libs()[1], f"ggml_cpu_has_{feature}")())


def test_bench_rows_include_ggml_kernels_with_their_block_bytes() -> None:
    from explorer.measure.bench import bench_linear

    rows = bench_linear(ms=(1,), n=64, k=256, repeats=2, ggml_formats=("q4_0",))
    (row,) = [r for r in rows if r["kernel"] == "ggml-q4_0"]
    assert row["format"] == "q4_0" and row["ms"] > 0
    assert row["weight_bytes"] == 64 * 256 // 32 * 18  # 4.5 bits per weight
    repacked = [r for r in rows if r["kernel"] == "ggml-q4_0-repacked"]
    assert len(repacked) == ggml_cpu_has("avx2") and all(r["ms"] > 0 for r in repacked)
