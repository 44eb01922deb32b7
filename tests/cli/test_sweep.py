"""The sweep-layer commands: `explorer sweep`, `sensitivity`, `search` and `export`.

Each command runs in process through `explorer.cli.main` on the built-in digits-cnn (timings cut to
3 repeats, bootstrap to 200 resamples, one thread: the machine is shared); one test runs the
console script to hold the stdout/stderr contract end to end.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from explorer import cli
from explorer.models.registry import get_builtin
from explorer.nn.convert import quant_modules, quantize_model
from explorer.quant.config import Plan
from explorer.sweep import runner
from explorer.sweep.default import DEFAULT_SPEC
from explorer.sweep.export import load_export
from explorer.sweep.store import ResultStore

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ("--repeats", "3", "--n-boot", "200", "--threads", "1")
SWEEP = ("sweep", "--model", "digits-cnn", "--bits", "8,4", "--granularity", "channel,group32")
ROW_KEYS = {
    "config",
    "size_bytes",
    "bits_per_weight",
    "latency_ms",
    "latency_kind",
    "metrics",
    "metrics_ci",
    "pareto",
    "pareto_latency",
}
FLAT_KEYS = {"weight_bits", "act_bits", "granularity", "method", "algorithm"}


def run_cli(*args: str) -> tuple[int, dict[str, Any] | None, str]:
    """(exit status, the JSON document on the last stdout line or None, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    lines = out.getvalue().strip().splitlines()
    doc = json.loads(lines[-1]) if code == 0 and "--json" in args and lines else None
    return code, doc, err.getvalue()


def run_json(*args: str) -> dict[str, Any]:
    """The JSON document of a command run with ``--json`` that must succeed."""
    code, doc, err = run_cli(*args, "--json")
    assert code == 0, err
    assert doc is not None
    return doc


def search(store: Path, *options: str) -> dict[str, Any]:
    """`explorer search` on digits-cnn among three settings, measured on 64 samples."""
    return run_json(
        "search",
        "--model",
        "digits-cnn",
        "--settings",
        "W8 channel,W4 g32,W2 g32",
        "--samples",
        "64",
        *options,
        *FAST,
        "--store",
        str(store),
    )


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store") / "results.sqlite"


@pytest.fixture(scope="module")
def swept(store: Path) -> dict[str, Any]:
    return run_json(*SWEEP, *FAST, "--store", str(store))


# --- sweep --------------------------------------------------------------------------------------


def test_sweep_json_contract(swept: dict[str, Any], store: Path) -> None:
    assert swept["model"] == "digits-cnn"
    assert swept["store"] == str(store)
    assert swept["failed"] == [] and swept["skipped"] == []
    rows = swept["rows"]
    labels = [r["label"] for r in rows]
    assert labels[:2] == ["fp32", "bf16"] and len(rows) == 6
    assert swept["cached"] + swept["evaluated"] == len(rows)
    for name in ("fp32", "bf16"):
        base = swept["baseline"][name]
        assert {"accuracy", "sqnr_db", "size_bytes", "latency_ms"} <= base.keys()
    assert swept["baseline"]["bf16"]["size_bytes"] < swept["baseline"]["fp32"]["size_bytes"]
    for r in rows:
        assert ROW_KEYS | FLAT_KEYS <= r.keys(), r["label"]
        assert r["latency_kind"] in {"measured", "simulated"}
        assert isinstance(r["pareto"], bool) and isinstance(r["pareto_latency"], bool)
        assert 0.0 <= r["metrics"]["accuracy"] <= 1.0
        assert Plan.from_dict(r["config"])  # the canonical plan, loadable as is
    uniform = [r for r in rows if r["kind"] == "uniform"]
    assert {(r["weight_bits"], r["granularity"]) for r in uniform} == {
        (8, "channel"),
        (8, "group32"),
        (4, "channel"),
        (4, "group32"),
    }
    assert all(r["method"] == "ptq" and r["algorithm"] == "rtn" for r in uniform)
    assert all(r["act_bits"] is None for r in rows)
    assert any(r["pareto"] for r in rows) and any(r["pareto_latency"] for r in rows)
    for r in uniform:  # the first conv reduces over 16 inputs: no group of 32 fits it
        if r["granularity"] == "group32":
            assert "features.1" in r["fallbacks"], r["fallbacks"]
        else:
            assert r["fallbacks"] == {}


def test_sweep_again_reads_every_row_from_the_store(
    swept: dict[str, Any], store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cli.STORE_ENV, str(store))  # no --store: $EXPLORER_STORE is the default
    again = run_json(*SWEEP, *FAST)
    assert again["store"] == str(store)
    assert again["cached"] == len(swept["rows"]) and again["evaluated"] == 0
    assert [r["key"] for r in again["rows"]] == [r["key"] for r in swept["rows"]]
    assert [r["pareto"] for r in again["rows"]] == [r["pareto"] for r in swept["rows"]]


def test_text_table_marks_simulated_latency_and_front(swept: dict[str, Any], store: Path) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main([*SWEEP, *FAST, "--store", str(store)])
    table = out.getvalue()
    assert code == 0
    assert "accuracy" in table and "W4 group32" in table
    if any(r["latency_kind"] == "simulated" for r in swept["rows"]):
        assert "(sim)" in table
    assert any(line.startswith("* ") for line in table.splitlines())


def test_calibration_samples_are_part_of_the_key(tmp_path: Path) -> None:
    static = (
        "sweep",
        "--model",
        "digits-cnn",
        "--bits",
        "8",
        "--granularity",
        "channel",
        "--act-bits",
        "8",
        "--act-mode",
        "static",
        "--act-granularity",
        "tensor",
        *FAST,
        "--store",
        str(tmp_path / "r.sqlite"),
    )
    first = run_json(*static, "--calibration-samples", "32")
    assert first["evaluated"] == 3
    assert [r["act_bits"] for r in first["rows"]] == [None, None, 8]
    assert first["rows"][2]["act_mode"] == "static"
    same = run_json(*static, "--calibration-samples", "32")
    assert same["evaluated"] == 0 and same["cached"] == 3
    assert run_json(*static, "--calibration-samples", "64")["evaluated"] > 0


def test_interrupted_sweep_keeps_finished_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = runner.run_sweep

    def one_then_ctrl_c(*args: Any, **kwargs: Any) -> Iterator[runner.SweepEvent]:
        events = real(*args, **kwargs)
        yield next(events)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_sweep", one_then_ctrl_c)
    path = tmp_path / "r.sqlite"
    args = ("sweep", "--model", "digits-cnn", "--bits", "8", "--granularity", "channel")
    code, _, err = run_cli(*args, *FAST, "--store", str(path), "--json")
    assert code == 130
    assert "interrupted: 1 rows stored; run the same command again to resume" in err
    assert "Traceback" not in err
    with ResultStore(path) as kept:
        assert len(kept.rows()) == 1


def test_spec_options() -> None:
    parser = cli.build_parser()
    default = cli.build_spec(parser.parse_args(["sweep"]))
    assert default == cli.build_spec(parser.parse_args(["sweep", "--default"]))
    assert default == DEFAULT_SPEC  # the default sweep's post-training grid
    spec = cli.build_spec(
        parser.parse_args(
            ["sweep", "--bits", "4", "--act-bits", "8,none", "--symmetric", "true,false"]
            + ["--method", "ptq,qat", "--qat-steps", "5", "--layers", "features.*,classifier.2"]
        )
    )
    assert spec.weight_bits == (4,) and spec.act_bits == (8, None)
    assert spec.symmetric == (True, False) and spec.method == ("ptq", "qat")
    assert spec.qat_steps == 5 and spec.layers == ("features.*", "classifier.2")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3.5MB", 3_500_000), ("64KiB", 65_536), ("2MiB", 2 * 1024**2), ("1200", 1200), ("10 B", 10)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert cli.parse_size(text) == expected


def test_parse_latency() -> None:
    assert cli.parse_latency("2.5ms") == 2.5 and cli.parse_latency("2.5") == 2.5
    assert cli.parse_latency("0.5s") == 500.0
    with pytest.raises(cli.ExplorerError, match="3 parsecs"):
        cli.parse_latency("3 parsecs")


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("sweep", "--bits", "9"), ("explorer sweep: error:", "weight bits", "got 9")),
        (("sweep", "--bits", "8,x"), ("--bits takes comma-separated integers",)),
        (("sweep", "--granularity", "group7x"), ("'group7x'", "group<N>")),
        (("sweep", "--model", "no-such-model"), ("'no-such-model'", "built-in model")),
        (("sweep", "--symmetric", "maybe"), ("--symmetric", "'maybe'")),
        (("sweep", "--repeats", "0"), ("--repeats", "positive")),
        (
            ("search", "--budget-size", "3.5MB", "--budget-latency", "2ms"),
            ("one budget kind", "--budget-size and --budget-latency"),
        ),
        (("search", "--budget-size", "3.5 furlongs"), ("size '3.5 furlongs'",)),
        (("search", "--points", "1"), ("--points must be at least 2",)),
        (("sensitivity", "--settings", "W4 g7x"), ("g7x",)),
        (("export", "--bits", "8,4", "--out", "x"), ("one value per option",)),
        (("export", "--out", "x"), ("give --plan",)),
    ],
)
def test_errors_are_one_line_exit_2(
    args: tuple[str, ...], fragments: tuple[str, ...], tmp_path: Path
) -> None:
    store = () if args[0] in ("sensitivity", "export") else ("--store", str(tmp_path / "r.sqlite"))
    code, _, err = run_cli(*args, *store, "--json")
    assert_one_line_error(code, err, *fragments)


