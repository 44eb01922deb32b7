"""Two targets in a real browser: a sweep of digits-cnn with ``--target native,onnxruntime`` (W8
per channel with static per-tensor A8, the plan ORT fuses into QLinearConv / QGemm) stored in
the server's results store, then the Pareto page draws each configuration once per target, as
series of their own, and the "Deployed vs explorer" tab pairs them.

The sweep runs through the CLI (the Sweep page has no target choice), in this process, into the
store of this module's own server (``own_app_server``).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from explorer import cli
from explorer.sweep.store import ResultStore

pytestmark = [pytest.mark.browser, pytest.mark.slow]

AppServer = Any  # tests/browser/conftest.py's AppServer (conftest modules are not imported)
RUN = "7a59e7a59e7a"
SERIES = [
    "fp32/bf16 baseline",
    "fp32/bf16 baseline @ ONNX Runtime",
    "PTQ · RTN",
    "PTQ · RTN @ ONNX Runtime",
]
TRACES = """el => (el.data || []).filter(t => t.meta === 'series')
    .map(t => ({name: t.name, keys: t.customdata, x: t.x}))"""


@pytest.fixture(scope="module")
def app_server(own_app_server: AppServer) -> AppServer:
    return own_app_server


@pytest.fixture(scope="module")
def swept(app_server: AppServer) -> dict[str, dict[str, Any]]:
    args = ["sweep", "--model", "digits-cnn", "--bits", "8", "--act-bits", "8"]
    args += ["--act-mode", "static", "--act-granularity", "tensor"]
    args += ["--target", "native,onnxruntime", "--store", str(app_server.store)]
    args += ["--repeats", "2", "--n-boot", "100", "--calibration-samples", "32", "--json"]
    assert cli.main(args) == 0
    with ResultStore(app_server.store) as store:
        rows = {r["key"]: r for r in store.rows()}
    run_dir = app_server.cache / "runs" / RUN
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({"source": {"model": "digits-cnn"}}))
    return rows


def idle(page: Any, timeout: float = 60_000) -> None:
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(
        timeout=timeout
    )


def test_pareto_page_draws_both_targets(
    page: Any, app_server: AppServer, swept: dict[str, dict[str, Any]]
) -> None:
    by_target = {(r["label"], r["target"]) for r in swept.values()}
    label = "W8 channel sym A8 tensor static ptq"
    assert {(label, "native"), (label, "onnxruntime"), ("fp32", "onnxruntime")} <= by_target
    ort_row = next(r for r in swept.values() if (r["label"], r["target"]) == (label, "onnxruntime"))
    assert set(ort_row["kernels"].values()) == {"QLinearConv", "QGemm"}

    page.goto(f"{app_server.url}/pareto?run={RUN}")
    page.get_by_role("heading", level=1, name="Pareto fronts").wait_for(timeout=60_000)
    idle(page)
    plot = page.locator(".st-key-pareto-size .js-plotly-plot")
    plot.locator(".scatterlayer .point").first.wait_for(timeout=60_000)
    traces = {t["name"]: t for t in plot.evaluate(TRACES)}
    assert list(traces) == SERIES
    for name in SERIES:
        for key in traces[name]["keys"]:
            assert (swept[key]["target"] == "onnxruntime") == name.endswith("@ ONNX Runtime")
    # the same configuration on both targets: the same size
    assert traces["PTQ · RTN"]["x"] == traces["PTQ · RTN @ ONNX Runtime"]["x"]
    legend = plot.locator(".legend .legendtext").all_text_contents()
    assert set(SERIES) <= set(legend)

    page.get_by_role("tab", name="Deployed vs explorer").click()
    deployed = page.locator(".st-key-pareto-deployed .js-plotly-plot")
    deployed.locator(".scatterlayer .point").first.wait_for()
    (points,) = deployed.evaluate(TRACES)
    assert points["name"] == "ONNX Runtime"
    assert {swept[k]["label"] for k in points["keys"]} == {"fp32", label}
