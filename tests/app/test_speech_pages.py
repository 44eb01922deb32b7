"""The Pareto and Layers pages (AppTest) on a speech run: a tiny random Whisper (one encoder and
one decoder layer, tests/tasks/test_speech.py's) on tones with transcripts, its fp32 and W8 rows
stored for the run. The Pareto page draws word error rate against the real-time factor and says
why faster-whisper has no points for a user's Whisper; the Layers page shows the W8 row layer by
layer and its sensitivity heat map, both naming encoder and decoder layers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from explorer.sweep.context import ModelSource, open_context
from explorer.sweep.runner import RunSettings, run_sweep
from explorer.sweep.space import SweepSpec, expand
from explorer.sweep.store import ResultStore
from explorer.ui import state

pytest.importorskip("transformers", reason="the speech extra: pip install -e '.[speech]'")
pytest.importorskip("jiwer", reason="the speech extra: pip install -e '.[speech]'")
from tasks.test_speech import save_whisper, write_folder  # noqa: E402

PAGES = Path(__file__).resolve().parents[2] / "pages"
RUN = "5bee00005bee"
W8 = "W8 channel sym ptq"


@pytest.fixture(scope="module")
def speech_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("speech-pages")
    save_whisper(root / "model")
    write_folder(root / "audio", n=8)  # 2 calibrate, 6 evaluated
    source = ModelSource(model=str(root / "model"), data=str(root / "audio"))
    ctx = open_context(source)
    entries, _ = expand(SweepSpec(weight_bits=(8,), granularity=("channel",)), ctx.model)
    entries = [e for e in entries if e.label in ("fp32", W8)]
    cache, store_path = root / "cache", root / "results.sqlite"
    with ResultStore(store_path) as store:
        settings = RunSettings(repeats=2, warmup=1, n_boot=100)
        events = list(run_sweep(ctx, entries, store, settings=settings, owner=RUN))
    rows = {e.row["label"]: e.row for e in events if e.kind == "row" and e.row}
    assert set(rows) == {"fp32", W8}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPLORER_CACHE", str(cache))
        mp.setenv("EXPLORER_STORE", str(store_path))
        mp.setattr(state, "CACHE_DIR", cache)
        state.save_run_settings({"source": source.to_dict()}, RUN)
        yield {"rows": rows, "cache": cache}


def _app(page: str, selected: str) -> AppTest:
    state.save_run_settings({state.SELECTED_ROW: selected}, RUN)
    at = AppTest.from_file(str(PAGES / page), default_timeout=180)
    at.query_params["run"] = RUN
    return at.run()


def _chart(at: AppTest, key: str) -> dict[str, Any]:
    return next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if c.key == key)


def _parts(names: list[str]) -> set[str]:
    return {part for n in names for part in ("encoder", "decoder") if f".{part}." in n}


@pytest.mark.slow
def test_pareto_page_draws_wer_against_real_time_factor(speech_run: dict[str, Any]) -> None:
    at = _app("pareto.py", speech_run["rows"][W8]["key"])
    assert not at.exception, at.exception
    speed = _chart(at, "pareto.latency")
    assert speed["layout"]["xaxis"]["title"]["text"] == "real-time factor (10 s audio)"
    assert speed["layout"]["yaxis"]["title"]["text"] == "word error rate (%), lower is better"
    xs = {k: x for t in speed["data"] if t.get("meta") == "series" for k, x in
          zip(t["customdata"], t["x"], strict=True)}  # fmt: skip
    assert xs == pytest.approx(
        {r["key"]: r["latency"]["transcribe_10s"]["rtf"] for r in speech_run["rows"].values()}
    )
    captions = " ".join(c.value for c in at.caption)
    assert "No faster-whisper points: faster-whisper runs the original CTranslate2" in captions


@pytest.mark.slow
def test_layers_page_names_encoder_and_decoder_layers(speech_run: dict[str, Any]) -> None:
    row = speech_run["rows"][W8]
    at = _app("layers.py", row["key"])
    assert not at.exception, at.exception
    table = next(d.value for d in at.dataframe if "output SQNR (dB)" in d.value.columns)
    assert _parts(list(table["layer"])) == {"encoder", "decoder"}
    assert table["setting"].eq("W8 channel sym ptq").sum() == len(
        [lay for lay in row["layers"] if lay.get("config")]
    )
    figure = _chart(at, "layers.figure")
    bars = [t for t in figure["data"] if t.get("meta") == "series"]
    assert _parts([name for t in bars for name in t["x"]]) == {"encoder", "decoder"}
    at.multiselect(key="layers.sens.settings").set_value(["W4 g32"])
    at.select_slider(key="layers.sens.samples").set_value(64)
    at.button(key="layers.sens.run").click().run()
    assert not at.exception, at.exception
    heatmap = _chart(at, "layers.heatmap")
    (cells,) = [t for t in heatmap["data"] if t.get("meta") == "heatmap"]
    assert _parts(cells["y"]) == {"encoder", "decoder"}
    # no word error rate on calibration utterances: the damage is the decoder's KL to float
    assert heatmap["layout"]["title"]["text"].startswith("Per-layer sensitivity: KL divergence")
    assert all(v is not None and v >= 0 for z_row in cells["z"] for v in z_row)
