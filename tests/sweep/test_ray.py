"""The Ray executor against the local one: same rows (but for timings), resume, failures.

CI installs the ``ray`` extra, so these run there; a machine without Ray skips them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from explorer.errors import ExplorerError
from explorer.sweep.context import ModelContext, ModelSource, open_context
from explorer.sweep.executors import RAY_MISSING, RayExecutor, make_executor
from explorer.sweep.runner import LocalExecutor, RunSettings, SweepEvent, run_sweep
from explorer.sweep.space import PlanEntry, SweepSpec, expand
from explorer.sweep.store import ResultStore

SETTINGS = RunSettings(repeats=5, n_boot=200)
NO_USAGE_STATS = "RAY_USAGE_STATS_ENABLED"
ACTOR_THREADS = 1  # num_cpus_per_actor=1: each actor times with one thread


@pytest.fixture(scope="module")
def ctx() -> ModelContext:
    return open_context(ModelSource(model="digits-cnn"))


@pytest.fixture(scope="module")
def entries(ctx: ModelContext) -> list[PlanEntry]:
    found, skipped = expand(SweepSpec(weight_bits=(8, 4), granularity=("channel",)), ctx.model)
    assert not skipped and len(found) == 4  # fp32, bf16, W8, W4
    return found


@pytest.fixture(scope="module")
def executor() -> Iterator[RayExecutor]:
    """One executor for the module: its first run starts Ray, `close` shuts it down."""
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    saved = os.environ.get(NO_USAGE_STATS)
    os.environ[NO_USAGE_STATS] = "0"  # CI has no network: do not try to report usage
    executor = RayExecutor(actors=1, init_kwargs={"num_cpus": 2})
    try:
        yield executor
    finally:
        executor.close()
        if saved is None:
            os.environ.pop(NO_USAGE_STATS, None)
        else:
            os.environ[NO_USAGE_STATS] = saved
        if ray.is_initialized():  # close() failed to; do not leak Ray into other tests
            ray.shutdown()
            pytest.fail("RayExecutor.close() left the Ray instance it started running")


def by_label(events: list[SweepEvent], kind: str) -> dict[str, SweepEvent]:
    found = {e.label: e for e in events if e.kind == kind}
    assert all(e.kind in (kind, "done") for e in events), [(e.kind, e.reason) for e in events]
    return found


def comparable(row: dict[str, Any]) -> dict[str, Any]:
    """What must not depend on where a row was evaluated (timings and kernel picks may)."""
    kernels = row["kernels"]
    return {
        "accuracy": row["metrics"]["accuracy"],
        "size_bytes": row["size_bytes"],
        "bits_per_weight": row["bits_per_weight"],
        "quantized_layers": sorted(kernels),
        "reference_layers": sorted(n for n, k in kernels.items() if k == "reference"),
        "latency_kind": row["latency_kind"],
        "fallbacks": row["fallbacks"],
    }


@pytest.mark.slow
def test_ray_rows_match_local_rows_and_resume(
    ctx: ModelContext, entries: list[PlanEntry], executor: RayExecutor, tmp_path: Any
) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(ACTOR_THREADS)  # kernels are picked by timing, which threads change
    try:
        with ResultStore(tmp_path / "local.sqlite") as store:
            local_events = list(
                run_sweep(ctx, entries, store, settings=SETTINGS, executor=LocalExecutor(ctx))
            )
    finally:
        torch.set_num_threads(threads)
    local = by_label(local_events, "row")

    with ResultStore(tmp_path / "ray.sqlite") as store:
        events = list(run_sweep(ctx, entries, store, settings=SETTINGS, executor=executor))
        rows = by_label(events, "row")
        assert set(rows) == {e.label for e in entries} == set(local)
        assert events[-1].kind == "done" and events[-1].done == len(entries)
        assert {r["key"] for r in store.rows()} == {e.key for e in rows.values()}
        for label, event in rows.items():
            assert event.row is not None and local[label].row is not None
            assert comparable(event.row) == comparable(local[label].row), label
            assert event.row["env"]["threads"] == ACTOR_THREADS
            assert store.get(event.key)["metrics"] == event.row["metrics"]

        again = list(run_sweep(ctx, entries, store, settings=SETTINGS, executor=executor))
        assert set(by_label(again, "cached")) == set(rows)


@pytest.mark.slow
def test_a_failing_entry_is_reported_and_not_stored(
    ctx: ModelContext, executor: RayExecutor, tmp_path: Any
) -> None:
    static, _ = expand(
        SweepSpec(
            weight_bits=(8,), act_bits=(8,), act_mode=("static",), act_granularity=("tensor",)
        )
    )
    fp32, failing = static[0], static[-1]
    assert failing.plan.default is not None and failing.plan.default.act_mode == "static"
    settings = RunSettings(calibration_samples=1, repeats=5, n_boot=200, per_layer=False)
    with ResultStore(tmp_path / "ray.sqlite") as store:
        events = list(run_sweep(ctx, [failing, fp32], store, settings=settings, executor=executor))
        kinds = {e.label: e.kind for e in events if e.kind != "done"}
        assert kinds == {failing.label: "failed", "fp32": "row"}
        failed = next(e for e in events if e.kind == "failed")
        assert "needs at least 8 calibration samples" in failed.reason
        assert not store.has(failed.key)
        assert [r["label"] for r in store.rows()] == ["fp32"]


@pytest.mark.slow
def test_cancel_stops_before_the_next_submission_and_a_callers_ray_stays_up(
    ctx: ModelContext, entries: list[PlanEntry], executor: RayExecutor, tmp_path: Any
) -> None:
    import ray

    if not ray.is_initialized():  # run alone: let the module's executor own the instance
        assert executor.environment()["threads"] == ACTOR_THREADS
    events: list[SweepEvent] = []
    with ResultStore(tmp_path / "ray.sqlite") as store, RayExecutor() as callers:
        for event in run_sweep(
            ctx,
            entries[:2],
            store,
            settings=RunSettings(repeats=5, n_boot=200, per_layer=False),
            executor=callers,
            cancelled=lambda: len(events) >= 1,
        ):
            events.append(event)
        assert [e.kind for e in events] == ["row", "cancelled", "done"]
        assert len(store.rows()) == 1
    assert ray.is_initialized()  # `callers` found Ray running, so closing it left Ray up


def test_make_executor() -> None:
    assert isinstance(make_executor("local"), LocalExecutor)
    assert isinstance(make_executor("local", address=None), LocalExecutor)
    ray_executor = make_executor("ray", address="ray://head:10001", actors=3)
    assert isinstance(ray_executor, RayExecutor)
    assert (ray_executor.address, ray_executor.actors) == ("ray://head:10001", 3)
    with pytest.raises(ExplorerError, match="'local', 'ray'"):
        make_executor("dask")
    with pytest.raises(ExplorerError, match="address"):
        make_executor("local", address="auto")
    with pytest.raises(ExplorerError, match="at least one actor"):
        make_executor("ray", actors=0)


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    entry = expand(SweepSpec(weight_bits=(8,)))[0][0]
    executor = RayExecutor()
    with pytest.raises(ExplorerError) as info:
        list(executor.run(ModelSource(model="digits-cnn"), SETTINGS, [entry], lambda: False))
    assert str(info.value) == RAY_MISSING
