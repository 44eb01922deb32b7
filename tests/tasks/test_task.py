"""The task concept: recognised from the architecture (and overridable), outputs taken by name,
Hugging Face models without data evaluated on their own kind of input, and a float reference
with non-finite outputs refused naming the layer where they first appear."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from explorer.measure.evaluation import NonFiniteOutputError
from explorer.models.catalog import ModelSource as CatalogSource
from explorer.sweep.context import FloatReference, ModelSource, open_context
from explorer.tasks import TaskError, canonical_task, detect_task, named_output

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize(
    ("arch", "model_type", "task"),
    [
        ("LlamaForCausalLM", "llama", "lm"),
        ("Qwen2ForCausalLM", "qwen2", "lm"),
        ("GPT2LMHeadModel", "gpt2", "lm"),
        ("BertModel", "bert", "embedding"),
        ("XLMRobertaModel", "xlm-roberta", "embedding"),
        ("BertForSequenceClassification", "bert", "classification"),
        ("ViTForImageClassification", "vit", "classification"),
        ("BertForMaskedLM", "bert", "fidelity"),
        ("WhisperForConditionalGeneration", "whisper", "speech"),
        ("LlamaModel", "llama", "fidelity"),
    ],
)
def test_detect_task_from_the_architecture(arch: str, model_type: str, task: str) -> None:
    assert detect_task({"architectures": [arch], "model_type": model_type}) == task


def test_task_names_and_the_source_field() -> None:
    assert canonical_task("causal-lm") == "lm" and canonical_task("Embedding") == "embedding"
    with pytest.raises(TaskError, match="unknown task 'translation'"):
        canonical_task("translation")
    # an old ModelSource JSON (no task) still loads, and None is never written
    old = {"model": "tiny-lm", "data": "x.txt"}
    assert CatalogSource.from_dict(old).task is None
    assert CatalogSource.from_dict(old).to_dict() == old
    assert CatalogSource(model="d", task="embedding").to_dict() == {
        "model": "d",
        "task": "embedding",
    }


def test_named_output_takes_the_tensor_by_name() -> None:
    out = transformers.modeling_outputs.BaseModelOutput(last_hidden_state=torch.ones(1, 2, 3))
    assert named_output(out, "last_hidden_state").shape == (1, 2, 3)
    with pytest.raises(TaskError, match="has no `logits` tensor \\(it has: last_hidden_state\\)"):
        named_output(out, "logits")
    plain = torch.zeros(2)
    assert named_output(plain, "logits") is plain


def test_encoder_without_data_is_an_embedding_model(bert_dir: Path) -> None:
    """A BertModel's output has no logits; it used to crash on `.ndim` (issue 12)."""
    ctx = open_context(ModelSource(model=str(bert_dir)))
    assert ctx.task == "embedding" and ctx.metric is None
    result = ctx.reference.evaluate(ctx.model, n_boot=100)
    assert result.metrics["cosine"] == pytest.approx(1.0, abs=1e-12)
    forced = open_context(ModelSource(model=str(bert_dir), task="fidelity"))
    assert forced.task == "fidelity"
    assert forced.reference.evaluate(forced.model, n_boot=100).metrics["kl"] == 0.0


def test_causal_lm_without_data_gets_fidelity_and_decode(llama_dir: Path) -> None:
    ctx = open_context(ModelSource(model=str(llama_dir)))
    assert ctx.task == "lm" and ctx.metric is None and list(ctx.workloads)[0] == "decode"
    assert ctx.data is not None and "random token ids" in ctx.data.description
    result = ctx.reference.evaluate(ctx.model, n_boot=100)
    assert result.metrics["kl_p99"] == 0.0 and "perplexity" not in result.metrics


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def test_non_finite_float_reference_names_the_layer() -> None:
    model = TwoLayers().eval()
    with torch.no_grad():
        model.fc1.weight.fill_(3e38)  # finite, but every dot product overflows float32
    x = torch.ones(4, 8)
    with pytest.raises(NonFiniteOutputError, match=r"first appear in the output of fc1 \(Linear\)"):
        FloatReference.compute(model, "classification", [(x, torch.zeros(4, dtype=torch.long))])
    with torch.no_grad():
        model.fc1.weight.fill_(0.1)
    ref = FloatReference.compute(model, "fidelity", [(x, None)])
    assert ref.stats.n_samples == 4


