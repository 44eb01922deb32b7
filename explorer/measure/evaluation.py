"""Task metrics and fidelity of a quantized model against its float reference, with paired
bootstrap confidence intervals.

The quantized and the float model are evaluated on the *same* samples, so the uncertainty of their
difference comes from resampling sample indices jointly (the paired bootstrap; Efron & Tibshirani,
"An Introduction to the Bootstrap", 1993, ch. 13; Koehn, "Statistical Significance Tests for
Machine Translation Evaluation", EMNLP 2004). Pairing cancels the between-sample variance the two
models share: two identical models give a delta interval of exactly ``[0, 0]``, however hard the
data set is. Only per-sample statistics are kept (`SampleStats`, `fidelity_per_sample`), never
the logits, so that every metric of a resample is a ratio of sums over the resampled samples.

The bootstrap is vectorized: a resample is a row of multiplicity counts over the n samples, and
the sums of every per-sample column over all resamples are one matrix product
``counts (B, n) @ columns (n, k)``. Resamples are drawn in chunks so that the counts never hold
more than `BOOTSTRAP_CHUNK_ELEMENTS` entries (n = 100k samples x 1000 resamples stays near 100 MB).

Imports only `explorer.errors` (and torch); `explorer.measure.metrics` computes the same SQNR and
cosine on whole tensors, and the tests hold the per-sample aggregates to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from explorer.errors import ExplorerError

BOOTSTRAP_CHUNK_ELEMENTS = 1 << 22
"""Most entries of the (resamples, n) index and count matrices held at once."""

ROW_CHUNK_ELEMENTS = 1 << 22
"""Most logits converted to float64 at once by `lm_stats` and `fidelity_per_sample`."""

FIDELITY_KEYS = ("signal", "noise", "cosine", "agreement", "kl")
"""What `fidelity_per_sample` returns per sample. `summarize` needs the first three; the others
are reported when present (an embedding has no argmax or distribution to compare)."""
REQUIRED_FIDELITY = ("signal", "noise", "cosine")
TOKEN_KEYS = ("tokens", "kl_sum", "same_top_sum")
"""Per-sample sums over scored tokens (`token_fidelity`): token-weighted KL and same top token."""
TOKEN_VALUES = ("token_kl", "token_sample")
"""Per-token KL and the sample each token belongs to (`token_fidelity`): its 99th percentile."""
KL_PERCENTILE = 0.99
MIN_BOOT = 100

Task = Literal["classification", "lm", "similarity", "wer"]


class EvaluationError(ExplorerError, ValueError):
    """Evaluation inputs are inconsistent (shapes, empty data, bootstrap settings)."""


class NonFiniteOutputError(EvaluationError):
    """The float model's own outputs hold NaN or infinity: there is nothing to compare against."""


STAT_FIELDS = (
    "correct",
    "nll",
    "tokens",
    "similarity",
    "score",
    "predicted",
    "label",
    "word_errors",
    "words",
)
"""The per-sample tensors a `SampleStats` may hold."""


