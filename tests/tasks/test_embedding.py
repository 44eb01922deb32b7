"""Sentence embeddings from encoders: pooling as the directory says (checked by hand),
Spearman's correlation with ties, the pair metric against a hand computation on a real BERT,
and W8A8 (per-token x per-channel) keeping the embeddings of a trained encoder within cosine
0.99 of float, end to end through the CLI."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from explorer import cli
from explorer.measure.evaluation import average_ranks, spearman
from explorer.sweep.context import ModelSource, open_context
from explorer.tasks import TaskError, detect_task
from explorer.tasks.embedding import Pooling, pool, read_pooling
from explorer.tasks.text import load_tokenizer

from .builders import sentences, train_tokenizer

transformers = pytest.importorskip("transformers")


def test_pooling_equals_a_hand_computation() -> None:
    torch.manual_seed(0)
    states = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    mean = torch.stack([states[0, :3].mean(0), states[1, :2].mean(0)])
    torch.testing.assert_close(pool(states, mask, Pooling("mean")), mean)
    torch.testing.assert_close(pool(states, mask, Pooling("cls")), states[:, 0])
    maxed = torch.stack([states[0, :3].amax(0), states[1, :2].amax(0)])
    torch.testing.assert_close(pool(states, mask, Pooling("max")), maxed)
    sqrt_len = torch.stack([states[0, :3].sum(0) / 3**0.5, states[1, :2].sum(0) / 2**0.5])
    torch.testing.assert_close(pool(states, mask, Pooling("mean_sqrt_len")), sqrt_len)
    unit = pool(states, mask, Pooling("mean", normalize=True))
    torch.testing.assert_close(unit, mean / mean.norm(dim=-1, keepdim=True))


def test_sentence_transformers_pooling_config(tmp_path: Path) -> None:
    assert read_pooling(tmp_path) == Pooling()
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling").mkdir()
    config = {"word_embedding_dimension": 64, "pooling_mode_cls_token": True}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(config))
    pooling = read_pooling(tmp_path)
    assert (pooling.mode, pooling.normalize) == ("cls", True)
    assert detect_task({"architectures": ["BertModel"]}, tmp_path) == "embedding"
    config["pooling_mode_mean_tokens"] = True
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(config))
    with pytest.raises(TaskError, match="exactly one pooling mode"):
        read_pooling(tmp_path)


def _hand_ranks(values: list[float]) -> list[float]:
    ordered = sorted(values)
    return [sum(i + 1 for i, o in enumerate(ordered) if o == v) / ordered.count(v) for v in values]


def _hand_spearman(x: list[float], y: list[float]) -> float:
    rx, ry = _hand_ranks(x), _hand_ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


def test_spearman_with_ties_against_a_hand_computation() -> None:
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    x, y = [1.0, 2.0, 2.0, 3.0, 5.0, 5.0, 5.0], [2.0, 1.0, 4.0, 4.0, 6.0, 0.5, 6.0]
    got = spearman(torch.tensor(x), torch.tensor(y))
    assert got == pytest.approx(_hand_spearman(x, y), abs=1e-12)
    # without ties: the textbook 1 - 6 sum(d^2) / (n (n^2 - 1))
    a, b = [0.3, 0.1, 0.9, 0.5, 0.7], [1.0, 3.0, 2.0, 5.0, 4.0]
    d2 = sum((p - q) ** 2 for p, q in zip(_hand_ranks(a), _hand_ranks(b), strict=True))
    assert spearman(torch.tensor(a), torch.tensor(b)) == pytest.approx(1 - 6 * d2 / (5 * 24))
    assert math.isnan(spearman(torch.ones(4), torch.arange(4.0)))


def write_pairs(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    first, second = sentences(n, seed=seed + 10), sentences(n, seed=seed + 11)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence1", "sentence2", "score"])
        for a, b in zip(first, second, strict=True):
            writer.writerow([a, b, rng.choice([0, 1, 2, 2.5, 3, 4, 5])])  # ties on purpose


def test_scored_pairs_give_spearman_of_the_cosine_similarity(
    bert_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "pairs.csv"
    write_pairs(data, 48)
    ctx = open_context(ModelSource(model=str(bert_dir), data=str(data)))
    assert ctx.task == "embedding" and ctx.metric == "spearman"
    assert list(ctx.workloads) == ["single", "batch32"]
    # by hand: each sentence alone (no padding), mean of the last hidden state
    tokenizer = load_tokenizer(bert_dir)
    model = transformers.BertModel.from_pretrained(bert_dir).eval()
    rows = list(csv.DictReader(data.open()))[12:]  # after 48 // 4 calibration pairs
    sims, scores = [], []
    with torch.no_grad():
        for row in rows:
            embs = [
                model(**tokenizer(row[key], return_tensors="pt")).last_hidden_state[0].mean(0)
                for key in ("sentence1", "sentence2")
            ]
            sims.append(float(F.cosine_similarity(embs[0], embs[1], dim=0)))
            scores.append(float(row["score"]))
    stats = ctx.reference.stats
    torch.testing.assert_close(
        stats.similarity, torch.tensor(sims, dtype=torch.float64), atol=1e-5, rtol=0
    )
    assert stats.spearman() == pytest.approx(_hand_spearman(sims, scores), abs=1e-6)
    result = ctx.reference.evaluate(ctx.model, n_boot=200)
    assert result.metrics["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert result.metrics_ci["spearman"] == (0.0, 0.0)
    assert "kl" not in result.metrics and "agreement" not in result.metrics


def test_class_labels_report_cosine_only(bert_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "labelled.jsonl"
    data.write_text(
        "\n".join(json.dumps({"text": s, "label": i % 3}) for i, s in enumerate(sentences(24)))
    )
    ctx = open_context(ModelSource(model=str(bert_dir), data=str(data)))
    assert ctx.metric is None and ctx.data is not None
    assert "no classification head: cosine to float only" in ctx.data.description
    data.write_text(json.dumps({"words": "no"}) + "\n")
    with pytest.raises(TaskError, match="needs sentence1, sentence2, score"):
        open_context(ModelSource(model=str(bert_dir), data=str(data)))


def train_encoder(path: Path, steps: int = 300) -> None:
    """A tiny BERT trained by masked-language modelling on generated sentences; its encoder
    (without the head) is saved as a BertModel with the tokenizer."""
    texts = sentences(600, seed=3)
    tokenizer = train_tokenizer(path, texts)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    model = transformers.BertForMaskedLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    enc = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(ids), (32,), generator=gen)
        x, m = ids[idx].clone(), mask[idx]
        masked = (torch.rand(x.shape, generator=gen) < 0.15) & m.bool()
        labels = torch.where(masked, x, -100)
        x[masked] = 2  # a special token stands in for [MASK]
        loss = model(input_ids=x, attention_mask=m, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.bert.save_pretrained(path)


@pytest.mark.slow
def test_w8a8_keeps_a_trained_encoder_within_cosine_099(tmp_path: Path) -> None:
    """Acceptance (issue 12): W8A8 per-token x per-channel, mean cosine to float >= 0.99."""
    model_dir = tmp_path / "encoder"
    train_encoder(model_dir)
    data = tmp_path / "pairs.csv"
    write_pairs(data, 96, seed=5)
    out, err = io.StringIO(), io.StringIO()
    args = ["sweep", "--model", str(model_dir), "--data", str(data), "--bits", "8"]
    args += ["--act-bits", "8", "--act-granularity", "token", "--granularity", "channel"]
    args += ["--repeats", "3", "--n-boot", "200", "--threads", "1"]
    args += ["--store", str(tmp_path / "r.sqlite"), "--json"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(args)
    assert code == 0, err.getvalue()
    doc = json.loads(out.getvalue().strip().splitlines()[-1])
    row = doc["rows"][-1]
    assert row["task"] == "embedding" and row["metric_name"] == "spearman"
    assert row["act_bits"] == 8 and row["weight_bits"] == 8
    assert row["metrics"]["cosine"] >= 0.99
    assert {"spearman", "cosine", "sqnr_db"} <= set(row["metrics"])
    assert row["latency_workload"] == "single" and {"single", "batch32"} <= set(row["latency"])
    assert row["tokens_evaluated"] is None
