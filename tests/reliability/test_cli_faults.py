"""Faults in a sweep's configuration, machine and run (issue 18): every row failing, group sizes
that cannot apply, thread counts beyond the machine. The table is in this package's docstring.

Rows are not measured here: where a sweep has to get as far as evaluating, `evaluate_entry` is
replaced by a fault (or a cheap stand-in row), so only the digits-cnn context is opened (~2 s).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from explorer.errors import ExplorerError
from explorer.machine import usable_cpus
from explorer.sweep import runner
from explorer.sweep.context import ModelContext, ModelSource, open_context
from explorer.sweep.space import PlanEntry, SweepSpec, SweepSpecError, expand
from explorer.sweep.store import ResultStore

from .cli_driver import (
    FAST,
    REPO,
    assert_one_line_error,
    count_evaluations,
    run_cli,
    stand_in_row,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> ModelContext:
    return open_context(ModelSource(model="digits-cnn"))


@pytest.fixture
def evaluations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return count_evaluations(monkeypatch)


# --- every row fails ------------------------------------------------------------------------


def test_a_sweep_whose_every_row_fails_exits_2_with_the_reasons_on_stderr(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def fail(ctx: ModelContext, entry: PlanEntry, *args: Any) -> dict[str, Any]:
        raise ExplorerError(f"label 12 of evaluation row 3 is out of range for {entry.label}")

    monkeypatch.setattr(runner, "evaluate_entry", fail)
    store = tmp_path / "r.sqlite"
    sweep = ("sweep", "--model", "digits-cnn", "--bits", "8", "--granularity", "channel")
    for json_flag in ((), ("--json",)):
        code, out, err = run_cli(*sweep, *FAST, "--store", str(store), *json_flag)
        assert code == 2, err
        assert out == ""  # no table, no JSON document: nothing was evaluated
        assert "Traceback" not in err
        ours = [line for line in err.splitlines() if line.startswith("explorer sweep:")]
        assert ours[:3] == [
            f"explorer sweep: failed {label}: label 12 of evaluation row 3 is out of range "
            f"for {label}"
            for label in ("fp32", "bf16", "W8 channel sym ptq")
        ]
        assert ours[3] == (
            "explorer sweep: error: none of the 3 configurations could be evaluated, baselines "
            "included (first, fp32: label 12 of evaluation row 3 is out of range for fp32)"
        )
        assert err.rstrip().splitlines()[-1] == ours[3]
    with ResultStore(store) as opened:
        assert opened.keys() == set()


def test_failed_rows_of_a_sweep_that_shows_others_go_to_stderr_and_exit_0(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def fail_quantized(ctx: ModelContext, entry: PlanEntry, *args: Any) -> dict[str, Any]:
        if entry.kind != "baseline":
            raise ExplorerError("no kernel for this layer")
        return stand_in_row(ctx, entry, *args)

    monkeypatch.setattr(runner, "evaluate_entry", fail_quantized)
    sweep = ("sweep", "--model", "digits-cnn", "--bits", "8", "--granularity", "channel")
    store = ("--store", str(tmp_path / "r.sqlite"))
    code, out, err = run_cli(*sweep, *FAST, *store)
    assert code == 0, err
    assert "fp32" in out and not any(line.startswith("failed") for line in out.splitlines())
    assert "explorer sweep: failed W8 channel sym ptq: no kernel for this layer" in err
    code, out, err = run_cli(*sweep, *FAST, *store, "--json")
    assert code == 0, err
    doc = json.loads(out.strip().splitlines()[-1])
    assert [r["label"] for r in doc["rows"]] == ["fp32", "bf16"]
    assert doc["failed"] == [{"config": "W8 channel sym ptq", "reason": "no kernel for this layer"}]
    assert "explorer sweep: failed W8 channel sym ptq: no kernel for this layer" in err


def test_run_sweep_counts_what_it_evaluated_cached_and_failed(
    digits: ModelContext, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def fail_quantized(ctx: ModelContext, entry: PlanEntry, *args: Any) -> dict[str, Any]:
        if entry.kind != "baseline":
            raise ExplorerError("no kernel for this layer")
        return stand_in_row(ctx, entry, *args)

    monkeypatch.setattr(runner, "evaluate_entry", fail_quantized)
    entries, _ = expand(SweepSpec(weight_bits=(8, 4)), digits.model)
    with ResultStore(tmp_path / "r.sqlite") as store:
        first = list(runner.run_sweep(digits, entries, store))
        again = list(runner.run_sweep(digits, entries, store))
    assert first[-1].kind == "done"
    assert first[-1].extra == {"evaluated": 2, "cached": 0, "failed": 2}
    assert again[-1].extra == {"evaluated": 0, "cached": 2, "failed": 2}


# --- group sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["group0", "group1", "group-32", "groupx", "g"])
def test_every_malformed_group_size_is_the_same_one_line_error(
    value: str, evaluations: list[str], tmp_path: Path
) -> None:
    store = tmp_path / "r.sqlite"
    code, out, err = run_cli(
        "sweep", "--model", "digits-cnn", "--bits", "4", "--granularity", value,
        *FAST, "--store", str(store),
    )  # fmt: skip
    assert_one_line_error(
        code,
        out,
        err,
        f"explorer sweep: error: granularity '{value}' is not valid: give tensor, channel or "
        "group<N> with a group size N of at least 2 (e.g. group32)",
    )
    assert evaluations == [] and not store.exists()  # refused before anything ran


def test_a_group_size_no_layer_can_take_is_refused_before_any_row_runs(
    evaluations: list[str], tmp_path: Path
) -> None:
    code, out, err = run_cli(
        "sweep", "--model", "digits-cnn", "--bits", "4", "--granularity", "channel,group7",
        *FAST, "--store", str(tmp_path / "r.sqlite"),
    )  # fmt: skip
    assert_one_line_error(
        code,
        out,
        err,
        "granularity 'group7' cannot apply: group size 7 does not divide in_features 16 of "
        "layer `features.1`, nor that of the 3 other layer(s) it applies to",
    )
    assert evaluations == []
    # export reads the same spec: the same refusal
    code, out, err = run_cli(
        "export", "--model", "digits-cnn", "--bits", "4", "--granularity", "group7",
        "--out", str(tmp_path / "export"),
    )  # fmt: skip
    assert_one_line_error(code, out, err, "group size 7 does not divide in_features 16")
    assert not (tmp_path / "export").exists()


def test_a_fallback_for_some_layers_is_in_the_label(digits: ModelContext) -> None:
    # digits-cnn: features.1 has 16 inputs, the other layers 128, 256 and 512
    for fallback, instead in (("channel", "per-channel"), ("float", "fp32")):
        entries, skipped = expand(
            SweepSpec(weight_bits=(4,), granularity=("group32", "group16"), fallback=fallback),
            digits.model,
        )
        assert [e.label for e in entries[2:]] == [
            f"W4 group32 sym ptq (features.1 {instead})",
            "W4 group16 sym ptq",
        ]
        assert skipped == []
    on_some = SweepSpec(weight_bits=(4,), granularity=("group32",), layers=("features.*",))
    (entry,) = expand(on_some, digits.model)[0][2:]
    assert entry.label == "W4 group32 sym ptq on features.* (features.1 per-channel)"
    refused = {
        "fallback policy 'error'": SweepSpec(
            weight_bits=(4,), granularity=("group32",), fallback="error"
        ),
        "named explicitly": SweepSpec(
            weight_bits=(4,), granularity=("group32",), layers=("features.3", "features.1")
        ),
    }
    for why, spec in refused.items():
        with pytest.raises(SweepSpecError) as info:
            expand(spec, digits.model)
        assert str(info.value) == (
            "granularity 'group32' cannot apply: group size 32 does not divide in_features 16 "
            f"of layer `features.1` ({why}); choose a group size that divides it"
        )


def test_a_sweep_labels_rows_with_their_fallback_even_rows_stored_before(
    evaluations: list[str], tmp_path: Path
) -> None:
    path = tmp_path / "r.sqlite"
    sweep = ("sweep", "--model", "digits-cnn", "--bits", "4", "--granularity", "group32")
    label = "W4 group32 sym ptq (features.1 per-channel)"
    code, out, err = run_cli(*sweep, *FAST, "--store", str(path), "--json")
    assert code == 0, err
    (row,) = json.loads(out.splitlines()[-1])["rows"][2:]
    assert row["label"] == label and row["granularity"] == "group32"
    with ResultStore(path) as store:  # as a store written before labels named fallbacks
        store.put(row["key"], {**store.get(row["key"]), "label": "W4 group32 sym ptq"})
    code, out, err = run_cli(*sweep, *FAST, "--store", str(path), "--json")
    doc = json.loads(out.splitlines()[-1])
    assert (doc["cached"], [r["label"] for r in doc["rows"][2:]]) == (3, [label])


# --- threads ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("sweep", "--model", "digits-cnn", "--threads", "100000"),  # segfaulted silently
        ("bench", "--threads", "20000"),  # libgomp: Thread creation failed
    ],
)
def test_thread_counts_beyond_the_machine_are_refused_in_one_line(args: tuple[str, ...]) -> None:
    # a subprocess: before the fix the first of these killed the process with SIGSEGV
    done = subprocess.run(
        [sys.executable, "-m", "explorer.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    value = args[-1]
    cpus = usable_cpus()
    assert_one_line_error(
        done.returncode,
        done.stdout,
        done.stderr,
        f"explorer {args[0]}: error: argument --threads: {value} is more than the {cpus} CPU(s) "
        f"this process may use; give 1 to {cpus}",
    )


def test_a_thread_count_within_the_machine_is_accepted() -> None:
    from explorer.cli.options import thread_count

    assert thread_count("1") == 1
    assert thread_count(str(usable_cpus())) == usable_cpus()
