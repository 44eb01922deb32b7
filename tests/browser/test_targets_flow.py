"""Two targets in a real browser, on both built-in CNNs (issue 13): a sweep of digits-cnn and
one of mobile-cnn with ``--target native,onnxruntime`` (W8 per channel with static per-tensor A8,
the plan ORT fuses into QLinearConv / QGemm) stored in the server's results store, then the
Pareto page draws each configuration once per target, as series of their own, and the "Deployed
vs explorer" tab pairs them.

The sweeps run through the CLI, in this process, into the store of this module's own server
(``own_app_server``), on one thread: the tests assert no latency, and on a loaded 2-core runner
two threads spin (mobile-cnn's sweep: 5.6 s of CPU on one thread, 62 s on two). mobile-cnn is
scored on 256 of its 2,000 evaluation images (``--eval-samples``), enough for its accuracy to
be a point on the chart.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from explorer import cli
from explorer.sweep.store import ResultStore

pytestmark = [pytest.mark.browser, pytest.mark.slow]

AppServer = Any  # tests/browser/conftest.py's AppServer (conftest modules are not imported)
RUNS = {"digits-cnn": "7a59e7a59e7a", "mobile-cnn": "7a59e7a59e7b"}
EXTRA_ARGS = {"digits-cnn": [], "mobile-cnn": ["--eval-samples", "256"]}
LABEL = "W8 channel sym A8 tensor static ptq"
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


@pytest.fixture(scope="module", params=list(RUNS))
def swept(request: pytest.FixtureRequest, app_server: AppServer) -> dict[str, Any]:
    """The model's rows on both targets, by key, and the run whose model it is."""
    model = request.param
    args = ["sweep", "--model", model, "--bits", "8", "--act-bits", "8"]
    args += ["--act-mode", "static", "--act-granularity", "tensor"]
    args += ["--target", "native,onnxruntime", "--store", str(app_server.store)]
    args += ["--repeats", "2", "--n-boot", "100", "--calibration-samples", "32"]
    args += ["--threads", "1", "--json", *EXTRA_ARGS[model]]
    threads = torch.get_num_threads()
    try:
        assert cli.main(args) == 0
    finally:
        torch.set_num_threads(threads)  # --threads sets this process's count
    with ResultStore(app_server.store) as store:
        rows = {r["key"]: r for r in store.rows() if r["model"] == model}
    run_dir = app_server.cache / "runs" / RUNS[model]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({"source": {"model": model}}))
    return {"model": model, "run": RUNS[model], "rows": rows}


def idle(page: Any, timeout: float = 60_000) -> None:
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(
        timeout=timeout
    )


def test_pareto_page_draws_both_targets(
    page: Any, app_server: AppServer, swept: dict[str, Any]
) -> None:
    rows = swept["rows"]
    by_target = {(r["label"], r["target"]) for r in rows.values()}
    assert {(LABEL, "native"), (LABEL, "onnxruntime"), ("fp32", "onnxruntime")} <= by_target
    ort_row = next(r for r in rows.values() if (r["label"], r["target"]) == (LABEL, "onnxruntime"))
    # every layer runs as a fused integer op (mobile-cnn's last convolution fuses with its
    # pooling), none as dequantize + float
    ops = {op for kernels in ort_row["kernels"].values() for op in kernels.split(" / ")}
    assert {"QLinearConv", "QGemm"} <= ops <= {"QLinearConv", "QGemm", "QLinearGlobalAveragePool"}

    page.goto(f"{app_server.url}/pareto?run={swept['run']}")
    page.get_by_role("heading", level=1, name="Pareto fronts").wait_for(timeout=60_000)
    idle(page)
    plot = page.locator(".st-key-pareto-size .js-plotly-plot")
    plot.locator(".scatterlayer .point").first.wait_for(timeout=60_000)
    traces = {t["name"]: t for t in plot.evaluate(TRACES)}
    assert list(traces) == SERIES
    for name in SERIES:
        for key in traces[name]["keys"]:
            assert (rows[key]["target"] == "onnxruntime") == name.endswith("@ ONNX Runtime")
    # the same configuration on both targets: the same size
    assert traces["PTQ · RTN"]["x"] == traces["PTQ · RTN @ ONNX Runtime"]["x"]
    legend = plot.locator(".legend .legendtext").all_text_contents()
    assert set(SERIES) <= set(legend)

    page.get_by_role("tab", name="Deployed vs explorer").click()
    deployed = page.locator(".st-key-pareto-deployed .js-plotly-plot")
    deployed.locator(".scatterlayer .point").first.wait_for()
    (points,) = deployed.evaluate(TRACES)
    assert points["name"] == "ONNX Runtime"
    assert {rows[k]["label"] for k in points["keys"]} == {"fp32", LABEL}