def test_foreign_store_file_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are my notes\n")
    code, _, err = run_cli("sweep", "--bits", "8", "--store", str(path), "--json")
    assert_one_line_error(code, err, str(path), "not a results store")
    assert path.read_text() == "these are my notes\n"


def test_export_plan_that_is_not_json(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text("W4 g32, please\n")
    code, _, err = run_cli("export", "--plan", str(plan), "--out", str(tmp_path / "x"), "--json")
    assert_one_line_error(code, err, str(plan), "not a JSON file")
    assert not (tmp_path / "x").exists()


# --- sensitivity and search ---------------------------------------------------------------------


def test_sensitivity_table(tmp_path: Path) -> None:
    doc = run_json(
        "sensitivity",
        "--model",
        "digits-cnn",
        "--settings",
        "W8 channel,W2 g32",
        "--samples",
        "64",
        "--no-latency",
        "--threads",
        "1",
    )
    assert doc["model"] == "digits-cnn" and doc["metric"] == "accuracy"
    assert doc["settings"] == ["W8 channel", "W2 g32"]
    layers = doc["layers"]
    cells = {(c["layer"], c["setting"]): c for c in doc["cells"]}
    assert len(doc["cells"]) == len(cells) == 2 * len(layers)
    assert cells[("features.1", "W2 g32")]["applicable"]  # 16 inputs: no group of 32
    drops = {"W8 channel": 0.0, "W2 g32": 0.0}
    both = 0
    for layer in layers:
        w8, w2 = cells[(layer, "W8 channel")], cells[(layer, "W2 g32")]
        if w8["applicable"] or w2["applicable"]:
            continue
        both += 1
        assert w2["kl"] >= w8["kl"] and w2["weight_sqnr_db"] < w8["weight_sqnr_db"], layer
        assert abs(w8["metric_drop"]) <= 1 / 64  # at most one of 64 samples flips at W8
        drops["W8 channel"] += w8["metric_drop"]
        drops["W2 g32"] += w2["metric_drop"]
    # Per layer, a 2-bit layer can gain a sample on 64 (noise); summed over layers it loses.
    assert both >= 3 and drops["W2 g32"] > drops["W8 channel"]


def test_search_verifies_mixed_plans(swept: dict[str, Any], store: Path) -> None:
    doc = search(store, "--points", "3")
    assert doc["model"] == "digits-cnn" and doc["sensitivity_seconds"] > 0
    assert doc["allocations"]
    assert all({"choice", "size_bytes", "predicted_damage"} <= a.keys() for a in doc["allocations"])
    mixed = [r for r in doc["rows"] if r["kind"] == "mixed"]
    assert mixed
    for r in mixed:
        assert isinstance(r["predicted_damage"], float)
        assert r["size_bytes"] > 0 and "accuracy" in r["metrics"]
        assert r["weight_bits"] is None and r["granularity"] is None  # flat fields: mixed
    assert {"fp32", "bf16"} <= {r["label"] for r in doc["rows"]}
    assert all(ROW_KEYS <= r.keys() for r in doc["rows"])
    labels = {r["label"] for r in doc["rows"]}
    assert set(doc["fronts"]["uniform"]) <= labels and doc["fronts"]["all"]
    assert set(doc["fronts"]["all"]) == {r["label"] for r in doc["rows"] if r["pareto"]}
    assert doc["cached"] >= 2  # the baselines and uniform W8 channel from the sweep


def test_search_size_budgets(swept: dict[str, Any], store: Path) -> None:
    doc = search(store, "--budget-size", "30KB,20KB", "--no-uniform")
    sizes = [a["size_bytes"] for a in doc["allocations"]]
    assert len(sizes) == 2 and sizes[0] <= 30_000 and sizes[1] <= 20_000
    assert {r["kind"] for r in doc["rows"]} == {"baseline", "mixed"}


# --- export -------------------------------------------------------------------------------------


def test_export_reloads_bit_for_bit(tmp_path: Path) -> None:
    out = tmp_path / "x"
    doc = run_json(
        "export",
        "--model",
        "digits-cnn",
        "--bits",
        "8",
        "--granularity",
        "channel",
        "--out",
        str(out),
        "--threads",
        "1",
    )
    assert doc["folder"] == str(out) and doc["layers"] == 4 and doc["method"] == "ptq"
    for name in ("plan.json", "model.safetensors", "reapply.py"):
        assert (out / name).is_file()
    assert doc["weights"] == str(out / "model.safetensors")
    assert doc["size_bytes"] > 0

    spec = get_builtin("digits-cnn")
    model = spec.load()
    images = spec.load_split("eval")[0][:128]
    loaded = load_export(model, out)
    fresh = quantize_model(model, Plan.from_dict(doc["config"]))
    kernels = {n: m.kernel_name for n, m in quant_modules(loaded).items()}
    for name, module in quant_modules(fresh).items():
        module.use_kernel(kernels[name])
    with torch.no_grad():
        assert torch.equal(loaded(images), fresh(images))


def test_export_plan_from_a_sweep_row(swept: dict[str, Any], tmp_path: Path) -> None:
    row = next(r for r in swept["rows"] if r["label"].startswith("W4 group32"))
    path = tmp_path / "row.json"
    path.write_text(json.dumps(row))
    out = tmp_path / "x"
    doc = run_json("export", "--plan", str(path), "--out", str(out))
    assert doc["config"] == row["config"]
    assert json.loads((out / "plan.json").read_text())["plan"] == row["config"]
    code, _, err = run_cli("export", "--plan", str(path), "--out", str(out), "--json")
    assert_one_line_error(code, err, "--overwrite")


def test_export_qat(tmp_path: Path) -> None:
    out = tmp_path / "qat"
    doc = run_json(
        "export",
        "--model",
        "digits-cnn",
        "--bits",
        "4",
        "--granularity",
        "channel",
        "--method",
        "qat",
        "--qat-steps",
        "3",
        "--out",
        str(out),
        "--threads",
        "1",
    )
    assert doc["method"] == "qat"
    assert json.loads((out / "plan.json").read_text())["method"] == "qat"
    spec = get_builtin("digits-cnn")
    loaded = load_export(spec.load(), out)
    with torch.no_grad():
        assert loaded(spec.load_split("eval")[0][:8]).shape == (8, 10)


# --- the command itself -------------------------------------------------------------------------


def test_help_lists_the_sweep_commands() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["--help"]) == 0
    for command in ("sweep", "sensitivity", "search", "export"):
        assert command in out.getvalue()


def test_console_script_contract(swept: dict[str, Any], store: Path) -> None:
    script = shutil.which("explorer", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "explorer.cli"]
    done = subprocess.run(
        [*command, *SWEEP, *FAST, "--store", str(store), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    assert doc["cached"] == len(swept["rows"]) and doc["evaluated"] == 0
    assert "Traceback" not in done.stderr and "6/6" in done.stderr  # the progress bar


def test_eval_samples_is_a_budget_in_the_key(tmp_path: Path) -> None:
    args = (
        "sweep",
        "--model",
        "digits-cnn",
        "--bits",
        "8",
        "--granularity",
        "channel",
        *FAST,
        "--store",
        str(tmp_path / "r.sqlite"),
    )
    small = run_json(*args, "--eval-samples", "64")
    assert small["settings"]["eval_budget"] == 64
    assert {r["n_samples"] for r in small["rows"]} == {64}
    assert run_json(*args, "--eval-samples", "64")["evaluated"] == 0
    assert run_json(*args, "--eval-samples", "96")["evaluated"] == len(small["rows"])