@dataclass(frozen=True, eq=False)
class SampleStats:
    """Per-sample statistics of one model on n samples; float64 tensors of shape (n,).

    ``correct``: 1.0 where a classifier's top-1 prediction equals the label (None if unlabelled);
    with it, optionally, ``predicted`` and ``label``: the class indices (as float64), for the
    macro-averaged F1 (sequence classifiers).
    ``nll``: a sequence's negative log-likelihood summed over its scored tokens, and ``tokens``:
    how many tokens were scored (language models; both or neither). ``similarity``: the cosine
    similarity of a sentence pair's embeddings, and ``score``: the pair's gold similarity score
    (embedding models on labelled pairs; both or neither). ``word_errors``: an utterance's word
    edit operations (substitutions + deletions + insertions) against its reference transcript,
    and ``words``: the reference's word count (speech recognition; both or neither), so that the
    word error rate of any resample is Σ word_errors / Σ words. Logits are not kept.
    ``eq=False``: tensors have no truth value, so identity is the only sound equality.
    """

    n_samples: int
    correct: torch.Tensor | None = None
    nll: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    similarity: torch.Tensor | None = None
    score: torch.Tensor | None = None
    predicted: torch.Tensor | None = None
    label: torch.Tensor | None = None
    word_errors: torch.Tensor | None = None
    words: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise EvaluationError(f"no samples to evaluate (n_samples={self.n_samples})")
        if (self.nll is None) != (self.tokens is None):
            raise EvaluationError("`nll` and `tokens` must be given together")
        if (self.similarity is None) != (self.score is None):
            raise EvaluationError("`similarity` and `score` must be given together")
        if (self.word_errors is None) != (self.words is None):
            raise EvaluationError("`word_errors` and `words` must be given together")
        if (self.predicted is None) != (self.label is None) or (
            self.predicted is not None and self.correct is None
        ):
            raise EvaluationError("`predicted` and `label` come together, with `correct`")
        kinds = [x is not None for x in (self.correct, self.nll, self.similarity, self.word_errors)]
        if sum(kinds) > 1:
            raise EvaluationError(
                "stats are either a classifier's (`correct`), an LM's (`nll`), an embedding "
                "model's (`similarity`) or a speech recognizer's (`word_errors`)"
            )
        for name in STAT_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if value.dtype != torch.float64 or tuple(value.shape) != (self.n_samples,):
                raise EvaluationError(
                    f"`{name}` must be float64 of shape ({self.n_samples},), "
                    f"got {value.dtype} of shape {tuple(value.shape)}"
                )

    @property
    def task(self) -> Task | None:
        """``"classification"`` with labels, ``"lm"`` with NLLs, ``"similarity"`` with scored
        sentence pairs, None when unlabelled."""
        if self.correct is not None:
            return "classification"
        if self.nll is not None:
            return "lm"
        if self.similarity is not None:
            return "similarity"
        if self.word_errors is not None:
            return "wer"
        return None

    def accuracy(self) -> float:
        if self.correct is None:
            raise EvaluationError("no labels, so no accuracy")
        return float(self.correct.mean())

    def perplexity(self) -> float:
        """exp(Σ nll / Σ tokens): the per-token perplexity of the whole evaluation set."""
        if self.nll is None or self.tokens is None:
            raise EvaluationError("not language-model stats, so no perplexity")
        return math.exp(float(self.nll.sum() / self.tokens.sum()))

    def wer(self) -> float:
        """Word error rate of the whole set: Σ word errors / Σ reference words (a fraction; it
        exceeds 1 when a recognizer inserts more words than the references hold)."""
        if self.word_errors is None or self.words is None:
            raise EvaluationError("not speech-recognition stats, so no word error rate")
        return float(self.word_errors.sum() / self.words.sum())

    def macro_f1(self) -> float:
        """F1 of each class (present among labels or predictions), averaged with equal weight."""
        if self.predicted is None or self.label is None:
            raise EvaluationError("no class predictions kept, so no macro-F1")
        return float(_macro_f1(self, torch.ones(1, self.n_samples, dtype=torch.int64))[0])

    def spearman(self) -> float:
        """Spearman's rank correlation of the pairs' cosine similarities with their scores."""
        if self.similarity is None or self.score is None:
            raise EvaluationError("not scored sentence pairs, so no Spearman correlation")
        return spearman(self.similarity, self.score)


