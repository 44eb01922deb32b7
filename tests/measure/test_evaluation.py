"""Per-sample task and fidelity statistics against float64 references, and the paired bootstrap:
exact on identical models, shrinking like 1/sqrt(n), covering a known delta, seeded."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from explorer.measure import evaluation
from explorer.measure.evaluation import (
    FIDELITY_KEYS,
    EvaluationError,
    SampleStats,
    classification_stats,
    evaluate_pair,
    fidelity_per_sample,
    lm_stats,
    summarize,
)
from explorer.measure.metrics import cosine_similarity, sqnr_db


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def flat_fidelity(n: int) -> dict[str, torch.Tensor]:
    """Fidelity of a quantized model that equals float: only the task columns matter."""
    ones, zeros = torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    return {"signal": ones, "noise": zeros, "cosine": ones, "agreement": ones, "kl": zeros}


def paired_correct(
    n: int, probs: tuple[float, float, float, float], seed: int
) -> tuple[SampleStats, SampleStats]:
    """Float/quant correctness drawn per sample from the joint cells (1,1), (1,0), (0,1), (0,0)."""
    cells = torch.multinomial(torch.tensor(probs), n, replacement=True, generator=gen(seed))
    f = ((cells == 0) | (cells == 1)).double()
    q = ((cells == 0) | (cells == 2)).double()
    return SampleStats(n, correct=f), SampleStats(n, correct=q)


def accuracy_ci(f: SampleStats, q: SampleStats, **kwargs: int) -> tuple[float, float]:
    return summarize(f, q, flat_fidelity(f.n_samples), **kwargs).metrics_ci["accuracy"]


# --- per-sample statistics -------------------------------------------------------------------


def test_classification_stats_is_top1_correctness() -> None:
    logits = torch.randn(50, 7, generator=gen(0))
    labels = torch.randint(7, (50,), generator=gen(1))
    stats = classification_stats(logits, labels)
    expected = torch.tensor([float(logits[i].argmax() == labels[i]) for i in range(50)])
    assert stats.correct is not None and stats.correct.dtype == torch.float64
    assert torch.equal(stats.correct, expected.double())
    assert stats.accuracy() == pytest.approx(expected.double().mean().item(), abs=1e-12)
    assert stats.task == "classification"
    assert classification_stats(logits, None).task is None


def test_lm_stats_matches_float64_cross_entropy() -> None:
    logits = torch.randn(4, 9, 13, generator=gen(0))
    targets = torch.randint(13, (4, 9), generator=gen(1))
    targets[1, 5:] = -100  # padding is not scored
    stats = lm_stats(logits, targets)
    for i in range(4):
        ref = F.cross_entropy(logits[i].double(), targets[i], ignore_index=-100, reduction="sum")
        torch.testing.assert_close(stats.nll[i], ref, rtol=1e-12, atol=0.0)
    assert stats.tokens.tolist() == [9.0, 5.0, 9.0, 9.0]
    total = F.cross_entropy(logits.double().reshape(-1, 13), targets.reshape(-1), reduction="sum")
    assert stats.perplexity() == pytest.approx(math.exp(total.item() / 32), rel=1e-12)


def test_lm_stats_chunked_equals_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    logits = torch.randn(10, 6, 17, generator=gen(0))
    targets = torch.randint(17, (10, 6), generator=gen(1))
    whole = lm_stats(logits, targets)
    monkeypatch.setattr(evaluation, "ROW_CHUNK_ELEMENTS", 3 * 6 * 17)
    chunked = lm_stats(logits, targets)
    assert torch.equal(whole.nll, chunked.nll)


def test_perplexity_of_uniform_logits_is_vocabulary_size() -> None:
    vocab = 37
    stats = lm_stats(torch.zeros(3, 5, vocab), torch.randint(vocab, (3, 5), generator=gen(0)))
    assert stats.perplexity() == pytest.approx(vocab, rel=1e-12)


@pytest.mark.parametrize("shape", [(64, 10), (6, 8, 21)])
def test_fidelity_aggregates_match_whole_tensor_metrics(shape: tuple[int, ...]) -> None:
    ref = torch.randn(*shape, generator=gen(0))
    q = ref + 0.05 * torch.randn(*shape, generator=gen(1))
    fid = fidelity_per_sample(ref, q)
    assert all(fid[key].shape == (shape[0],) for key in FIDELITY_KEYS)
    aggregate = 10 * math.log10(fid["signal"].sum().item() / fid["noise"].sum().item())
    assert aggregate == pytest.approx(sqnr_db(ref, q), rel=1e-9)
    for i in range(shape[0]):
        assert fid["cosine"][i].item() == pytest.approx(cosine_similarity(ref[i], q[i]), rel=1e-9)
    classes = shape[-1]
    r2, q2 = ref.double().reshape(shape[0], -1, classes), q.double().reshape(shape[0], -1, classes)
    agree = (r2.argmax(-1) == q2.argmax(-1)).double().mean(1)
    kl = F.kl_div(q2.log_softmax(-1), r2.log_softmax(-1), log_target=True, reduction="none")
    torch.testing.assert_close(fid["agreement"], agree, rtol=0.0, atol=0.0)
    torch.testing.assert_close(fid["kl"], kl.sum(-1).mean(1), rtol=1e-9, atol=1e-15)


def test_fidelity_of_identical_logits_is_perfect() -> None:
    logits = torch.randn(30, 4, 11, generator=gen(0))
    fid = fidelity_per_sample(logits, logits.clone())
    assert torch.all(fid["agreement"] == 1.0) and torch.all(fid["kl"] == 0.0)
    torch.testing.assert_close(fid["cosine"], torch.ones(30, dtype=torch.float64))
    stats = lm_stats(logits, torch.randint(11, (30, 4), generator=gen(1)))
    result = summarize(stats, stats, fid, n_boot=200)
    assert result.metrics["sqnr_db"] == math.inf
    assert result.metrics["perplexity"] == pytest.approx(stats.perplexity(), rel=1e-12)
    assert result.metrics_ci["perplexity"] == (0.0, 0.0)
    encoded = result.to_dict()
    assert encoded["metrics"]["sqnr_db"] is None
    assert encoded["metrics_ci"]["sqnr_db"] == [None, None]
    assert encoded["metrics"]["agreement"] == 1.0 and encoded["metrics"]["kl"] == 0.0
    json.dumps(encoded, allow_nan=False)


def test_kl_is_finite_where_the_float_model_masks_a_token() -> None:
    ref = torch.tensor([[0.0, 1.0, -math.inf]])
    q = torch.tensor([[0.1, 0.9, 0.0]])
    assert math.isfinite(fidelity_per_sample(ref, q)["kl"].item())


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 6),
    positions=st.sampled_from([None, 1, 3]),
    classes=st.integers(1, 9),
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([0.0, 1e-3, 1.0, 30.0]),
)
def test_fidelity_ranges(
    n: int, positions: int | None, classes: int, seed: int, scale: float
) -> None:
    shape = (n, classes) if positions is None else (n, positions, classes)
    ref = 10 * torch.randn(*shape, generator=gen(seed))
    fid = fidelity_per_sample(ref, ref + scale * torch.randn(*shape, generator=gen(seed + 1)))
    assert torch.all(fid["kl"] >= 0) and torch.all(fid["noise"] >= 0)
    assert torch.all((fid["agreement"] >= 0) & (fid["agreement"] <= 1))
    assert torch.all(fid["cosine"].abs() <= 1 + 1e-12)


# --- paired bootstrap ------------------------------------------------------------------------


def test_identical_models_give_an_exactly_zero_delta_interval() -> None:
    f, _ = paired_correct(500, (0.6, 0.1, 0.1, 0.2), seed=0)
    assert accuracy_ci(f, f) == (0.0, 0.0)


def test_interval_contains_delta_and_shrinks_like_inverse_sqrt_n() -> None:
    widths = []
    for n in (400, 6400):
        f = SampleStats(n, correct=torch.ones(n, dtype=torch.float64))
        wrong = torch.randperm(n, generator=gen(n))[: n // 10]
        q_correct = torch.ones(n, dtype=torch.float64)
        q_correct[wrong] = 0.0
        lo, hi = accuracy_ci(f, SampleStats(n, correct=q_correct))
        assert lo < -0.1 < hi
        widths.append(hi - lo)
    assert 3.0 < widths[0] / widths[1] < 5.5


def test_interval_covers_the_true_delta_in_95_percent_of_data_sets() -> None:
    probs = (0.72, 0.12, 0.04, 0.12)  # true delta = P(0,1) − P(1,0) = −0.08
    covered = 0
    for seed in range(100):
        f, q = paired_correct(300, probs, seed=seed)
        lo, hi = accuracy_ci(f, q, n_boot=400, seed=seed)
        covered += lo <= -0.08 <= hi
    assert covered >= 85


def test_bootstrap_is_deterministic_given_the_seed() -> None:
    f, q = paired_correct(2000, (0.7, 0.12, 0.05, 0.13), seed=3)
    first, again = accuracy_ci(f, q, seed=1), accuracy_ci(f, q, seed=1)
    other = accuracy_ci(f, q, seed=2)
    assert first == again
    assert first != other
    assert max(abs(a - b) for a, b in zip(first, other, strict=True)) < 0.01


def test_chunked_resampling_equals_one_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    f, q = paired_correct(1000, (0.7, 0.12, 0.05, 0.13), seed=4)
    whole = accuracy_ci(f, q, n_boot=300)
    monkeypatch.setattr(evaluation, "BOOTSTRAP_CHUNK_ELEMENTS", 7 * 1000)  # 43 chunks
    chunked = accuracy_ci(f, q, n_boot=300)
    assert whole == pytest.approx(chunked, abs=1e-12)


def test_perplexity_delta_interval_brackets_the_observed_delta() -> None:
    n, steps, vocab = 200, 6, 10
    logits = torch.randn(n, steps, vocab, generator=gen(0))
    targets = torch.randint(vocab, (n, steps), generator=gen(1))
    noisy = logits + 0.5 * torch.randn(n, steps, vocab, generator=gen(2))
    f, q = lm_stats(logits, targets), lm_stats(noisy, targets)
    result = summarize(f, q, fidelity_per_sample(logits, noisy), n_boot=500)
    lo, hi = result.metrics_ci["perplexity"]
    assert lo < q.perplexity() - f.perplexity() < hi
    sqnr_lo, sqnr_hi = result.metrics_ci["sqnr_db"]
    assert result.metrics["sqnr_db"] == pytest.approx(sqnr_db(logits, noisy), rel=1e-9)
    assert sqnr_lo < result.metrics["sqnr_db"] < sqnr_hi


# --- evaluate_pair ---------------------------------------------------------------------------


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5)).eval()


def perturbed(model: nn.Module, scale: float) -> nn.Module:
    twin = copy.deepcopy(model)
    generator = gen(7)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(scale * p.std() * torch.randn(p.shape, generator=generator))
    return twin


def classification_batches(labelled: bool) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    inputs = torch.randn(4, 64, 16, generator=gen(3))
    labels = torch.randint(5, (4, 64), generator=gen(4))
    return [(x, y if labelled else None) for x, y in zip(inputs, labels, strict=True)]


def test_evaluate_pair_on_a_perturbed_mlp() -> None:
    model = tiny_mlp()
    quant = perturbed(model, 0.1)
    batches = classification_batches(labelled=True)
    result = evaluate_pair(model, quant, batches, "classification", n_boot=200)
    inputs = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    with torch.no_grad():
        ref, out = model(inputs), quant(inputs)
    assert result.n_samples == 256
    assert set(result.metrics) == {"accuracy", "sqnr_db", "cosine", "agreement", "kl"}
    assert result.metrics.keys() == result.metrics_ci.keys()
    expected = (out.argmax(-1) == labels).double().mean().item()
    assert result.metrics["accuracy"] == pytest.approx(expected, abs=1e-12)
    assert result.metrics["sqnr_db"] == pytest.approx(sqnr_db(ref, out), rel=1e-9)
    assert 0 < result.metrics["kl"] and result.metrics["agreement"] < 1
    exact = evaluate_pair(model, model, batches, "classification", n_boot=200)
    assert exact.metrics_ci["accuracy"] == (0.0, 0.0)


def test_unlabelled_data_gives_fidelity_only() -> None:
    model = tiny_mlp()
    result = evaluate_pair(
        model, perturbed(model, 0.1), classification_batches(labelled=False), "classification"
    )
    assert "accuracy" not in result.metrics and "accuracy" not in result.metrics_ci
    assert set(result.metrics) == {"sqnr_db", "cosine", "agreement", "kl"}


def test_evaluate_pair_on_a_tiny_language_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 8), nn.Linear(8, 20)).eval()
    tokens = torch.randint(20, (3, 4, 9), generator=gen(5))
    batches = [(seq[:, :-1], seq[:, 1:]) for seq in tokens]
    result = evaluate_pair(model, perturbed(model, 0.1), batches, "lm", n_boot=200)
    assert result.n_samples == 12 and "perplexity" in result.metrics
    json.dumps(result.to_dict(), allow_nan=False)


# --- errors ----------------------------------------------------------------------------------


def _stats(n: int) -> SampleStats:
    return SampleStats(n, correct=torch.ones(n, dtype=torch.float64))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: classification_stats(torch.randn(4, 3), torch.zeros(5, dtype=torch.long)),
            "shape",
        ),
        (lambda: classification_stats(torch.randn(4, 3), torch.full((4,), 3)), r"\[0, 3\)"),
        (lambda: classification_stats(torch.randn(0, 3), None), "no samples"),
        (lambda: classification_stats(torch.randn(4, 3, 2), None), "2 dims"),
        (lambda: lm_stats(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long)), "shape"),
        (lambda: lm_stats(torch.randn(2, 3, 5), torch.full((2, 3), -100)), "nothing to score"),
        (lambda: fidelity_per_sample(torch.randn(4, 3), torch.randn(4, 2)), "shapes differ"),
        (lambda: fidelity_per_sample(torch.randn(4), torch.randn(4)), r"\(n, C\)"),
        (lambda: fidelity_per_sample(torch.full((2, 3), math.nan), torch.randn(2, 3)), "NaN"),
        (lambda: summarize(_stats(4), _stats(4), flat_fidelity(4), n_boot=99), "n_boot"),
        (lambda: summarize(_stats(4), _stats(4), flat_fidelity(4), confidence=1.0), "confidence"),
        (lambda: summarize(_stats(4), _stats(4), flat_fidelity(4), confidence=0.0), "confidence"),
        (lambda: summarize(_stats(4), _stats(5), flat_fidelity(4)), "different samples"),
        (lambda: summarize(_stats(4), SampleStats(4), flat_fidelity(4)), "unlabelled"),
        (lambda: summarize(_stats(4), _stats(4), flat_fidelity(3)), "expected"),
        (lambda: summarize(_stats(4), _stats(4), {"signal": torch.ones(4)}), "lacks"),
        (lambda: SampleStats(0), "no samples"),
        (lambda: SampleStats(3, correct=torch.ones(3)), "float64"),
        (lambda: evaluate_pair(tiny_mlp(), tiny_mlp(), [], "classification"), "no batches"),
        (lambda: evaluate_pair(tiny_mlp(), tiny_mlp(), [], "regression"), "task"),
        (lambda: evaluate_pair(tiny_mlp().train(), tiny_mlp(), [], "lm"), "training mode"),
        (
            lambda: evaluate_pair(tiny_mlp(), tiny_mlp(), [(torch.randn(2, 16), None)], "lm"),
            "targets",
        ),
    ],
)
def test_bad_inputs_raise_value_errors(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
    with pytest.raises(EvaluationError):
        call()


# --- comparing two quantized models ----------------------------------------------------------


def lm_pair(n: int, shift: float, seed: int) -> tuple[SampleStats, SampleStats]:
    """Two models' per-sequence NLLs on the same n sequences of 64 tokens; model a's is lower by
    ``shift`` nats per token on average, with per-sequence noise."""
    tokens = torch.full((n,), 64.0, dtype=torch.float64)
    base = 64 * (1.5 + 0.3 * torch.rand(n, generator=gen(seed), dtype=torch.float64))
    noise = 64 * 0.01 * torch.randn(n, generator=gen(seed + 1), dtype=torch.float64)
    b = SampleStats(n, nll=base, tokens=tokens)
    a = SampleStats(n, nll=base - 64 * shift + noise, tokens=tokens)
    return a, b


def test_compare_pair_of_identical_models_is_exactly_zero() -> None:
    a, _ = lm_pair(100, 0.0, seed=0)
    result = evaluation.compare_pair(a, a)
    assert result.delta == 0.0 and result.ci == (0.0, 0.0) and not result.significant


def test_compare_pair_finds_a_small_paired_improvement_and_is_antisymmetric() -> None:
    """A 0.01-nat gain hidden in a 0.3-nat spread between sequences: the paired interval finds
    it; swapping the models negates the delta and the interval."""
    a, b = lm_pair(128, 0.01, seed=3)
    better = evaluation.compare_pair(a, b)
    assert better.metric == "perplexity" and better.n_samples == 128
    assert better.ci[0] <= better.delta <= better.ci[1] < 0 and better.significant
    worse = evaluation.compare_pair(b, a)
    assert worse.delta == pytest.approx(-better.delta)
    assert worse.ci[0] == pytest.approx(-better.ci[1], abs=1e-3 * abs(better.delta))
    assert json.loads(json.dumps(better.to_dict()))["delta"] == pytest.approx(better.delta)


def test_compare_pair_against_float_equals_summarize() -> None:
    a, b = lm_pair(80, 0.02, seed=5)
    fidelity = flat_fidelity(80)
    expected = summarize(b, a, fidelity, n_boot=300, seed=7).metrics_ci["perplexity"]
    assert evaluation.compare_pair(a, b, n_boot=300, seed=7).ci == pytest.approx(
        expected, abs=1e-12
    )


def test_compare_pair_of_classifiers_uses_accuracy() -> None:
    f, q = paired_correct(400, (0.6, 0.02, 0.15, 0.23), seed=2)
    result = evaluation.compare_pair(q, f)
    assert result.metric == "accuracy"
    assert result.delta == pytest.approx(q.accuracy() - f.accuracy())
    assert result.ci[0] > 0  # 15 % of samples fixed against 2 % broken
    assert result.ci == accuracy_ci(f, q)


def test_compare_pair_rejects_unpaired_stats() -> None:
    a, _ = lm_pair(10, 0.0, seed=0)
    b, _ = lm_pair(12, 0.0, seed=0)
    with pytest.raises(EvaluationError, match="different samples"):
        evaluation.compare_pair(a, b)
    with pytest.raises(EvaluationError, match="no task metric"):
        evaluation.compare_pair(SampleStats(10), SampleStats(10))
    with pytest.raises(EvaluationError, match="n_boot"):
        evaluation.compare_pair(a, a, n_boot=10)


# --- per-token fidelity, embeddings and Spearman (explorer.tasks) -----------------------------


def test_token_fidelity_matches_float64_over_scored_tokens_only() -> None:
    """KL per scored token against a float64 loop (rtol 1e-10); unscored positions (-100) change
    nothing, however different their logits; sums give the token-weighted means."""
    ref = torch.randn(3, 5, 7, generator=gen(0))
    q = ref + 0.3 * torch.randn(3, 5, 7, generator=gen(1))
    targets = torch.zeros(3, 5, dtype=torch.long)
    targets[1, :2] = -100
    targets[2, 4] = -100
    fid = evaluation.token_fidelity(ref, q, targets)
    noisy = q.clone()
    noisy[targets == -100] += 100.0  # unscored positions are never read
    again = evaluation.token_fidelity(ref, noisy, targets)
    assert all(torch.equal(fid[k], again[k]) for k in fid)
    kls, tops = [], []
    for i in range(3):
        for t in range(5):
            if targets[i, t] == -100:
                continue
            p = F.softmax(ref[i, t].double(), -1)
            kl = float((p * (p.log() - F.log_softmax(q[i, t].double(), -1))).sum())
            kls.append(kl)
            tops.append(float(ref[i, t].argmax() == q[i, t].argmax()))
    torch.testing.assert_close(
        fid["token_kl"], torch.tensor(kls, dtype=torch.float64), rtol=1e-10, atol=0
    )
    assert fid["tokens"].tolist() == [5.0, 3.0, 4.0]
    assert fid["token_sample"].tolist() == [0] * 5 + [1] * 3 + [2] * 4
    assert float(fid["kl_sum"].sum() / fid["tokens"].sum()) == pytest.approx(sum(kls) / len(kls))
    assert float(fid["same_top_sum"].sum()) == sum(tops)
    result = summarize(SampleStats(3), SampleStats(3), fid, n_boot=200)
    assert result.metrics["kl"] == pytest.approx(sum(kls) / len(kls))
    assert result.metrics["same_top"] == pytest.approx(sum(tops) / len(tops))
    assert result.metrics["kl_p99"] == pytest.approx(
        evaluation._percentile(torch.tensor(kls), 0.99)
    )


def test_kl_p99_interval_is_the_percentile_of_each_resample() -> None:
    """The weighted percentile over a resample's counts equals `_percentile` of that resample's
    tokens written out (a sample drawn c times contributes its tokens c times)."""
    values = torch.rand(40, generator=gen(2), dtype=torch.float64)
    sample = torch.arange(8).repeat_interleave(5)  # 8 samples of 5 tokens
    order = torch.argsort(values)
    counts = torch.stack(
        [torch.bincount(torch.randint(8, (8,), generator=gen(s)), minlength=8) for s in range(20)]
    )
    got = evaluation._weighted_percentile(values[order], sample[order], counts, 0.99)
    for r, row in enumerate(counts):
        written = torch.cat([values[sample == i].repeat(int(c)) for i, c in enumerate(row)])
        assert float(got[r]) == pytest.approx(evaluation._percentile(written, 0.99), abs=1e-12)


def test_embedding_fidelity_is_the_mean_cosine_of_each_embedding() -> None:
    ref = torch.randn(4, 2, 6, generator=gen(3))
    q = ref + 0.1 * torch.randn(4, 2, 6, generator=gen(4))
    fid = evaluation.embedding_fidelity(ref, q)
    cos = F.cosine_similarity(ref.double(), q.double(), dim=-1).mean(dim=1)  # (4,)
    torch.testing.assert_close(fid["cosine"], cos, rtol=1e-12, atol=0)
    assert float(fid["signal"].sum()) == pytest.approx(float(ref.double().square().sum()))
    result = summarize(SampleStats(4), SampleStats(4), fid, n_boot=100)
    assert set(result.metrics) == {"sqnr_db", "cosine"}
    assert result.metrics["sqnr_db"] == pytest.approx(sqnr_db(ref, q), rel=1e-5)


def test_spearman_delta_interval_of_identical_models_is_zero_and_brackets_a_change() -> None:
    n = 200
    score = torch.randint(0, 6, (n,), generator=gen(5)).double()  # ties on purpose
    f_sim = score + torch.randn(n, generator=gen(6), dtype=torch.float64)
    f = SampleStats(n, similarity=f_sim, score=score)
    fid = flat_fidelity(n)
    same = summarize(f, f, fid, n_boot=200)
    assert same.metrics_ci["spearman"] == (0.0, 0.0)
    worse = SampleStats(
        n,
        similarity=f_sim + 2.0 * torch.randn(n, generator=gen(7), dtype=torch.float64),
        score=score,
    )
    result = summarize(f, worse, fid, n_boot=400)
    lo, hi = result.metrics_ci["spearman"]
    delta = worse.spearman() - f.spearman()
    assert delta < 0 and lo <= delta <= hi and hi < 0
    with pytest.raises(EvaluationError, match="`similarity` and `score` must be given together"):
        SampleStats(n, similarity=f_sim)


def test_macro_f1_against_a_hand_computation_and_its_paired_interval() -> None:
    label = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0], dtype=torch.float64)
    pred = torch.tensor([0, 1, 1, 1, 2, 0, 2, 0], dtype=torch.float64)
    stats = SampleStats(8, correct=(pred == label).double(), predicted=pred, label=label)
    # per class F1 = 2 TP / (predicted + true): 0 -> 4/6, 1 -> 4/5, 2 -> 4/5
    assert stats.macro_f1() == pytest.approx((4 / 6 + 4 / 5 + 4 / 5) / 3)
    result = summarize(stats, stats, flat_fidelity(8), n_boot=200)
    assert result.metrics["macro_f1"] == stats.macro_f1()
    assert result.metrics_ci["macro_f1"] == (0.0, 0.0)
    with pytest.raises(EvaluationError, match="come together, with `correct`"):
        SampleStats(8, predicted=pred, label=label)


def test_token_fidelity_chunked_equals_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = torch.randn(3, 9, 50, generator=gen(8))
    q = ref + 0.2 * torch.randn(3, 9, 50, generator=gen(9))
    targets = torch.zeros(3, 9, dtype=torch.long)
    targets[1, :4] = -100
    whole = evaluation.token_fidelity(ref, q, targets)
    monkeypatch.setattr(evaluation, "ROW_CHUNK_ELEMENTS", 100)  # two positions at a time
    chunked = evaluation.token_fidelity(ref, q, targets)
    for key, value in whole.items():
        torch.testing.assert_close(chunked[key], value, rtol=1e-12, atol=1e-15)
