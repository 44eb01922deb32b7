"""Encoders on the ONNX Runtime target: a tiny sentence-transformers BERT directory ([CLS]
pooling, normalised, as its 1_Pooling config says) and a tiny BERT sequence classifier, each
exported with input_ids + attention_mask (+ token_type_ids), evaluated by the sweep's own rows
in ORT against the torch float reference, and exported with a run_onnx.py that reproduces the
measured embeddings in a fresh process."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
transformers = pytest.importorskip("transformers")

from tasks.builders import bert_config, sentences, train_tokenizer  # noqa: E402

from explorer.bundle import target_files  # noqa: E402
from explorer.nn.convert import quantize_model  # noqa: E402
from explorer.quant.config import Plan, QuantConfig  # noqa: E402
from explorer.sweep.context import ModelContext, ModelSource, open_context  # noqa: E402
from explorer.sweep.runner import RunSettings, evaluate_entry  # noqa: E402
from explorer.sweep.space import entry_for_plan  # noqa: E402
from explorer.targets import Artifact, Target, TargetError, TargetModule, get_target  # noqa: E402

# ORT's dynamic activations: per tensor, asymmetric uint8 (DynamicQuantizeMatMul)
W8A8 = QuantConfig(
    weight_bits=8, act_bits=8, act_mode="dynamic", act_granularity="tensor", act_symmetric=False
)
Built = tuple[nn.Module, Target, Artifact]  # the quantized model, its target, its artifact
FP32 = entry_for_plan(Plan.uniform(None), kind="baseline", label="fp32")
ORT = RunSettings(n_boot=100, warmup=1, repeats=2, per_layer=False, target="onnxruntime")


SMALL = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}  # half width


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sentence-transformers directory: a BertModel, [CLS] pooling, then Normalize; and
    ``pairs.csv`` (sentence1, sentence2, score) beside it."""
    root = tmp_path_factory.mktemp("st")
    model_dir = root / "model"
    tokenizer = train_tokenizer(model_dir, sentences(200, seed=1))
    torch.manual_seed(0)
    transformers.BertModel(
        bert_config(len(tokenizer), **SMALL), add_pooling_layer=False
    ).save_pretrained(model_dir)
    kinds = {"": "Transformer", "1_Pooling": "Pooling", "2_Normalize": "Normalize"}
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(kinds.items())
    ]
    (model_dir / "modules.json").write_text(json.dumps(modules))
    (model_dir / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": 32, "pooling_mode_cls_token": True}
    (model_dir / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    rng = random.Random(0)
    with (root / "pairs.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence1", "sentence2", "score"])
        for a, b in zip(sentences(32, seed=10), sentences(32, seed=11), strict=True):
            writer.writerow([a, b, rng.choice([0, 1, 2, 3, 4, 5])])
    return model_dir


@pytest.fixture(scope="module")
def embedding_ctx(embedder: Path) -> ModelContext:
    ctx = open_context(ModelSource(model=str(embedder), data=str(embedder.parent / "pairs.csv")))
    assert ctx.task == "embedding" and ctx.metric == "spearman"
    assert (ctx.task_spec.pooling.mode, ctx.task_spec.pooling.normalize) == ("cls", True)
    return ctx


@pytest.fixture(scope="module")
def w8a8(embedding_ctx: ModelContext) -> Built:
    """The W8A8 model and its ORT artifact, built as the sweep builds them (the first
    evaluation batch as the example input, the context's calibration inputs)."""
    ctx = embedding_ctx
    calibration = ctx.calibration_inputs(128)
    quantized = quantize_model(ctx.model, Plan.uniform(W8A8), calibration)
    target = get_target("onnxruntime", threads=1)
    return quantized, target, target.build(quantized, ctx.eval_batches()[0][0], calibration)


def test_embedding_rows_in_onnxruntime(embedding_ctx: ModelContext, w8a8: Built) -> None:
    ctx = embedding_ctx
    # float in ORT: the same embeddings as torch's float model, up to summation order
    fp32 = evaluate_entry(ctx, FP32, ORT)
    assert fp32["target"] == "onnxruntime"
    assert fp32["metrics"]["cosine"] >= 0.9999
    float_spearman = ctx.reference.stats.spearman()
    assert fp32["metrics"]["spearman"] == pytest.approx(float_spearman, abs=1e-3)
    # both sentence workloads are timed in ORT, pooling outside the graph as natively
    assert fp32["latency_workload"] == "single" and set(fp32["latency"]) == {"single", "batch32"}
    assert all(w["median_ms"] > 0 for w in fp32["latency"].values())
    # W8A8 (dynamic activations, per-channel weights) in ORT against the same float reference
    _, target, art = w8a8
    result = ctx.reference.evaluate(TargetModule(art), n_boot=100)
    assert result.metrics["cosine"] >= 0.99
    assert "spearman" in result.metrics_ci
    kernels = {name: info["kernels"] for name, info in art.layers.items()}
    # BertModel.from_pretrained adds a pooler that last_hidden_state never reaches: the
    # exporter prunes it, and the layer says so instead of failing the row
    assert kernels.pop("pooler.dense") == []
    assert art.layers["pooler.dense"]["note"].startswith("not in the exported graph")
    assert len(kernels) == 2 * 6  # q, k, v, attention output, intermediate, output per layer
    # an integer product on every layer; on (B, T, C) inputs the bias stays a float Add after
    # it (or fuses onward, as into the intermediate layer's BiasGelu)
    assert all(k[0] == "DynamicQuantizeMatMul" for k in kernels.values()), kernels
    # the profiler's node times land on the encoder's layers
    # (/inner/encoder/layer.0/attention/self/query/MatMul ...)
    run = ctx.workloads["single"](TargetModule(art))
    report = target.layer_report(art, run, repeats=2)
    assert all(report[name]["latency_ms"] > 0 for name in kernels), report


def test_classifier_accuracy_in_onnxruntime_equals_float(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    tokenizer = train_tokenizer(model_dir, sentences(200, seed=1))
    torch.manual_seed(0)
    config = bert_config(len(tokenizer), num_labels=3, **SMALL)
    transformers.BertForSequenceClassification(config).save_pretrained(model_dir)
    data = tmp_path / "labelled.jsonl"
    records = [{"text": t, "label": i % 3} for i, t in enumerate(sentences(40, seed=4))]
    data.write_text("\n".join(json.dumps(r) for r in records))
    ctx = open_context(ModelSource(model=str(model_dir), data=str(data)))
    assert ctx.task == "classification"
    row = evaluate_entry(ctx, FP32, ORT)
    stats = ctx.reference.stats
    # the same predictions as the torch float model on the same (padded) texts
    assert row["metrics"]["accuracy"] == stats.accuracy()
    assert row["metrics"]["macro_f1"] == pytest.approx(stats.macro_f1(), abs=1e-12)
    assert row["metrics"]["agreement"] == 1.0 and row["metrics"]["sqnr_db"] > 60
    assert set(row["latency"]) == {"single", "batch32"}


def test_exported_script_reproduces_the_embeddings(
    embedding_ctx: ModelContext, w8a8: Built, tmp_path: Path
) -> None:
    ctx = embedding_ctx
    quantized, _, art = w8a8
    files = target_files(ctx, quantized, "onnxruntime", tmp_path)  # what `explorer export` writes
    assert set(files) == {"onnx", "script"}
    # the exported file is the measured one, byte for byte
    assert files["onnx"].read_bytes() == art.payload
    x = ctx.eval_batches()[0][0][:4]  # (4, 2 sentences, ids and mask, T)
    flat = x.reshape(-1, 2, x.shape[-1])
    ids, mask = flat[:, 0].numpy(), flat[:, 1].numpy()
    np.savez(tmp_path / "inputs.npz", input_ids=ids, attention_mask=mask)
    with torch.no_grad():  # the measured artifact, pooled by the task itself
        expected = ctx.task_spec.outputs(TargetModule(art), x).reshape(len(flat), -1)
    out = tmp_path / "e.npy"
    command = [
        sys.executable,
        str(files["script"]),
        str(tmp_path / "inputs.npz"),
        "--save",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"embeddings ({len(flat)}, 32)")
    got = torch.from_numpy(np.load(out))
    # the same graph and thread count in another process: equal up to float32 rounding
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # normalised [CLS] embeddings, as the directory's pooling config asks
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(len(flat)), atol=1e-5, rtol=0)


def test_a_layer_shared_across_blocks_is_refused_with_the_reason() -> None:
    """ALBERT runs one set of layers in every block: the plan, written at one call of each
    layer, would miss the others, so the row is refused (the float model still exports)."""
    config = transformers.AlbertConfig(
        vocab_size=64, embedding_size=16, num_hidden_layers=2, max_position_embeddings=32, **SMALL
    )
    torch.manual_seed(0)
    model = transformers.AlbertModel(config).eval()
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    quantized = quantize_model(model, Plan.uniform(W8A8), ids)
    with pytest.raises(TargetError) as err:
        get_target("onnxruntime", threads=1).build(quantized, ids)
    assert str(err.value) == (
        "onnxruntime cannot run layer encoder.albert_layer_groups.0.albert_layers.0.attention."
        "query as planned: the graph calls it 2 times (a layer shared across blocks) and the "
        "plan is written at one call; the native target still runs this model"
    )
