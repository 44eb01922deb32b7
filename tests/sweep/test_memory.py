"""Float copies a context keeps: a model without batch norm is its own folded reference."""

from __future__ import annotations

import gc

import torch
from torch import nn

from explorer.sweep.context import ModelContext, ModelSource, open_context


def _live_storages() -> set[int]:
    """Data pointers of every parameter-sized float tensor alive in this process."""
    ptrs = set()
    for obj in gc.get_objects():
        if (
            type(obj) in (torch.Tensor, nn.Parameter)
            and obj.layout == torch.strided  # sparse tensors left by other tests have no storage
            and obj.is_floating_point()
            and obj.numel()
        ):
            ptrs.add(obj.untyped_storage().data_ptr())
    return ptrs


def test_model_without_batch_norm_is_not_copied_for_its_folded_reference() -> None:
    ctx: ModelContext = open_context(ModelSource(model="tiny-lm"))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in ctx.model.modules())
    gc.collect()
    before = _live_storages()
    folded = ctx.folded
    gc.collect()
    after = _live_storages()
    assert folded is ctx.model
    # a deepcopy would have brought one new storage per parameter
    assert after - before == set()
    params = {p.untyped_storage().data_ptr() for p in ctx.model.parameters()}
    assert {p.untyped_storage().data_ptr() for p in folded.parameters()} == params


def test_model_with_batch_norm_gets_a_folded_copy_and_keeps_its_own() -> None:
    ctx = open_context(ModelSource(model="mobile-cnn"))
    assert any(isinstance(m, nn.BatchNorm2d) for m in ctx.model.modules())
    folded = ctx.folded
    assert folded is not ctx.model
    assert any(isinstance(m, nn.BatchNorm2d) for m in ctx.model.modules())  # untouched
    x = ctx.calibration_inputs(4)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), ctx.model.eval()(x), rtol=1e-4, atol=1e-4)


def test_progress_reports_every_batch_and_rows_report_memory() -> None:
    from explorer.sweep.runner import RunSettings, evaluate_entry, peak_rss_bytes
    from explorer.sweep.space import SweepSpec, expand

    ctx = open_context(ModelSource(model="digits-cnn"))
    entries, _ = expand(SweepSpec(weight_bits=(8,)), ctx.model)
    entry = next(e for e in entries if e.kind == "uniform")
    settings = RunSettings(n_boot=100, repeats=1, warmup=1, per_layer=False)
    n = len(ctx.eval_batches())
    assert n > 1
    calls: list[tuple[int, int]] = []
    row = evaluate_entry(ctx, entry, settings, progress=lambda d, t: calls.append((d, t)))
    steps = [(i, n) for i in range(1, n + 1)]
    assert calls == steps + steps  # the float reference (first row only), then the quantized
    calls.clear()
    evaluate_entry(ctx, entry, settings, progress=lambda d, t: calls.append((d, t)))
    assert calls == steps
    floats = sum(p.numel() * p.element_size() for p in ctx.model.parameters())
    assert row["model_bytes"]["float"] >= floats
    assert 0 < row["model_bytes"]["quantized"] < row["model_bytes"]["float"]
    assert row["peak_rss_bytes"] >= row["model_bytes"]["float"]
    assert row["peak_rss_bytes"] <= peak_rss_bytes()


def test_wide_vocabularies_evaluate_in_fewer_windows_per_batch() -> None:
    from types import SimpleNamespace

    from explorer.sweep.context import BATCH_LOGITS_BYTES

    ctx = open_context(ModelSource(model="tiny-lm"))
    x, _ = ctx.eval_split
    assert len(x) > 3
    default = ctx.eval_batches()
    config = ctx.model.config
    ctx.model.config = SimpleNamespace(vocab_size=BATCH_LOGITS_BYTES // (x.shape[1] * 4) // 3)
    try:
        batches = ctx.eval_batches()
    finally:
        ctx.model.config = config
    assert {len(b[0]) for b in batches[:-1]} == {3}
    assert torch.equal(torch.cat([b[0] for b in batches]), torch.cat([b[0] for b in default]))