def test_per_layer_sensitivity_runs_on_both_tasks(llama_dir: Path, bert_dir: Path) -> None:
    from explorer.sweep.sensitivity import measure_sensitivity

    lm = open_context(ModelSource(model=str(llama_dir), data=str(llama_dir.parent / "text.txt")))
    result = measure_sensitivity(
        lm, ["W4 g32"], layers=["model.layers.0.mlp.down_proj"], latency=False, samples=4
    )
    assert result.metric == "perplexity" and result.float_metric is not None
    encoder = open_context(ModelSource(model=str(bert_dir)))
    result = measure_sensitivity(
        encoder, ["W4 g32"], layers=["encoder.layer.0.output.dense"], latency=False, samples=8
    )
    assert result.metric is None  # calibration sentences carry no scores: fidelity only


def test_float_outputs_over_the_budget_are_recomputed_with_equal_results(
    llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from explorer.nn import quantize_model
    from explorer.quant.config import Plan, QuantConfig
    from explorer.sweep import context

    ctx = open_context(ModelSource(model=str(llama_dir), data=str(llama_dir.parent / "text.txt")))
    qmodel = quantize_model(
        ctx.model, Plan.uniform(QuantConfig(weight_bits=4, granularity="channel"))
    )
    kept = ctx.reference
    assert kept.logits and kept.model is None
    monkeypatch.setattr(context, "REFERENCE_BYTES", 1024)
    recomputed = FloatReference.compute(ctx.model, ctx.task_spec, ctx.eval_batches())
    assert not recomputed.logits and recomputed.model is ctx.model
    a, b = kept.evaluate(qmodel, n_boot=200), recomputed.evaluate(qmodel, n_boot=200)
    assert a.metrics == b.metrics and a.metrics_ci == b.metrics_ci


def test_text_for_any_other_model_is_tokenized_never_bytes(llama_dir: Path, tmp_path: Path) -> None:
    """A masked LM (task `fidelity`) given text: token windows from its own tokenizer."""
    from explorer.tasks.text import load_tokenizer

    from .builders import sentences, train_tokenizer

    model_dir = tmp_path / "mlm"
    tokenizer = train_tokenizer(model_dir, sentences(200, seed=1))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    transformers.BertForMaskedLM(config).save_pretrained(model_dir)
    text = llama_dir.parent / "text.txt"
    ctx = open_context(ModelSource(model=str(model_dir), data=str(text)))
    assert ctx.task == "fidelity" and ctx.metric is None and ctx.tokens_evaluated is None
    ids = load_tokenizer(model_dir)(text.read_text())["input_ids"]
    x = ctx.eval_split[0]
    rows, length = ctx.calibration_split[0].shape
    held = ids[rows * (length + 1) :]  # after the calibration sequences, as for a causal LM
    assert x.shape[1] == 127 and x[0].tolist() == held[:127]
    assert "token windows of text.txt" in ctx.data.description
    result = ctx.reference.evaluate(ctx.model, n_boot=100)
    assert result.metrics["kl"] == 0.0


def test_task_option_on_the_command_line(bert_dir: Path, tmp_path: Path) -> None:
    import contextlib
    import io
    import json

    from explorer import cli

    def run(*extra: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        args = ["sweep", "--model", str(bert_dir), "--bits", "8", "--granularity", "channel"]
        args += ["--repeats", "3", "--n-boot", "100", "--threads", "1"]
        args += ["--store", str(tmp_path / "r.sqlite"), *extra, "--json"]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(args)
            except SystemExit as exc:  # argparse refuses a bad choice
                code = int(exc.code or 0)
        return code, out.getvalue(), err.getvalue()

    code, _, err = run("--task", "translation")
    assert code == 2 and "invalid choice: 'translation'" in err
    code, _, err = run("--task", "speech")
    assert (
        code == 2 and "runs Whisper models (WhisperForConditionalGeneration), not BertModel" in err
    )
    code, out, err = run("--task", "fidelity")
    assert code == 0, err
    rows = json.loads(out.strip().splitlines()[-1])["rows"]
    assert {r["task"] for r in rows} == {"fidelity"}
    code, out, err = run()
    assert code == 0, err
    rows = json.loads(out.strip().splitlines()[-1])["rows"]
    assert {r["task"] for r in rows} == {"embedding"}
    assert {"single", "batch32"} <= set(rows[-1]["latency"])
