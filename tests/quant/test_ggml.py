"""ggml formats: block layouts against the gguf package's table, ggml's bytes decoded by gguf
bit for bit as ggml's own ``to_float`` decodes them, the gguf package's quantizers against ggml's,
and Q4_0 / Q8_0 stated as our symmetric primitives with ggml's scale and rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer.errors import QuantizationError
from explorer.measure.metrics import sqnr_db
from explorer.quant import ggml
from explorer.quant.config import QuantConfig
from explorer.quant.primitives import dequantize, quantize
from explorer.quant.qtensor import round_to_nearest

gguf = pytest.importorskip("gguf")

QUANTIZED = [f for f in ggml.FORMATS.values() if not f.is_float]


def _has_ggml() -> bool:
    try:
        ggml.ggml_base()
    except ggml.GgmlError:
        return False
    return True


needs_ggml = pytest.mark.skipif(not _has_ggml(), reason="llama-cpp-python (ggml) not installed")


@pytest.fixture(scope="module")
def weight() -> torch.Tensor:
    """(8, 512) Gaussian rows with a few outliers, as real weight rows have."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 512, generator=gen) * 0.02
    w[torch.randint(0, 8, (6,), generator=gen), torch.randint(0, 512, (6,), generator=gen)] *= 12
    return w


def test_block_layouts_match_gguf_and_known_bits() -> None:
    for fmt in ggml.FORMATS.values():
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(fmt.ggml_type)]
        assert (fmt.block, fmt.block_bytes) == (block, size), fmt.name
        assert gguf.GGMLQuantizationType(fmt.ggml_type).name.lower() == fmt.name
    bits = {n: f.bits for n, f in ggml.FORMATS.items()}
    assert bits["q4_0"] == 4.5 and bits["q4_k"] == 4.5 and bits["q6_k"] == 6.5625
    assert bits["q8_0"] == 8.5 and bits["q5_k"] == 5.5 and bits["q3_k"] == 3.4375
    assert bits["q2_k"] == 2.625 and bits["iq4_nl"] == 4.5 and bits["tq2_0"] == 2.0625


def test_rows_that_do_not_fit_a_block_are_refused_and_fall_back_as_llama_cpp() -> None:
    q4k = ggml.format_of("Q4_K")
    assert "blocks of 256" in (ggml.why_not(q4k, (8, 384)) or "")
    assert ggml.resolve(q4k, (8, 384)).name == "q5_0"
    assert ggml.resolve(ggml.format_of("q2_k"), (8, 384)).name == "q4_0"
    assert ggml.resolve(ggml.format_of("q4_0"), (8, 48)).name == "f16"
    with pytest.raises(QuantizationError, match="a row of 384 is not a whole number"):
        ggml.quantize(torch.zeros(2, 384), q4k)
    with pytest.raises(QuantizationError, match="unknown ggml format 'q9'"):
        ggml.format_of("q9")


@needs_ggml
@pytest.mark.parametrize("fmt", QUANTIZED + [ggml.FORMATS["f16"], ggml.FORMATS["bf16"]], ids=str)
def test_gguf_decodes_ggml_bytes_bit_for_bit(fmt: ggml.GgmlFormat, weight: torch.Tensor) -> None:
    data = ggml.quantize(weight, fmt)
    assert data.shape == (8, fmt.row_bytes(512))
    ours = ggml.dequantize(data, fmt, (8, 512))
    theirs = ggml.ggml_dequantize(data, fmt, (8, 512))
    assert torch.equal(ours, theirs)
    # TQ2_0 is ternary (-1, 0, 1 times a block's amax): for ternary-trained weights (BitNet),
    # so Gaussian rows with outliers keep almost nothing
    floor = {2: 5.0, 3: 10.0, 4: 15.0, 5: 20.0, 6: 25.0, 8: 35.0, 16: 45.0}
    assert sqnr_db(weight, ours) > (1.0 if fmt.name == "tq2_0" else floor[int(fmt.bits)])


@needs_ggml
@pytest.mark.parametrize("name", ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "bf16", "tq2_0"])
def test_gguf_quantizers_agree_with_ggml(name: str, weight: torch.Tensor) -> None:
    """Where the gguf package quantizes too, its bytes are ggml's (so either can be used)."""
    fmt = ggml.format_of(name)
    theirs = gguf.quants.quantize(weight.numpy(), gguf.GGMLQuantizationType(fmt.ggml_type))
    assert np.array_equal(theirs.reshape(8, -1), ggml.quantize(weight, fmt))


def _ggml_scale(weight: torch.Tensor, levels: float, signed_max: bool) -> torch.Tensor:
    """Per block of 32: Q8_0's ``amax / 127``, or Q4_0's ``m / -8`` with ``m`` the value of
    largest magnitude (sign kept), in float32 as ggml codes with it."""
    v = weight.reshape(weight.shape[0], -1, 32)
    idx = v.abs().argmax(dim=-1, keepdim=True)
    m = v.gather(-1, idx).squeeze(-1) if signed_max else v.abs().amax(dim=-1)
    return m / levels


@needs_ggml
def test_q8_0_is_our_w8_g32_with_fp16_scale_and_fp32_coding(weight: torch.Tensor) -> None:
    """Q8_0 = our symmetric 8-bit quantize/dequantize per group of 32 with the scale amax/127
    used in float32 for the codes and stored as fp16 for the weights (we store bf16, rounded up);
    both round to nearest (ggml half away from zero, we half to even: ties do not occur here)."""
    fmt = ggml.format_of("q8_0")
    q8 = ggml.round_trip(weight, fmt)
    d = _ggml_scale(weight, 127.0, signed_max=False)
    codes = quantize(weight, d, torch.zeros_like(d, dtype=torch.int32), (1, 32), 8, True)
    stated = dequantize(codes, d.half().float(), torch.zeros_like(codes[:, ::32]), (1, 32))
    assert torch.equal(q8, stated)
    ours = round_to_nearest(weight, QuantConfig(8, "group", 32))
    # the same function but for the scale's storage: at most one code step apart per group
    amax = weight.reshape(8, -1, 32).abs().amax(-1, keepdim=True)
    assert ((ours - q8).reshape(8, -1, 32).abs() <= 1.01 * amax / 127).all()
    assert abs(sqnr_db(weight, ours) - sqnr_db(weight, q8)) < 0.5


@needs_ggml
def test_q4_0_is_our_w4_g32_with_a_signed_scale_of_max_over_minus_8(weight: torch.Tensor) -> None:
    """Q4_0 differs from our W4 g32 symmetric in the scale: ``d = m / -8`` with ``m`` the
    block's largest-magnitude value, sign kept, so ``m`` lands exactly on code -8 and all 16
    levels are used, where we take ``amax / 7`` (15 levels used). With that scale (fp32 for coding,
    fp16 stored) our primitives give Q4_0's weights bit for bit; and the 16th level makes Q4_0
    the more accurate of the two on Gaussian weights."""
    fmt = ggml.format_of("q4_0")
    q4 = ggml.round_trip(weight, fmt)
    d = _ggml_scale(weight, -8.0, signed_max=True)
    codes = quantize(weight, d, torch.zeros_like(d, dtype=torch.int32), (1, 32), 4, True)
    stated = dequantize(codes, d.half().float(), torch.zeros_like(codes[:, ::32]), (1, 32))
    assert torch.equal(q4, stated)
    ours = round_to_nearest(weight, QuantConfig(4, "group", 32))
    assert not torch.equal(ours, q4)
    assert sqnr_db(weight, q4) > sqnr_db(weight, ours)
