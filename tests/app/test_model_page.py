"""The Model page (AppTest): the layer table and float metric of the default model, the default
sweep that starts by itself on first open and shows its first points, the "Start here" guide
and its buttons to each page, uploads through the real file uploader (good weights switch the
model; a truncated file shows an error and changes nothing), switching to another built-in
model, and the picker drawn before torch is imported.

The tests open on digits-cnn (see ``conftest.py``), except those of a new user's first open,
which get the app's own default model (`real_default`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import safetensors.torch
from streamlit.testing.v1 import AppTest

from explorer.guide import GUIDE, GUIDE_TITLE
from explorer.models.catalog import BUILTIN_NAMES, DEFAULT_MODEL
from explorer.models.registry import get_builtin
from explorer.sweep.context import ModelSource, open_context
from explorer.sweep.default import DEFAULT_RUN, default_entries
from explorer.sweep.store import ResultStore
from explorer.ui import state

ROOT = Path(__file__).resolve().parents[2]
PAGE = str(ROOT / "pages" / "model.py")
FIRST_POINTS_S = 90


def _app(run: str, *, auto_sweep_done: bool = True, cache: Path | None = None) -> AppTest:
    """The page for run ``run``; unless asked, the run already had its default sweep (so a
    test of something else does not start one)."""
    if auto_sweep_done:
        assert cache is not None
        folder = cache / "runs" / run
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "run.json").write_text(json.dumps({"auto_sweep_started": True}))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.query_params["run"] = run
    return at


def _layers(at: AppTest) -> Any:
    """The layer table (the one data frame with a ``layer`` column)."""
    (frame,) = [d.value for d in at.dataframe if "layer" in d.value.columns]
    return frame


def _run_json(cache: Path, run: str) -> dict[str, Any]:
    path = cache / "runs" / run / "run.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_first_open_shows_layers_metric_and_starts_the_default_sweep(
    real_default: dict[str, Path],
) -> None:
    run = "0000000000a1"
    at = _app(run, auto_sweep_done=False).run()
    assert not at.exception, at.exception
    assert not at.error
    model = get_builtin(DEFAULT_MODEL)
    layers = _layers(at)
    assert DEFAULT_MODEL == "mobile-cnn"
    assert list(layers["layer"])[:3] == ["features.0.0", "features.0.1", "features.1.0"]
    assert list(layers["shape"])[0] == "32 × 3 × 4 × 4"
    assert layers["parameters"].sum() == model.params()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Float accuracy"] == f"{model.card()['float']:.2%}"
    # the guide is open on a run's first visit
    (guide,) = [e for e in at.expander if e.label == GUIDE_TITLE]
    assert guide.proto.expanded
    # the default sweep started by itself, once, in a worker process: exactly the entries and
    # settings of explorer.sweep.default
    job = state.job(run)
    assert job is not None and job.alive
    expected, _ = default_entries(open_context(ModelSource(model=DEFAULT_MODEL)).model)
    assert job.entries is not None and job.spec is None
    assert [e.label for e in job.entries] == [e.label for e in expected]
    assert job.settings == DEFAULT_RUN
    assert _run_json(real_default["cache"], run)["auto_sweep_started"] is True
    assert at.get("progress")
    deadline = time.monotonic() + FIRST_POINTS_S
    while time.monotonic() < deadline:
        time.sleep(1.5)
        at.run()
        assert not at.exception, at.exception
        if at.get("plotly_chart"):
            break
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert charts, "no point of the default sweep appeared within a minute"
    points = {
        key
        for trace in charts[0]["data"]
        if trace.get("meta") == "series"
        for key in trace.get("customdata") or []
    }
    with ResultStore(real_default["store"]) as store:
        assert points and points <= store.keys(owner="")  # computed here, stored as shared
    # a reload of the same run neither starts a second sweep nor loses the running one
    again = AppTest.from_file(PAGE, default_timeout=120)
    again.query_params["run"] = run
    again.run()
    assert not again.exception, again.exception
    assert state.job(run) is job
    job.terminate()


def test_start_here_names_five_steps_and_opens_each_page(app_env: dict[str, Path]) -> None:
    """In the app's frame: the guide lists Model → Sweep → Pareto → Layers → Learn, is folded
    once the run had its first visit, and each step's button opens its page in the same run."""
    assert [step.title for step in GUIDE] == ["Model", "Sweep", "Pareto", "Layers", "Learn"]
    titles = {"Sweep": "Sweep", "Pareto": "Pareto fronts", "Layers": "Layers", "Learn": "Learn"}
    run = "0000000000a6"
    _app(run, cache=app_env["cache"])  # the run had its first visit
    for step in GUIDE[1:]:
        at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
        at.query_params["run"] = run
        at.run()
        assert not at.exception, at.exception
        (guide,) = [e for e in at.expander if e.label == GUIDE_TITLE]
        assert not guide.proto.expanded  # not the run's first visit
        text = " ".join(m.value for m in guide.markdown)
        positions = [text.index(f"**{n} · {s.title}**") for n, s in enumerate(GUIDE, start=1)]
        assert positions == sorted(positions)
        at.button(key=f"model.guide.{step.title.lower()}").click().run()
        assert not at.exception, at.exception
        assert [t.value for t in at.title][-1].endswith(titles[step.title])
        assert at.query_params["run"] in (run, [run])
    assert state.job(run) is None  # no default sweep was started on the way


