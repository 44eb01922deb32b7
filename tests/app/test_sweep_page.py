"""The Sweep page (AppTest): widgets build a spec, Run starts a real sweep of digits-cnn in a
worker process, polling shows its progress and rows, the rows persist and reappear on a reload,
the results download as CSV, Cancel stops a sweep after the row in flight, and settings that
cannot be swept show an error instead of a traceback."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

from streamlit.testing.v1 import AppTest

from explorer.ui import state

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "sweep.py")
SWEEP_S = 90


def _app(run: str) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.query_params["run"] = run
    return at


def _fast(at: AppTest, bits: list[int], granularity: list[str]) -> AppTest:
    """Choose the dimensions and cheap run settings (3 timing repeats, 200 resamples)."""
    at.multiselect(key="spec.bits").set_value(bits)
    at.multiselect(key="spec.granularity").set_value(granularity)
    at.number_input(key="run.repeats").set_value(3)
    at.number_input(key="run.n_boot").set_value(200)
    return at.run()


def _poll(at: AppTest, run: str, seconds: float = SWEEP_S) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(1.5)
        at.run()
        assert not at.exception, at.exception
        job = state.job(run)
        if job is not None and job.finished:
            at.run()  # the page as it is drawn after the sweep
            return
    raise AssertionError(f"the sweep did not finish within {seconds} s")


def _results(at: AppTest) -> Any:
    (frame,) = [d.value for d in at.dataframe if "configuration" in d.value.columns]
    return frame


def test_run_a_sweep_and_download_its_rows(app_env: dict[str, Path]) -> None:
    run = "0000000000b1"
    at = _fast(_app(run).run(), [8], ["channel"])
    assert not at.exception, at.exception
    assert not at.error
    assert any("1 configuration plus the fp32 and bf16" in c.value for c in at.caption)
    assert any("No results for this model yet" in i.value for i in at.info)
    at.button(key="sweep.run").click().run()
    assert not at.exception, at.exception
    job = state.job(run)
    assert job is not None and job.spec.weight_bits == (8,)
    assert job.settings.repeats == 3 and job.settings.n_boot == 200
    assert at.get("progress") or job.finished
    assert at.button(key="sweep.run").disabled
    _poll(at, run)
    assert not at.error
    assert any("Sweep finished: 3 of 3 rows" in s.value for s in at.success)
    frame = _results(at)
    assert list(frame["configuration"]) == ["fp32", "bf16", "W8 channel sym ptq"]
    assert list(frame["weight bits"])[2] == 8 and list(frame["granularity"])[2] == "channel"
    assert frame["accuracy"].between(0.9, 1.0).all()
    assert frame["on the front"].any()
    assert set(frame["latency"]) <= {"measured", "simulated"}
    (download,) = at.get("download_button")
    assert download.proto.label == "Download CSV"
    assert at.get("plotly_chart")  # the live front of this sweep
    # rows persist: a reload of the page (a new session of the same run) shows them
    again = _app(run).run()
    assert not again.exception, again.exception
    assert list(_results(again)["configuration"]) == list(frame["configuration"])
    # the CSV holds the same rows
    text = state.store().to_csv_text(state.store().rows(owner=""))
    assert [r["label"] for r in csv.DictReader(io.StringIO(text))] == list(frame["configuration"])


def test_cancel_stops_the_sweep(app_env: dict[str, Path]) -> None:
    run = "0000000000b2"
    at = _fast(_app(run).run(), [8, 6, 4, 3, 2], ["channel", "tensor"])
    at.button(key="sweep.run").click().run()
    assert not at.exception, at.exception
    at.button(key="sweep.job.cancel").click().run()
    assert not at.exception, at.exception
    assert any("Cancelling" in c.value for c in at.caption)
    _poll(at, run)
    assert any("Sweep cancelled after" in w.value for w in at.warning)
    job = state.job(run)
    done = [e for e in job.history if e.kind in ("row", "cached")]
    assert len(done) < 12  # 10 configurations and 2 baselines were asked for
    assert not at.button(key="sweep.run").disabled  # a new sweep can start


def test_invalid_settings_show_an_error(app_env: dict[str, Path]) -> None:
    run = "0000000000b3"
    at = _app(run).run()
    at.multiselect(key="spec.bits").set_value([]).run()
    assert not at.exception, at.exception
    assert len(at.error) == 1 and "weight_bits needs at least one value" in at.error[0].value
    assert at.button(key="sweep.run").disabled
    # static per-token activations cannot exist: every combination is skipped, with its reason
    at.multiselect(key="spec.bits").set_value([8])
    at.multiselect(key="spec.act_bits").set_value(["8"])
    at.multiselect(key="spec.act_mode").set_value(["static"])
    at.multiselect(key="spec.act_granularity").set_value(["token"])
    at.run()
    assert not at.exception, at.exception
    assert any("will be skipped" in e.label for e in at.expander)
    assert any("No combination can be evaluated" in w.value for w in at.warning)
    assert at.button(key="sweep.run").disabled


def test_the_target_choice_reaches_the_worker(app_env: dict[str, Path]) -> None:
    """Targets: the explorer's kernels by default; ONNX Runtime (installed with the onnx extra)
    adds a second run of every configuration; llama.cpp formats are listed as not available for
    a CNN, with the reason."""
    import pytest

    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    run = "0000000000b4"
    at = _fast(_app(run).run(), [8], ["channel"])
    targets = at.multiselect(key="targets")
    assert targets.value == ["native"]
    assert targets.options == ["Explorer kernels (native)", "ONNX Runtime"]
    (why,) = [c.value for c in at.caption if c.value.startswith("Not available here:")]
    assert "llama" in why  # the reason: a CNN, or the llamacpp extra missing
    targets.set_value(["native", "onnxruntime"]).run()
    assert any("Each runs on 2 targets" in c.value for c in at.caption)
    at.button(key="sweep.run").click().run()
    assert not at.exception, at.exception
    job = state.job(run)
    try:
        assert job is not None and job.settings.target == "native"
        assert job.targets == ("onnxruntime",)
    finally:
        if job is not None:
            job.terminate()
