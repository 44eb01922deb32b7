"""Hugging Face sequence classifiers on labelled text: labels by index or by the config's names,
accuracy and macro-F1 against a direct computation, and the row end to end through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from explorer.sweep.context import ModelSource, open_context
from explorer.tasks import TaskError
from explorer.tasks.text import load_tokenizer

from .builders import cli_w8_row, sentences, train_tokenizer

transformers = pytest.importorskip("transformers")
NAMES = ("negative", "neutral", "positive")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("classifier")
    model_dir = root / "model"
    tokenizer = train_tokenizer(model_dir, sentences(300, seed=1))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        pad_token_id=0,
        num_labels=3,
        id2label=dict(enumerate(NAMES)),
        label2id={name: i for i, name in enumerate(NAMES)},
    )
    transformers.BertForSequenceClassification(config).save_pretrained(model_dir)
    with (root / "labelled.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i, text in enumerate(sentences(60, seed=4)):
            writer.writerow([text, NAMES[i % 3] if i % 2 else str(i % 3)])  # names and indices
    return model_dir


def macro_f1_by_hand(pred: list[int], true: list[int]) -> float:
    scores = []
    for c in sorted(set(pred) | set(true)):
        tp = sum(p == c and t == c for p, t in zip(pred, true, strict=True))
        scores.append(2 * tp / (pred.count(c) + true.count(c)))
    return sum(scores) / len(scores)


def test_labelled_text_gives_accuracy_and_macro_f1(classifier: Path) -> None:
    data = classifier.parent / "labelled.csv"
    ctx = open_context(ModelSource(model=str(classifier), data=str(data)))
    assert ctx.task == "classification" and ctx.metric == "accuracy"
    assert list(ctx.workloads) == ["single", "batch32"]
    tokenizer = load_tokenizer(classifier)
    model = transformers.BertForSequenceClassification.from_pretrained(classifier).eval()
    rows = list(csv.DictReader(data.open()))[15:]  # after 60 // 4 for calibration
    true = [NAMES.index(r["label"]) if r["label"] in NAMES else int(r["label"]) for r in rows]
    with torch.no_grad():
        pred = [
            int(model(**tokenizer(r["text"], return_tensors="pt")).logits.argmax()) for r in rows
        ]
    stats = ctx.reference.stats
    assert stats.label.tolist() == true and stats.predicted.tolist() == pred
    assert stats.accuracy() == pytest.approx(
        sum(p == t for p, t in zip(pred, true, strict=True)) / len(true)
    )
    assert stats.macro_f1() == pytest.approx(macro_f1_by_hand(pred, true))
    same = ctx.reference.evaluate(ctx.model, n_boot=200)
    assert same.metrics_ci["macro_f1"] == (0.0, 0.0) and same.metrics_ci["accuracy"] == (0.0, 0.0)


def test_unknown_label_names_the_record(classifier: Path, tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    records = [{"text": t, "label": "positive"} for t in sentences(10)]
    records[6]["label"] = "great"
    data.write_text("\n".join(json.dumps(r) for r in records))
    with pytest.raises(TaskError, match=r"bad.jsonl record 7: label 'great' is neither"):
        open_context(ModelSource(model=str(classifier), data=str(data)))


def test_sequence_classifier_row_through_the_cli(classifier: Path, tmp_path: Path) -> None:
    row = cli_w8_row(classifier, classifier.parent / "labelled.csv", tmp_path / "r.sqlite")
    assert row["task"] == "classification" and row["metric_name"] == "accuracy"
    assert {"accuracy", "macro_f1", "sqnr_db", "cosine", "agreement", "kl"} <= set(row["metrics"])
    assert row["latency_workload"] == "single" and "batch32" in row["latency"]
