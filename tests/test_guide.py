"""`explorer.guide`: the five steps of "Start here" name real pages, in the order of the app's
navigation, and what they say of the default sweep matches `explorer.sweep.default`."""

from __future__ import annotations

from pathlib import Path

from explorer.guide import GUIDE
from explorer.sweep.default import DEFAULT_QAT_STEPS, default_entries

ROOT = Path(__file__).resolve().parents[1]


def test_five_steps_in_navigation_order_on_real_pages() -> None:
    assert [s.title for s in GUIDE] == ["Model", "Sweep", "Pareto", "Layers", "Learn"]
    frame = (ROOT / "streamlit_app.py").read_text()
    positions = [frame.index(f'"{s.page}"') for s in GUIDE]
    assert positions == sorted(positions)
    for step in GUIDE:
        assert (ROOT / step.page).is_file()
        assert step.do and step.see


def test_what_the_guide_says_of_the_default_sweep_holds() -> None:
    entries, _ = default_entries()
    quantized = [e for e in entries if e.kind != "baseline"]
    assert len(quantized) == 9 and "nine ways" in GUIDE[0].do
    assert [e.qat_steps for e in quantized if e.method == "qat"] == [DEFAULT_QAT_STEPS]
    assert "3-bit loss" in GUIDE[2].see  # the QAT row is the 3-bit one
    (qat,) = [e for e in quantized if e.method == "qat"]
    assert qat.plan.default is not None and qat.plan.default.weight_bits == 3