def test_a_truncated_upload_shows_an_error_and_changes_nothing(
    app_env: dict[str, Path],
) -> None:
    run = "0000000000a2"
    at = _app(run, cache=app_env["cache"]).run()
    state_dict = get_builtin("digits-cnn").load().state_dict()
    data = safetensors.torch.save({k: v.contiguous() for k, v in state_dict.items()})
    at.file_uploader(key="upload.weights").set_value(
        ("cut.safetensors", data[:-500], "application/octet-stream")
    )
    at.run()
    at.button(key="upload.weights.load").click().run()
    assert not at.exception, at.exception
    assert len(at.error) == 1
    assert "Could not use cut.safetensors: cut.safetensors" in at.error[0].value
    assert str(app_env["cache"]) not in at.error[0].value
    assert "source" not in _run_json(app_env["cache"], run)
    assert not list((app_env["cache"] / "runs" / run / "uploads").glob("*.safetensors"))
    assert _layers(at).shape[0] == 4  # the page still works

    at.file_uploader(key="upload.weights").set_value(
        ("digits.safetensors", data, "application/octet-stream")
    )
    at.run()
    at.button(key="upload.weights.load").click().run()
    assert not at.exception, at.exception
    assert not at.error
    source = _run_json(app_env["cache"], run)["source"]
    assert source["model"] == "digits-cnn" and source["weights"].endswith("digits.safetensors")
    assert any("Loaded digits.safetensors" in s.value for s in at.success)
    assert any("uploaded weights" in m.value for m in at.markdown)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Float accuracy"] == f"{get_builtin('digits-cnn').card()['float']:.2%}"


def test_a_bad_zip_shows_an_error(app_env: dict[str, Path]) -> None:
    run = "0000000000a3"
    at = _app(run, cache=app_env["cache"]).run()
    at.file_uploader(key="upload.hf").set_value(("model.zip", b"PK not a zip", "application/zip"))
    at.run()
    at.button(key="upload.hf.load").click().run()
    assert not at.exception, at.exception
    assert len(at.error) == 1 and "not a readable zip" in at.error[0].value
    assert "source" not in _run_json(app_env["cache"], run)


def test_choosing_another_builtin_model(app_env: dict[str, Path]) -> None:
    run = "0000000000a4"
    at = _app(run, cache=app_env["cache"]).run()
    at.selectbox(key="model.builtin").select("mobile-cnn").run()
    assert not at.exception, at.exception
    assert _run_json(app_env["cache"], run)["source"] == {"model": "mobile-cnn"}
    layers = _layers(at)
    assert layers["parameters"].sum() == get_builtin("mobile-cnn").params()
    assert "BatchNorm2d" in set(layers["type"]) and not layers["quantizable"].all()
    assert state.job(run) is None  # only the default model starts a sweep by itself
    assert any("No results for this model yet" in i.value for i in at.info)


_WITHOUT_TORCH = """
import json, sys
from importlib.abc import MetaPathFinder
from streamlit.testing.v1 import AppTest

refused = []

class Refuse(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "pandas"):
            refused.append(name)
            raise ImportError(f"{name} is refused")

sys.meta_path.insert(0, Refuse())
at = AppTest.from_file(sys.argv[1], default_timeout=60)
at.query_params["run"] = sys.argv[2]
at.run()
try:
    box = at.selectbox(key="model.builtin")
    picker = [box.label, box.value, list(box.options), box.disabled]
except KeyError:  # not drawn
    picker = None
print(json.dumps({
    "title": [t.value for t in at.title],
    "picker": picker,
    "errors": len(at.exception),
    "refused": refused,
}))
"""


def test_the_picker_is_drawn_before_torch_is_imported(app_env: dict[str, Path]) -> None:
    """The first page is interactive while torch loads (issue 5: within 5 s of `streamlit run`
    on 2 cores): Streamlit sends each element as it is drawn, and nothing above the picker
    imports torch or pandas. In a fresh interpreter that refuses both, the page still draws its
    title and picker, with the default model chosen, before it stops at the first import."""
    run = "0000000000a5"
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, PAGE, run],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["title"] == ["Model"]
    assert seen["picker"] == ["Built-in model", DEFAULT_MODEL, list(BUILTIN_NAMES), False]
    assert seen["errors"] == 1 and len(seen["refused"]) == 1
