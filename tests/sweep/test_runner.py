"""The sweep runner on real models: the accuracy trends a correct quantizer must show, resuming a
killed sweep, keys that re-evaluate when a setting changes, concurrent writers, cancelling."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from explorer.errors import ExplorerError
from explorer.measure.evaluation import classification_stats
from explorer.models.registry import get_builtin
from explorer.nn.convert import select_kernels
from explorer.nn.qat import QAT_SCHEDULE
from explorer.quant.config import Plan, QuantConfig
from explorer.sweep.context import ModelContext, ModelSource, environment, open_context
from explorer.sweep.runner import (
    RunSettings,
    build_quantized,
    entry_key,
    evaluate_entry,
    qat_settings,
    run_sweep,
)
from explorer.sweep.space import SweepSpec, SweepSpecError, entry_for_plan, expand
from explorer.sweep.store import ResultStore
from explorer.sweep.worker import SweepProcess

FAST = RunSettings(repeats=3, n_boot=200, per_layer=False)


@pytest.fixture(scope="module")
def digits() -> ModelContext:
    return open_context(ModelSource(model="digits-cnn"))


@pytest.fixture(scope="module")
def mobile() -> ModelContext:
    return open_context(ModelSource(model="mobile-cnn"))


def _by(rows: list[dict], **match: object) -> dict:
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, [r["label"] for r in rows])
    return found[0]


@pytest.mark.slow
def test_ptq_trends_on_a_seeded_model(mobile: ModelContext, tmp_path: Path) -> None:
    """Trends 1, 3 and 5 (docs/trends.md) on mobile-cnn (seeded, shipped, batch norm folded): W8
    per-channel within 1 point of float; at 4 bits per-channel at least 5 points above per-tensor;
    accuracy never rises as bits fall beyond the confidence interval; 2-bit PTQ loses at least 20
    points."""
    spec = SweepSpec(weight_bits=(8, 4, 3, 2), granularity=("tensor", "channel"))
    entries, skipped = expand(spec, mobile.model)
    assert not skipped
    with ResultStore(tmp_path / "r.sqlite") as store:
        rows = [e.row for e in run_sweep(mobile, entries, store, settings=FAST) if e.row]
    assert len(rows) == len(entries)
    fp32 = _by(rows, label="fp32")["metrics"]["accuracy"]

    def ptq(bits: int, gran: str) -> dict:
        return _by(rows, weight_bits=bits, granularity=gran, method="ptq")

    acc = {(b, g): ptq(b, g)["metrics"]["accuracy"] for b in (8, 4, 3, 2) for g in GRANS}
    assert abs(acc[(8, "channel")] - fp32) <= 0.01
    assert acc[(4, "channel")] - acc[(4, "tensor")] >= 0.05
    for gran in GRANS:
        assert fp32 - acc[(2, gran)] >= 0.20
        for high, low in ((8, 4), (4, 3), (3, 2)):
            # a rise beyond the interval: the lower width's delta interval lies wholly above
            lo_low = ptq(low, gran)["metrics_ci"]["accuracy"][0]
            hi_high = ptq(high, gran)["metrics_ci"]["accuracy"][1]
            assert lo_low <= hi_high, (gran, high, low, acc)


GRANS = ("tensor", "channel")


@pytest.mark.slow
def test_four_bit_activations_hurt_more_than_four_bit_weights(
    mobile: ModelContext, tmp_path: Path
) -> None:
    """Trend 7 (docs/trends.md) on mobile-cnn, per-token dynamic activations both ways: W8A4 loses
    more than W4A8 beyond both intervals (measured: W4A8 92.0 %, W8A4 38.9 %, float 98.15 %). W4A8's
    dense layers run the real int4 x int8 kernel; A4 has none, so its latency is simulated."""
    spec = SweepSpec(weight_bits=(4, 8), act_bits=(8, 4))
    entries, skipped = expand(spec, mobile.model)
    assert not skipped
    wanted = [e for e in entries if (e.flat.get("weight_bits"), e.flat.get("act_bits")) in W_A]
    assert len(wanted) == 2
    with ResultStore(tmp_path / "r.sqlite") as store:
        rows = [e.row for e in run_sweep(mobile, wanted, store, settings=FAST) if e.row]
    w4a8 = _by(rows, weight_bits=4, act_bits=8)
    w8a4 = _by(rows, weight_bits=8, act_bits=4)
    assert w8a4["metrics_ci"]["accuracy"][1] < w4a8["metrics_ci"]["accuracy"][0]
    # dense layers run the int4 x int8 kernel; depthwise ones have no W4A8 kernel (simulated)
    assert "int4-w4a8-native" in set(w4a8["kernels"].values()), w4a8["kernels"]
    assert w8a4["latency_kind"] == "simulated"


W_A = {(4, 8), (8, 4)}


@pytest.mark.slow
def test_qat_recovers_half_the_ptq_drop_at_2_and_3_bits(
    digits: ModelContext, tmp_path: Path
) -> None:
    """QAT from the PTQ point, on the training split, recovers at least half of the PTQ drop on
    held-out data at 2 and 3 bits per-channel (digits-cnn, seeded); rows are linked."""
    ptq, _ = expand(SweepSpec(weight_bits=(3, 2), granularity=("channel",)), digits.model)
    qat, _ = expand(
        SweepSpec(weight_bits=(3, 2), granularity=("channel",), method=("qat",), qat_steps=150),
        digits.model,
    )
    entries = ptq + qat[2:]  # the baselines once
    with ResultStore(tmp_path / "r.sqlite") as store:
        rows = [e.row for e in run_sweep(digits, entries, store, settings=FAST) if e.row]
    fp32 = _by(rows, label="fp32")["metrics"]["accuracy"]
    for bits in (3, 2):
        before = _by(rows, weight_bits=bits, method="ptq")
        after = _by(rows, weight_bits=bits, method="qat")
        drop = fp32 - before["metrics"]["accuracy"]
        recovered = after["metrics"]["accuracy"] - before["metrics"]["accuracy"]
        assert drop > 0.01 and recovered >= 0.5 * drop, (bits, drop, recovered)
        assert after["parent"] == before["key"]  # linked for the recovery arrow
        assert after["qat_data"] == "train"


def test_row_numbers_come_from_one_quantized_model(digits: ModelContext) -> None:
    entry = entry_for_plan(Plan.uniform(QuantConfig(weight_bits=4, granularity="channel")))
    settings = RunSettings(repeats=3, n_boot=200)
    row = evaluate_entry(digits, entry, settings)
    q = build_quantized(digits, entry, settings)
    x, y = digits.eval_split
    select_kernels(q, example_input=digits.reference.batches[0][0])  # as the runner does
    with torch.inference_mode():
        expected = classification_stats(q(x), y).accuracy()
    assert row["metrics"]["accuracy"] == pytest.approx(expected, abs=1e-12)
    assert row["size_bytes"] < _float_size(digits) / 6
    assert 4.0 < row["bits_per_weight"] < 4.5
    layers = row["layers"]
    assert [layer["name"] for layer in layers] == list(row["kernels"])
    for layer in layers:
        assert layer["weight_bits"] == 4 and layer["kernel"]
        assert 10 < layer["weight_sqnr_db"] < 30  # ~6 dB per bit at 4 bits, minus outliers
        assert layer["output_sqnr_db"] is not None
    shares = [layer["latency_share"] for layer in layers if layer["latency_share"] is not None]
    assert not shares or (all(s >= 0 for s in shares) and sum(shares) <= 1.0 + 1e-9)


def _float_size(ctx: ModelContext) -> int:
    return sum(t.numel() * t.element_size() for t in ctx.model.state_dict().values())


def test_impossible_combinations_are_skipped_with_their_reason(digits: ModelContext) -> None:
    spec = SweepSpec(
        weight_bits=(8,),
        act_bits=(8,),
        act_mode=("static", "dynamic"),
        act_granularity=("token", "tensor"),
    )
    entries, skipped = expand(spec, digits.model)
    assert [e.label for e in entries[:2]] == ["fp32", "bf16"]
    assert len(entries) == 2 + 3 and len(skipped) == 1
    assert "per-tensor" in skipped[0].reason and "static" in skipped[0].label
    # a group size that cannot apply is refused before anything runs (issue 18)
    explicit = SweepSpec(weight_bits=(4,), granularity=("group32",), layers=("features.1",))
    with pytest.raises(SweepSpecError, match="group size 32 does not divide in_features 16"):
        expand(explicit, digits.model)


def test_changed_settings_re_evaluate_and_same_settings_reuse(
    digits: ModelContext, tmp_path: Path
) -> None:
    static = QuantConfig(weight_bits=8, act_bits=8, act_mode="static", act_granularity="tensor")
    ptq = entry_for_plan(Plan.uniform(static))
    qat = entry_for_plan(Plan.uniform(static.with_(method="qat")), qat_steps=5)
    entries = [ptq, qat]
    env = environment()
    with ResultStore(tmp_path / "r.sqlite") as store:

        def kinds(settings: RunSettings, items: list = entries) -> list[str]:
            return [e.kind for e in run_sweep(digits, items, store, settings=settings) if e.row]

        assert kinds(FAST) == ["row", "row"]
        assert kinds(FAST) == ["cached", "cached"]
        more = RunSettings(repeats=3, n_boot=200, per_layer=False, calibration_samples=64)
        assert kinds(more) == ["row", "row"]  # calibration sample count is in the key
        longer = entry_for_plan(Plan.uniform(static.with_(method="qat")), qat_steps=6)
        assert kinds(FAST, [ptq, longer]) == ["cached", "row"]  # so is the QAT budget
        assert entry_key(digits, qat, FAST, env) != entry_key(digits, longer, FAST, env)
        assert len(store.keys()) == 5


def test_qat_takes_the_models_defaults_unless_told_and_keys_say_what_it_used(
    digits: ModelContext,
) -> None:
    """A QAT entry without a rate or batch trains with the model's (recorded as the values, so
    naming the default explicitly is the same row); another rate, batch or budget is another
    row. tiny-lm's defaults differ from the small CNNs'."""
    tiny = get_builtin("tiny-lm")
    assert (tiny.qat_lr, tiny.qat_batch) != (digits.qat_lr, digits.qat_batch)
    assert (digits.qat_lr, digits.qat_batch) == (1e-3, 64)
    env = environment()
    plan = Plan.uniform(QuantConfig(weight_bits=4, method="qat"))
    implicit = entry_for_plan(plan, qat_steps=10)
    assert implicit.qat_lr is None
    explicit = entry_for_plan(plan, qat_steps=10, qat_lr=digits.qat_lr)
    key = entry_key(digits, implicit, FAST, env)
    assert entry_key(digits, explicit, FAST, env) == key
    named_batch = RunSettings(**{**FAST.to_dict(), "qat_batch": digits.qat_batch})
    assert entry_key(digits, implicit, named_batch, env) == key
    others = [
        entry_key(digits, entry_for_plan(plan, qat_steps=10, qat_lr=3e-4), FAST, env),
        entry_key(digits, implicit, RunSettings(**{**FAST.to_dict(), "qat_batch": 32}), env),
    ]
    assert key not in others and len(set(others)) == 2
    assert qat_settings(digits, implicit, FAST) == {
        "steps": 10,
        "lr": 1e-3,
        "batch": 64,
        "schedule": QAT_SCHEDULE,
    }
    assert qat_settings(digits, entry_for_plan(Plan.uniform(QuantConfig())), FAST) is None
    with pytest.raises(ExplorerError, match="qat_batch must be a positive integer, got 0"):
        RunSettings(qat_batch=0)
    with pytest.raises(SweepSpecError, match=r"learning rate must lie in \(0, 1\), got 2"):
        SweepSpec(method=("qat",), qat_lr=2)


def _spec(bits: tuple[int, ...]) -> SweepSpec:
    return SweepSpec(weight_bits=bits, granularity=("tensor", "channel", "group32"))


def test_killed_sweep_resumes_without_redoing_finished_rows(tmp_path: Path) -> None:
    store_path = tmp_path / "r.sqlite"
    source = ModelSource(model="digits-cnn")
    settings = RunSettings(repeats=3, n_boot=200)
    first = SweepProcess(source, str(store_path), spec=_spec((8, 4, 3)), settings=settings).start()
    rows_seen = 0
    deadline = time.monotonic() + 120
    while rows_seen < 3 and time.monotonic() < deadline:
        rows_seen += sum(e.kind == "row" for e in first.poll(timeout=0.5))
    first.terminate()  # SIGKILL mid-sweep
    with ResultStore(store_path) as store:
        stored = len(store.keys())
    assert 3 <= stored < 11
    second = SweepProcess(source, str(store_path), spec=_spec((8, 4, 3)), settings=settings)
    events = second.start().wait(timeout=300)
    kinds = [e.kind for e in events]
    assert kinds.count("cached") == stored
    assert kinds.count("row") == 11 - stored
    assert kinds[-1] == "done"
    # every evaluated row's last evaluation batch reaches the app (st.progress within a row)
    finals = [e for e in events if e.kind == "batch" and e.extra["done"] == e.extra["total"]]
    assert len(finals) >= 11 - stored
    with ResultStore(store_path) as store:
        assert len(store.keys()) == 11


def test_two_sweeps_writing_to_one_store_lose_nothing(tmp_path: Path) -> None:
    store_path = str(tmp_path / "r.sqlite")
    source = ModelSource(model="digits-cnn")
    a = SweepProcess(source, store_path, spec=_spec((8, 4)), settings=FAST).start()
    b = SweepProcess(source, store_path, spec=_spec((3, 2)), settings=FAST).start()
    events_a, events_b = a.wait(timeout=300), b.wait(timeout=300)
    for events in (events_a, events_b):
        assert events[-1].kind == "done", [e.reason for e in events if e.reason]
    new = [e.key for e in events_a + events_b if e.kind in ("row", "cached")]
    with ResultStore(store_path) as store:
        assert store.keys() == set(new)
        assert len(store.keys()) == 2 + 6 + 6  # both sweeps share the two baselines


def test_cancel_stops_after_the_row_in_flight(tmp_path: Path) -> None:
    store_path = str(tmp_path / "r.sqlite")
    sweep = SweepProcess(
        ModelSource(model="digits-cnn"), store_path, spec=_spec((8, 4, 3, 2)), settings=FAST
    ).start()
    seen: list = []
    while not any(e.kind == "row" for e in seen):
        seen += sweep.poll(timeout=0.5)
        assert sweep.alive or sweep.finished
    sweep.cancel()
    seen += sweep.wait(timeout=120)
    kinds = [e.kind for e in seen]
    assert "cancelled" in kinds and kinds[-1] == "done"
    with ResultStore(store_path) as store:
        assert len(store.keys()) == kinds.count("row") < 14


def test_bad_source_is_reported_by_the_worker(tmp_path: Path) -> None:
    sweep = SweepProcess(
        ModelSource(model="no-such-model"), str(tmp_path / "r.sqlite"), spec=_spec((8,))
    ).start()
    events = sweep.wait(timeout=60)
    assert events[-1].kind == "error" and "no-such-model" in events[-1].reason


def test_built_in_rows_keep_their_metrics_and_report_tokens(digits: ModelContext) -> None:
    """Tasks (explorer.tasks) leave the built-ins' rows as they were; a language model's
    context counts the tokens it scores (every next-byte target of tiny-lm's eval split)."""
    entry = entry_for_plan(Plan.uniform(QuantConfig(weight_bits=8, granularity="channel")))
    row = evaluate_entry(digits, entry, FAST)
    assert set(row["metrics"]) == {"accuracy", "sqnr_db", "cosine", "agreement", "kl"}
    assert row["task"] == "classification" and row["tokens_evaluated"] is None
    assert row["evaluation_data"] is None
    tiny = open_context(ModelSource(model="tiny-lm"))
    x, y = tiny.eval_split
    assert tiny.task == "lm" and tiny.tokens_evaluated == y.numel() == x.numel()
    assert tiny.task_summary()["how"] == "the built-in model's"


def test_a_worker_runs_every_entry_on_each_target_with_one_progress_count(tmp_path: Path) -> None:
    """The Sweep page's target choice: every entry runs on the native target, then on ONNX
    Runtime; progress counts over both, and one ``done`` closes the sweep with both counts."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    store_path = str(tmp_path / "r.sqlite")
    spec = SweepSpec(
        weight_bits=(8,),
        granularity=("channel",),
        act_bits=(8,),
        act_mode=("static",),
        act_granularity=("tensor",),
    )
    sweep = SweepProcess(
        ModelSource(model="digits-cnn"),
        store_path,
        spec=spec,
        settings=FAST,
        targets=("onnxruntime",),
    ).start()
    events = sweep.wait(timeout=300)
    assert events[-1].kind == "done", [e.reason for e in events if e.reason]
    assert [e.kind for e in events].count("done") == 1
    started = next(e for e in events if e.kind == "started")
    ends = [e for e in events if e.kind in ("row", "cached", "failed")]
    assert started.total == len(ends) == 6  # fp32, bf16 and W8A8 on each of the two targets
    assert [e.done for e in ends] == list(range(1, 7))
    failed = [e for e in ends if e.kind == "failed"]
    # ONNX Runtime's CPU kernels have no bf16 convolution: that row fails with its reason
    assert [e.label for e in failed] == ["bf16"] and "bf16" in failed[0].reason
    assert events[-1].extra == {"evaluated": 5, "cached": 0, "failed": 1}
    targets = [e.row["target"] for e in ends if e.row]
    assert targets == ["native"] * 3 + ["onnxruntime"] * 2
    with ResultStore(store_path) as store:
        assert len(store.keys()) == 5


def test_target_choices_say_why_a_target_cannot_run(digits: ModelContext) -> None:
    from explorer.targets import target_choices

    choices = target_choices(digits.model)
    assert choices["native"] is None
    llamacpp = [why for name, why in choices.items() if name.startswith("llamacpp:")]
    assert llamacpp and all(why for why in llamacpp)  # a CNN never runs in llama.cpp
    assert all(isinstance(why, str) and why for why in llamacpp)
