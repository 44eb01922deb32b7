"""Model cards say what they were measured on and claim nothing stale: each shipped ``CARD.md``
is exactly what its model's ``card_markdown`` renders from the shipped ``card.json`` (so prose
fixed in code reaches the asset), and a card with latencies names the kernel build they ran on."""

from __future__ import annotations

import json

import pytest

import explorer.models.digits as digits
import explorer.models.mobile as mobile
import explorer.models.tinylm as tinylm
from explorer.kernels import conv_ops, native
from explorer.models.registry import ASSETS
from explorer.models.tinylm.card import kernels_line, latency_markdown

RENDERERS = {"digits-cnn": digits, "mobile-cnn": mobile, "tiny-lm": tinylm}
STALE = ("32 MiB L3", "chain of small torch ops", "activation quantization in Python")


@pytest.mark.parametrize("name", list(RENDERERS))
def test_shipped_card_is_what_the_code_renders(name: str) -> None:
    card = json.loads((ASSETS / name / "card.json").read_text())
    text = (ASSETS / name / "CARD.md").read_text()
    assert RENDERERS[name].card_markdown(card) == text
    for claim in STALE:
        assert claim not in text


def test_latencies_name_their_kernel_build() -> None:
    shipped = json.loads((ASSETS / "tiny-lm" / "card.json").read_text())["latency"]
    stamp = shipped["kernels"]  # the shipped table was measured on a stamped build
    assert kernels_line(shipped) == (
        f"Kernel build: native library `{stamp['build']}`, instruction set {stamp['isa']}."
    )
    unstamped = {k: v for k, v in shipped.items() if k != "kernels"}
    assert "not recorded" in kernels_line(unstamped)  # cards measured before builds were stamped
    assert "torch's kernels only" in kernels_line({"kernels": None})
    stamped = {**shipped, "kernels": {"build": "0123456789abcdef", "isa": "avx2"}}
    stamped["llc"] = "L3 32 MiB"
    lines = latency_markdown(stamped)
    assert "Kernel build: native library `0123456789abcdef`, instruction set avx2." in lines
    assert "close to the last-level cache (L3 32 MiB)" in lines[-1]


def test_the_stamp_is_the_loaded_library() -> None:
    from explorer.sweep.version import code_version

    stamp = native.build_stamp()
    info = native.build_info()
    if not info["available"]:
        assert stamp is None
    else:
        assert stamp == {"build": str(info["sha256"])[:16], "isa": info["isa"]}
    # row keys and cards record the same library; keys add the int8 convolutions' own path
    native_part = code_version()["native"]
    if native_part is None:
        assert stamp is None
    else:
        assert {k: v for k, v in native_part.items() if k != "conv_isa"} == stamp
        assert native_part.get("conv_isa") == conv_ops.conv_isa()