def _row_chunk(n_rows: int, row_elements: int) -> int:
    return max(1, min(n_rows, ROW_CHUNK_ELEMENTS // max(1, row_elements)))


def _check_logits(logits: torch.Tensor, ndim: int, what: str) -> None:
    if logits.ndim != ndim:
        raise EvaluationError(f"{what} logits must have {ndim} dims, got {tuple(logits.shape)}")
    if logits.shape[0] == 0:
        raise EvaluationError(f"{what} logits hold no samples: {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise EvaluationError(f"{what} logits must be floating point, got {logits.dtype}")
    if torch.isnan(logits).any():
        raise EvaluationError(f"{what} logits contain NaN")


def _check_targets(targets: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(targets.shape) != shape:
        raise EvaluationError(f"targets must have shape {shape}, got {tuple(targets.shape)}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise EvaluationError(f"targets must be integer class indices, got {targets.dtype}")


def classification_stats(logits: torch.Tensor, labels: torch.Tensor | None) -> SampleStats:
    """Per-sample top-1 correctness of ``logits`` (n, C) against ``labels`` (n,) or None."""
    _check_logits(logits, 2, "classification")
    n, classes = logits.shape
    if labels is None:
        return SampleStats(n_samples=n)
    _check_targets(labels, (n,))
    if ((labels < 0) | (labels >= classes)).any():
        raise EvaluationError(
            f"labels must lie in [0, {classes}), got {int(labels.min())}..{int(labels.max())}"
        )
    correct = (logits.detach().argmax(dim=-1) == labels).to(torch.float64)
    return SampleStats(n_samples=n, correct=correct)


def lm_stats(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> SampleStats:
    """Per-sequence NLL summed over tokens (float64) and token counts, from ``logits`` (n, T, V)
    and next-token ``targets`` (n, T); positions equal to ``ignore_index`` are not scored."""
    _check_logits(logits, 3, "language-model")
    n, steps, vocab = logits.shape
    _check_targets(targets, (n, steps))
    scored = targets != ignore_index
    if ((targets[scored] < 0) | (targets[scored] >= vocab)).any():
        raise EvaluationError(f"targets must lie in [0, {vocab}) or equal {ignore_index}")
    if not scored.any():
        raise EvaluationError(f"every target equals ignore_index {ignore_index}: nothing to score")
    nll = torch.empty(n, dtype=torch.float64)
    chunk = _row_chunk(n, steps * vocab)
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        block = logits[rows].detach().to(torch.float64)  # (b, T, V)
        token_nll = F.cross_entropy(
            block.reshape(-1, vocab),
            targets[rows].reshape(-1),
            ignore_index=ignore_index,
            reduction="none",
        )
        nll[rows] = token_nll.view(-1, steps).sum(dim=1)
    return SampleStats(n_samples=n, nll=nll, tokens=scored.sum(dim=1).to(torch.float64))


def fidelity_per_sample(
    ref_logits: torch.Tensor, q_logits: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-sample fidelity of ``q_logits`` to ``ref_logits``, both (n, C) or (n, T, V); an LM
    sample's positions are flattened into it. Float64 tensors of shape (n,):

    - ``signal`` Σ ref², ``noise`` Σ (ref − q)²: the SQNR of any subset is 10·log10(Σ signal /
      Σ noise), equal to `explorer.measure.metrics.sqnr_db` on that subset's logits;
    - ``cosine`` of the sample's flattened logits (1 when either is all zero, as in `metrics`);
    - ``agreement``: fraction of the sample's positions whose argmax matches;
    - ``kl``: KL(softmax(ref) ‖ softmax(q)), mean over the sample's positions, from log_softmax.
    """
    if ref_logits.shape != q_logits.shape:
        raise EvaluationError(
            f"logit shapes differ: float {tuple(ref_logits.shape)}, "
            f"quantized {tuple(q_logits.shape)}"
        )
    if ref_logits.ndim not in (2, 3):
        raise EvaluationError(f"logits must be (n, C) or (n, T, V), got {tuple(ref_logits.shape)}")
    _check_logits(ref_logits, ref_logits.ndim, "float")
    _check_logits(q_logits, q_logits.ndim, "quantized")
    n, classes = ref_logits.shape[0], ref_logits.shape[-1]
    ref_all = ref_logits.detach().reshape(n, -1, classes)  # (n, P, V); P = 1 for classifiers
    q_all = q_logits.detach().reshape(n, -1, classes)
    out = {key: torch.empty(n, dtype=torch.float64) for key in FIDELITY_KEYS}
    chunk = _row_chunk(n, ref_all.shape[1] * classes)
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        ref = ref_all[rows].to(torch.float64)  # (b, P, V)
        q = q_all[rows].to(torch.float64)
        flat_ref, flat_q = ref.flatten(1), q.flatten(1)  # (b, P·V)
        out["signal"][rows] = flat_ref.square().sum(dim=1)
        out["noise"][rows] = (flat_ref - flat_q).square().sum(dim=1)
        denom = torch.linalg.vector_norm(flat_ref, dim=1) * torch.linalg.vector_norm(flat_q, dim=1)
        dot = (flat_ref * flat_q).sum(dim=1)
        out["cosine"][rows] = torch.where(
            denom == 0, 1.0, dot / torch.where(denom == 0, 1.0, denom)
        )
        out["agreement"][rows] = (ref.argmax(-1) == q.argmax(-1)).to(torch.float64).mean(dim=1)
        log_p, log_q = F.log_softmax(ref, dim=-1), F.log_softmax(q, dim=-1)
        p = log_p.exp()
        # 0·log(0/q) = 0 even where q's logit is −inf (masked vocabulary).
        terms = torch.where(p > 0, p * (log_p - log_q), 0.0)
        out["kl"][rows] = terms.sum(dim=-1).clamp_min(0.0).mean(dim=1)
    return out


def token_fidelity(
    ref_logits: torch.Tensor,
    q_logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
) -> dict[str, torch.Tensor]:
    """Fidelity of a language model over its *scored* tokens only (``targets != ignore_index``;
    positions a strided window re-reads for context, and padding, are not scored), as llama.cpp's
    ``perplexity --kl-divergence`` reports it. ``ref_logits``, ``q_logits`` (n, T, V).

    Per sample (float64, shape (n,)): ``signal``, ``noise``, ``cosine``, ``agreement`` and
    ``kl`` as in `fidelity_per_sample` but over scored positions; ``tokens`` (how many),
    ``kl_sum`` (Σ KL) and ``same_top_sum`` (how many have the float model's top token), whose
    ratios of sums give the token-weighted mean KL and same-top-token rate of any resample.
    Per token: ``token_kl`` (N,) and ``token_sample`` (N,), the sample each belongs to, for the
    KL's 99th percentile.
    """
    if ref_logits.shape != q_logits.shape or ref_logits.ndim != 3:
        raise EvaluationError(
            f"logits must both be (n, T, V): float {tuple(ref_logits.shape)}, "
            f"quantized {tuple(q_logits.shape)}"
        )
    _check_logits(ref_logits, 3, "float")
    _check_logits(q_logits, 3, "quantized")
    n, steps, vocab = ref_logits.shape
    _check_targets(targets, (n, steps))
    scored = targets != ignore_index  # (n, T)
    if not scored.any(dim=1).all():
        raise EvaluationError("every sample needs at least one scored token")
    out = {key: torch.empty(n, dtype=torch.float64) for key in (*FIDELITY_KEYS, *TOKEN_KEYS)}
    token_kl, token_sample = [], []
    for i in range(n):
        positions = scored[i].nonzero().squeeze(1)  # (t,)
        sums = torch.zeros(5, dtype=torch.float64)  # signal, noise, dot, |ref|², |q|²
        kls, same = [], []
        # float64 copies of at most ROW_CHUNK_ELEMENTS logits at once (a 150k vocabulary)
        for chunk in positions.split(_row_chunk(len(positions), vocab)):
            ref = ref_logits[i, chunk].detach().to(torch.float64)  # (c, V)
            q = q_logits[i, chunk].detach().to(torch.float64)
            sums += torch.stack(
                [
                    ref.square().sum(),
                    (ref - q).square().sum(),
                    (ref * q).sum(),
                    ref.square().sum(),
                    q.square().sum(),
                ]
            )
            same.append((ref.argmax(-1) == q.argmax(-1)).to(torch.float64))  # (c,)
            log_p, log_q = F.log_softmax(ref, dim=-1), F.log_softmax(q, dim=-1)
            p = log_p.exp()
            kls.append(torch.where(p > 0, p * (log_p - log_q), 0.0).sum(dim=-1).clamp_min(0.0))
        kl, top = torch.cat(kls), torch.cat(same)  # (t,)
        signal, noise, dot, ref_sq, q_sq = sums.tolist()
        denom = math.sqrt(ref_sq) * math.sqrt(q_sq)
        out["signal"][i], out["noise"][i] = signal, noise
        out["cosine"][i] = 1.0 if denom == 0 else dot / denom
        out["agreement"][i] = top.mean()
        out["kl"][i] = kl.mean()
        out["tokens"][i] = float(len(positions))
        out["kl_sum"][i] = kl.sum()
        out["same_top_sum"][i] = top.sum()
        token_kl.append(kl)
        token_sample.append(torch.full((kl.numel(),), i, dtype=torch.int64))
    out["token_kl"] = torch.cat(token_kl)
    out["token_sample"] = torch.cat(token_sample)
    return out


def embedding_fidelity(ref: torch.Tensor, q: torch.Tensor) -> dict[str, torch.Tensor]:
    """Fidelity of embeddings ``ref``, ``q`` (n, D), or (n, k, D) for k sentences per sample
    (a sentence pair): per sample ``signal`` and ``noise`` (for SQNR) and ``cosine``, the mean
    over the sample's sentences of each embedding's cosine to its float embedding."""
    if ref.shape != q.shape or ref.ndim not in (2, 3):
        raise EvaluationError(
            f"embeddings must both be (n, D) or (n, k, D): float {tuple(ref.shape)}, "
            f"quantized {tuple(q.shape)}"
        )
    _check_logits(ref, ref.ndim, "float")
    _check_logits(q, q.ndim, "quantized")
    n, dim = ref.shape[0], ref.shape[-1]
    a = ref.detach().reshape(n, -1, dim).to(torch.float64)  # (n, k, D)
    b = q.detach().reshape(n, -1, dim).to(torch.float64)
    denom = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)  # (n, k)
    cosine = torch.where(denom == 0, 1.0, (a * b).sum(-1) / torch.where(denom == 0, 1.0, denom))
    return {
        "signal": a.square().sum(dim=(1, 2)),
        "noise": (a - b).square().sum(dim=(1, 2)),
        "cosine": cosine.mean(dim=1),
    }


def concat_fidelity(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Join the fidelity of consecutive batches; per-token sample indices are shifted by the
    samples of the batches before them."""
    if not parts:
        raise EvaluationError("no batches to evaluate")
    out: dict[str, torch.Tensor] = {}
    for key in parts[0]:
        if key == "token_sample":
            offsets, shifted = 0, []
            for part in parts:
                shifted.append(part[key] + offsets)
                offsets += int(part["signal"].numel())
            out[key] = torch.cat(shifted)
        else:
            out[key] = torch.cat([part[key] for part in parts])
    return out


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``x`` (n,) in float64; tied values share the mean of their ranks."""
    n = x.numel()
    order = torch.argsort(x, stable=True)
    ordered = x[order]
    starts = torch.ones(n, dtype=torch.bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    group = torch.cumsum(starts.to(torch.int64), 0) - 1  # (n,) tie group of each sorted value
    groups = int(group[-1]) + 1 if n else 0
    position = torch.arange(1, n + 1, dtype=torch.float64)
    mean = torch.zeros(groups, dtype=torch.float64).index_add_(0, group, position)
    mean /= torch.bincount(group, minlength=groups).to(torch.float64)
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = mean[group]
    return ranks


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rank correlation: Pearson's correlation of the average ranks (ties included,
    as `scipy.stats.spearmanr` computes it). NaN when either side is constant."""
    if x.shape != y.shape or x.ndim != 1 or x.numel() < 2:
        raise EvaluationError(
            f"Spearman needs two equal 1-D series of >= 2 values, got {tuple(x.shape)} "
            f"and {tuple(y.shape)}"
        )
    rx = average_ranks(x.to(torch.float64))
    ry = average_ranks(y.to(torch.float64))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float(torch.linalg.vector_norm(rx) * torch.linalg.vector_norm(ry))
    return math.nan if denom == 0 else float((rx * ry).sum()) / denom


def _sqnr(signal: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """10·log10(signal / noise) with `metrics.sqnr_db`'s conventions: +inf without noise, −inf
    without signal."""
    ratio = 10.0 * torch.log10(signal / torch.where(noise == 0, 1.0, noise))
    return torch.where(noise == 0, math.inf, torch.where(signal == 0, -math.inf, ratio))


def _percentile(values: torch.Tensor, q: float) -> float:
    """Linear-interpolation percentile (numpy's default) that stays defined at ±inf: between an
    infinite and another value it takes the nearer order statistic."""
    ordered = torch.sort(values).values
    pos = q * (ordered.numel() - 1)
    i = math.floor(pos)
    w = pos - i
    a = float(ordered[i])
    b = float(ordered[min(i + 1, ordered.numel() - 1)])
    if w == 0.0 or a == b:
        return a
    if math.isinf(a) or math.isinf(b):
        return a if w < 0.5 else b
    return a + w * (b - a)


@dataclass(frozen=True)
class Evaluation:
    """Metrics of a quantized model with 95 % (``confidence``) paired-bootstrap intervals.

    ``metrics``: the task metric (``accuracy`` as a fraction, or ``perplexity``) when the data
    are labelled, and the fidelity metrics ``sqnr_db``, ``cosine`` (mean per-sample cosine),
    ``agreement`` (top-1 agreement) and ``kl`` (mean KL(float ‖ quantized)).

    ``metrics_ci``: for the task metric, the percentile interval of the *delta* quantized − float
    (for perplexity, the difference of the two perplexities on each resample). For the fidelity
    metrics, the interval of the metric itself: the float model's own fidelity is perfect (cosine
    1, agreement 1, kl 0), so that interval is the delta from float up to sign and a constant;
    SQNR's float value is +inf, so its interval is kept as SQNR's own.
    """

    metrics: dict[str, float]
    metrics_ci: dict[str, tuple[float, float]]
    n_samples: int

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form of the sweep contract; ±inf (SQNR of an exact model) becomes None,
        since JSON has no infinity."""

        def plain(x: float) -> float | None:
            return None if math.isinf(x) else float(x)

        return {
            "metrics": {k: plain(v) for k, v in self.metrics.items()},
            "metrics_ci": {k: [plain(lo), plain(hi)] for k, (lo, hi) in self.metrics_ci.items()},
            "n_samples": self.n_samples,
        }


def _check_pair(
    float_stats: SampleStats, quant_stats: SampleStats, fidelity: Mapping[str, torch.Tensor]
) -> int:
    n = float_stats.n_samples
    if quant_stats.n_samples != n:
        raise EvaluationError(
            f"float and quantized stats cover different samples: {n} vs {quant_stats.n_samples}"
        )
    if float_stats.task != quant_stats.task:
        raise EvaluationError(
            f"float stats are {float_stats.task or 'unlabelled'}, "
            f"quantized stats are {quant_stats.task or 'unlabelled'}"
        )
    if float_stats.tokens is not None and not torch.equal(float_stats.tokens, quant_stats.tokens):
        raise EvaluationError(
            "token counts differ: the two models were not scored on the same data"
        )
    if float_stats.words is not None and not torch.equal(float_stats.words, quant_stats.words):
        raise EvaluationError(
            "reference word counts differ: the two models were not scored on the same utterances"
        )
    missing = set(REQUIRED_FIDELITY) - set(fidelity)
    if missing:
        raise EvaluationError(f"fidelity lacks {sorted(missing)}; use fidelity_per_sample()")
    for key in (*FIDELITY_KEYS, *TOKEN_KEYS):
        value = fidelity.get(key)
        if value is not None and tuple(value.shape) != (n,):
            raise EvaluationError(
                f"fidelity `{key}` has shape {tuple(value.shape)}, expected ({n},)"
            )
    if ("token_kl" in fidelity) != ("token_sample" in fidelity) or (
        "token_kl" in fidelity and fidelity["token_kl"].shape != fidelity["token_sample"].shape
    ):
        raise EvaluationError("`token_kl` and `token_sample` must be given together, same shape")
    return n


def summarize(
    float_stats: SampleStats,
    quant_stats: SampleStats,
    fidelity: Mapping[str, torch.Tensor],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Evaluation:
    """Point metrics of the quantized model and their paired-bootstrap percentile intervals
    (see `Evaluation`) from ``n_boot`` resamples drawn with a ``torch.Generator`` seeded by
    ``seed``; the same seed and data give the same intervals."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < MIN_BOOT:
        raise EvaluationError(f"n_boot must be an integer >= {MIN_BOOT}, got {n_boot!r}")
    if not 0.0 < confidence < 1.0:
        raise EvaluationError(f"confidence must lie in (0, 1), got {confidence!r}")
    n = _check_pair(float_stats, quant_stats, fidelity)
    per_token = {key: fidelity[key] for key in TOKEN_VALUES if key in fidelity}
    fidelity = {
        key: fidelity[key].to(torch.float64)
        for key in (*FIDELITY_KEYS, *TOKEN_KEYS)
        if key in fidelity
    }

    # Per-sample columns whose resampled sums give every metric; names index `sums` below.
    columns: dict[str, torch.Tensor] = {}
    task = float_stats.task
    if task == "classification":
        columns["d_correct"] = quant_stats.correct - float_stats.correct
    columns |= {f"fid_{key}": value for key, value in fidelity.items()}
    col = {name: j for j, name in enumerate(columns)}
    matrix = torch.stack(list(columns.values()), dim=1)  # (n, k)

    # Statistics that are not ratios of sums need each resample's counts, not just its sums.
    extra: dict[str, list[torch.Tensor]] = {}
    observers: list[Callable[[torch.Tensor], None]] = []
    if task == "lm":
        observers.append(
            _pair_sums(
                extra,
                "lm",
                (float_stats.nll, float_stats.tokens),
                (quant_stats.nll, quant_stats.tokens),
            )
        )
    if task == "classification" and quant_stats.predicted is not None:
        extra["macro_f1"] = []
        observers.append(
            lambda counts: extra["macro_f1"].append(
                _macro_f1(quant_stats, counts) - _macro_f1(float_stats, counts)
            )
        )
    if task == "wer":
        observers.append(
            _pair_sums(
                extra,
                "wer",
                (float_stats.word_errors, float_stats.words),
                (quant_stats.word_errors, quant_stats.words),
            )
        )
    if task == "similarity":
        extra["spearman"] = []
        observers.append(
            lambda counts: extra["spearman"].append(
                _resampled_spearman(quant_stats, counts) - _resampled_spearman(float_stats, counts)
            )
        )
    if per_token:
        extra["kl_p99"] = []
        sorted_kl, sorted_sample = _sorted_tokens(per_token)
        observers.append(
            lambda counts: extra["kl_p99"].append(
                _weighted_percentile(sorted_kl, sorted_sample, counts, KL_PERCENTILE)
            )
        )
    sums = _bootstrap_sums(matrix, n_boot, seed, observers)  # (B, k)

    def column(name: str) -> torch.Tensor:
        return sums[:, col[name]]

    boot: dict[str, torch.Tensor] = {}
    metrics: dict[str, float] = {}
    if task == "classification":
        metrics["accuracy"] = quant_stats.accuracy()
        boot["accuracy"] = column("d_correct") / n
        if "macro_f1" in extra:
            metrics["macro_f1"] = quant_stats.macro_f1()
            boot["macro_f1"] = torch.cat(extra["macro_f1"])
    elif task == "lm":
        metrics["perplexity"] = quant_stats.perplexity()
        f_sums, q_sums = torch.cat(extra["f_lm"]), torch.cat(extra["q_lm"])  # (B, 2)
        boot["perplexity"] = torch.exp(q_sums[:, 0] / q_sums[:, 1]) - torch.exp(
            f_sums[:, 0] / f_sums[:, 1]
        )
    elif task == "wer":
        metrics["wer"] = quant_stats.wer()
        f_sums, q_sums = torch.cat(extra["f_wer"]), torch.cat(extra["q_wer"])  # (B, 2)
        boot["wer"] = q_sums[:, 0] / q_sums[:, 1] - f_sums[:, 0] / f_sums[:, 1]
    elif task == "similarity":
        # the delta against float of Spearman's correlation with the gold scores
        metrics["spearman"] = quant_stats.spearman()
        boot["spearman"] = torch.cat(extra["spearman"])
    metrics["sqnr_db"] = float(_sqnr(fidelity["signal"].sum(), fidelity["noise"].sum()))
    boot["sqnr_db"] = _sqnr(column("fid_signal"), column("fid_noise"))
    for key in ("cosine", "agreement", "kl"):
        if key in fidelity:
            metrics[key] = float(fidelity[key].mean())
            boot[key] = column(f"fid_{key}") / n
    if "tokens" in fidelity:
        # llama.cpp's figures: means over tokens, not over windows of unequal scored length
        tokens = fidelity["tokens"].sum()
        metrics["kl"] = float(fidelity["kl_sum"].sum() / tokens)
        boot["kl"] = column("fid_kl_sum") / column("fid_tokens")
        metrics["same_top"] = float(fidelity["same_top_sum"].sum() / tokens)
        boot["same_top"] = column("fid_same_top_sum") / column("fid_tokens")
    if per_token:
        metrics["kl_p99"] = _percentile(per_token["token_kl"].to(torch.float64), KL_PERCENTILE)
        boot["kl_p99"] = torch.cat(extra["kl_p99"])

    tail = (1.0 - confidence) / 2.0
    metrics_ci = {}
    for name, values in boot.items():
        values = values[~torch.isnan(values)]  # a resample with constant similarities
        metrics_ci[name] = (
            (_percentile(values, tail), _percentile(values, 1.0 - tail))
            if values.numel()
            else (math.nan, math.nan)
        )
    return Evaluation(metrics=metrics, metrics_ci=metrics_ci, n_samples=n)


def _pair_sums(
    extra: dict[str, list[torch.Tensor]],
    name: str,
    float_columns: tuple[torch.Tensor, ...],
    quant_columns: tuple[torch.Tensor, ...],
) -> Callable[[torch.Tensor], None]:
    """An observer appending each resample's sums of the float and the quantized model's
    per-sample columns (a ratio's numerator and denominator: NLL and tokens, word errors and
    words) to ``extra["f_<name>"]`` and ``extra["q_<name>"]``. One product per model of the
    same shape (as in `compare_pair`): equal models give exactly equal sums, so a zero delta is
    exactly zero whatever else is resampled."""
    f = torch.stack(float_columns, dim=1)  # (n, k)
    q = torch.stack(quant_columns, dim=1)
    extra[f"f_{name}"], extra[f"q_{name}"] = [], []

    def observe(counts: torch.Tensor) -> None:
        extra[f"f_{name}"].append(counts.to(torch.float64) @ f)
        extra[f"q_{name}"].append(counts.to(torch.float64) @ q)

    return observe


def _macro_f1(stats: SampleStats, counts: torch.Tensor) -> torch.Tensor:
    """Macro-F1 on each resample given by a row of ``counts`` (b, n): 2·TP / (predicted + true)
    per class from count-weighted one-hot sums, averaged over the classes that occur."""
    assert stats.predicted is not None and stats.label is not None
    pred, label = stats.predicted.long(), stats.label.long()
    classes = int(max(pred.max(), label.max())) + 1
    p = F.one_hot(pred, classes).to(torch.float64)  # (n, C)
    y = F.one_hot(label, classes).to(torch.float64)
    c = counts.to(torch.float64)
    tp, predicted, true = c @ (p * y), c @ p, c @ y  # (b, C)
    seen = (predicted + true) > 0
    f1 = torch.where(seen, 2 * tp / torch.where(seen, predicted + true, 1.0), 0.0)
    return f1.sum(dim=1) / seen.sum(dim=1)


def _resampled_spearman(stats: SampleStats, counts: torch.Tensor) -> torch.Tensor:
    """Spearman's correlation on each resample given by a row of ``counts`` (b, n)."""
    assert stats.similarity is not None and stats.score is not None
    samples = torch.arange(stats.n_samples)
    out = torch.empty(counts.shape[0], dtype=torch.float64)
    for r, row in enumerate(counts):
        idx = samples.repeat_interleave(row)
        out[r] = spearman(stats.similarity[idx], stats.score[idx])
    return out


def _sorted_tokens(per_token: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.argsort(per_token["token_kl"], stable=True)
    return per_token["token_kl"][order].to(torch.float64), per_token["token_sample"][order]


def _weighted_percentile(
    ordered: torch.Tensor, sample: torch.Tensor, counts: torch.Tensor, q: float
) -> torch.Tensor:
    """`_percentile` of the token values of each resample: a token of a sample drawn c times
    counts c times. ``ordered`` (N,) sorted values, ``sample`` (N,) their samples, ``counts``
    (b, n) each resample's multiplicities; returns (b,)."""
    out = torch.empty(counts.shape[0], dtype=torch.float64)
    rows = max(1, BOOTSTRAP_CHUNK_ELEMENTS // max(1, ordered.numel()))
    for start in range(0, counts.shape[0], rows):
        weights = counts[start : start + rows][:, sample]  # (r, N)
        cum = torch.cumsum(weights, dim=1)  # cum[i] - 1: the last order statistic value i holds
        total = cum[:, -1]
        pos = q * (total - 1).to(torch.float64)
        low = pos.floor()
        frac = pos - low
        high = torch.minimum(low + 1, (total - 1).to(torch.float64))
        a = ordered[torch.searchsorted(cum, low.to(cum.dtype).unsqueeze(1), right=True)[:, 0]]
        b = ordered[torch.searchsorted(cum, high.to(cum.dtype).unsqueeze(1), right=True)[:, 0]]
        out[start : start + rows] = a + frac * (b - a)
    return out


def _bootstrap_sums(
    matrix: torch.Tensor,
    n_boot: int,
    seed: int,
    observers: Sequence[Callable[[torch.Tensor], None]] = (),
) -> torch.Tensor:
    """Column sums of ``matrix`` (n, k) over ``n_boot`` resamples of its rows: (n_boot, k).
    Each observer also sees every chunk's counts (b, n), in resample order."""
    n = matrix.shape[0]
    generator = torch.Generator().manual_seed(seed)
    chunk = max(1, min(n_boot, BOOTSTRAP_CHUNK_ELEMENTS // n))
    sums = torch.empty(n_boot, matrix.shape[1], dtype=torch.float64)  # (B, k)
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        idx = torch.randint(n, (rows, n), generator=generator)  # (b, n)
        idx += torch.arange(rows).unsqueeze(1) * n
        counts = torch.bincount(idx.view(-1), minlength=rows * n).view(rows, n)
        sums[start : start + rows] = counts.to(torch.float64) @ matrix
        for observe in observers:
            observe(counts)
    return sums


@dataclass(frozen=True)
class PairedDelta:
    """``metric`` of model a minus that of model b on the same samples, with the paired-bootstrap
    percentile interval of that difference. ``significant``: the interval excludes 0."""

    metric: str
    a: float
    b: float
    n_samples: int
    ci: tuple[float, float]

    @property
    def delta(self) -> float:
        return self.a - self.b

    @property
    def significant(self) -> bool:
        return self.ci[0] > 0.0 or self.ci[1] < 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "a": self.a,
            "b": self.b,
            "delta": self.delta,
            "ci": list(self.ci),
            "n_samples": self.n_samples,
        }


def compare_pair(
    stats_a: SampleStats,
    stats_b: SampleStats,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedDelta:
    """Is model a better or worse than model b, beyond chance? Both were scored on the same
    samples (`lm_stats` or `classification_stats` of each, in the same order); resampling the
    samples jointly gives the interval of ``metric(a) − metric(b)`` (perplexity for language
    models, accuracy for classifiers), as `summarize` does for a model against float."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < MIN_BOOT:
        raise EvaluationError(f"n_boot must be an integer >= {MIN_BOOT}, got {n_boot!r}")
    if not 0.0 < confidence < 1.0:
        raise EvaluationError(f"confidence must lie in (0, 1), got {confidence!r}")
    fidelity = {key: torch.zeros(stats_b.n_samples, dtype=torch.float64) for key in FIDELITY_KEYS}
    n = _check_pair(stats_b, stats_a, fidelity)
    if stats_a.task == "lm":
        # One product per model over the same resamples (same seed): equal models give exactly
        # equal sums, so a zero delta is exactly zero.
        sums_a = _bootstrap_sums(torch.stack([stats_a.nll, stats_a.tokens], dim=1), n_boot, seed)
        sums_b = _bootstrap_sums(torch.stack([stats_b.nll, stats_b.tokens], dim=1), n_boot, seed)
        boot = torch.exp(sums_a[:, 0] / sums_a[:, 1]) - torch.exp(sums_b[:, 0] / sums_b[:, 1])
        metric, a, b = "perplexity", stats_a.perplexity(), stats_b.perplexity()
    elif stats_a.task == "classification":
        sums = _bootstrap_sums((stats_a.correct - stats_b.correct)[:, None], n_boot, seed)
        boot = sums[:, 0] / n
        metric, a, b = "accuracy", stats_a.accuracy(), stats_b.accuracy()
    else:
        raise EvaluationError("unlabelled stats have no task metric to compare")
    tail = (1.0 - confidence) / 2.0
    ci = (_percentile(boot, tail), _percentile(boot, 1.0 - tail))
    return PairedDelta(metric, a, b, n, ci)


def _logits(output: object, which: str) -> torch.Tensor:
    logits = getattr(output, "logits", output)  # Hugging Face models return a ModelOutput
    if not isinstance(logits, torch.Tensor):
        raise EvaluationError(f"{which} model returned {type(output).__name__}, not a tensor")
    return logits


def evaluate_pair(
    float_model: nn.Module,
    quant_model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
    task: Task,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Evaluation:
    """Run both models on every ``(inputs, targets or None)`` batch under inference mode and
    `summarize` the pair. ``task`` is ``"classification"`` (logits (b, C); targets None for
    every batch gives fidelity metrics only) or ``"lm"`` (logits (b, T, V), next-token targets
    required). Models must already be in eval mode: this function never mutates them."""
    if task not in ("classification", "lm"):
        raise EvaluationError(f"task must be 'classification' or 'lm', got {task!r}")
    for which, model in (("float", float_model), ("quantized", quant_model)):
        if model.training:
            raise EvaluationError(
                f"the {which} model is in training mode (dropout and batch-norm statistics "
                "would unpair the comparison); call .eval() on it first"
            )
    f_parts: list[SampleStats] = []
    q_parts: list[SampleStats] = []
    fid_parts: list[dict[str, torch.Tensor]] = []
    labelled: bool | None = None
    with torch.inference_mode():
        for inputs, targets in batches:
            if labelled is None:
                labelled = targets is not None
            elif labelled != (targets is not None):
                raise EvaluationError("some batches have targets and others do not")
            f_out = _logits(float_model(inputs), "float")
            q_out = _logits(quant_model(inputs), "quantized")
            fid_parts.append(fidelity_per_sample(f_out, q_out))
            if task == "classification":
                f_parts.append(classification_stats(f_out, targets))
                q_parts.append(classification_stats(q_out, targets))
            elif targets is None:
                raise EvaluationError("language-model evaluation needs next-token targets")
            else:
                f_parts.append(lm_stats(f_out, targets))
                q_parts.append(lm_stats(q_out, targets))
    if not fid_parts:
        raise EvaluationError("no batches to evaluate")
    fidelity = {key: torch.cat([part[key] for part in fid_parts]) for key in FIDELITY_KEYS}
    return summarize(
        concat_stats(f_parts),
        concat_stats(q_parts),
        fidelity,
        n_boot=n_boot,
        seed=seed,
        confidence=confidence,
    )


def concat_stats(parts: list[SampleStats]) -> SampleStats:
    def cat(name: str) -> torch.Tensor | None:
        values = [getattr(part, name) for part in parts]
        return None if values[0] is None else torch.cat(values)

    return SampleStats(
        n_samples=sum(part.n_samples for part in parts),
        correct=cat("correct"),
        nll=cat("nll"),
        tokens=cat("tokens"),
        similarity=cat("similarity"),
        score=cat("score"),
        predicted=cat("predicted"),
        label=cat("label"),
        word_errors=cat("word_errors"),
        words=cat("words"),
    )
