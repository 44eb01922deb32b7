"""Causal language models from a Hugging Face directory with the directory's own tokenizer:
strided windows scored exactly once, perplexity against a float64 reference, per-token KL and
same top token, the decode workload's fixed-length KV cache, and the sweep's row end to end."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from explorer import cli
from explorer.sweep.context import ModelContext, ModelSource, open_context
from explorer.tasks import TaskError
from explorer.tasks.causal_lm import IGNORE, strided_windows
from explorer.tasks.text import load_tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def lm(llama_dir: Path) -> ModelContext:
    return open_context(ModelSource(model=str(llama_dir), data=str(llama_dir.parent / "text.txt")))


def held_out_ids(ctx: ModelContext, llama_dir: Path) -> torch.Tensor:
    """The tokens of the evaluated text: the tokenizer's ids after the calibration sequences."""
    tokenizer = load_tokenizer(llama_dir)
    ids = torch.tensor(tokenizer((llama_dir.parent / "text.txt").read_text())["input_ids"])
    x_cal, _ = ctx.calibration_split
    return ids[x_cal.shape[0] * (x_cal.shape[1] + 1) :]


def test_strided_windows_score_every_token_but_the_first_exactly_once() -> None:
    ids = torch.arange(100, 123)  # N = 23
    x, y = strided_windows(ids, window=8, stride=4, pad_id=-1)
    assert x.shape == y.shape == (5, 7)  # windows start at 0, 4, 8, 12, 16 (16 + 8 > 23)
    assert torch.equal(x[0], ids[:7]) and torch.equal(y[0], ids[1:8])  # the first scores all
    # the second re-reads 4..7 as context and scores targets 8..11 only
    assert torch.equal(x[1], ids[4:11])
    assert y[1].tolist() == [IGNORE] * 3 + ids[8:12].tolist()
    # the last window (16..22) is padded on the right, and scores 20..22
    assert x[4].tolist() == ids[16:22].tolist() + [-1]
    assert y[4].tolist() == [IGNORE] * 3 + ids[20:23].tolist() + [IGNORE]
    scored = y[y != IGNORE]
    assert torch.equal(scored, ids[1:])  # each target once, in order: N - 1 tokens
    with pytest.raises(TaskError, match="stride 8 must lie in"):
        strided_windows(ids, window=8, stride=8)


def test_text_is_tokenized_with_the_directory_tokenizer(lm: ModelContext, llama_dir: Path) -> None:
    held = held_out_ids(lm, llama_dir)
    x, y = lm.eval_split
    # windows of min(512, max_position_embeddings = 256) tokens, stride 128
    assert x.shape[1] == 255 and lm.data is not None and "stride 128" in lm.data.description
    assert torch.equal(y[y != IGNORE], held[1:])  # the tokenizer's own ids, each scored once
    assert lm.tokens_evaluated == len(held) - 1 == int((y != IGNORE).sum())
    assert torch.equal(x[0], held[:255])
    assert lm.task == "lm" and lm.metric == "perplexity"
    assert lm.data.tokenizer is not None and "384 tokens" in lm.data.tokenizer
    assert list(lm.workloads) == ["decode", "prefill"]


def test_perplexity_equals_a_float64_reference(lm: ModelContext, llama_dir: Path) -> None:
    """The Hugging Face guide's strided loop, in float64, on the same model and tokens.
    Tolerance: float32 logits against float64 ones, rtol 1e-5 on the perplexity."""
    held = held_out_ids(lm, llama_dir)
    model = transformers.LlamaForCausalLM.from_pretrained(llama_dir).double().eval()
    window, stride = 256, 128
    nll, count, prev_end = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, len(held), stride):
            end = min(begin + window, len(held))
            ids = held[begin:end].unsqueeze(0)
            logits = model(ids).logits[0, :-1]  # predicts ids[1:]
            targets = ids[0, 1:].clone()
            new = end - max(prev_end, begin + 1)  # the targets beyond the overlap
            targets[: len(targets) - new] = IGNORE
            nll += float(F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum"))
            count += new
            prev_end = end
            if end == len(held):
                break
    assert count == lm.tokens_evaluated
    expected = torch.tensor(nll / count).exp().item()
    assert lm.reference.stats.perplexity() == pytest.approx(expected, rel=1e-5)


def test_float_model_against_itself_is_exact(lm: ModelContext) -> None:
    result = lm.reference.evaluate(lm.model, n_boot=200)
    m = result.metrics
    assert m["kl"] == 0.0 and m["kl_p99"] == 0.0
    assert m["same_top"] == 1.0 and m["agreement"] == 1.0
    assert result.metrics_ci["perplexity"] == (0.0, 0.0)
    assert result.metrics_ci["kl_p99"] == (0.0, 0.0)


def test_decode_runs_one_token_on_a_128_token_cache(lm: ModelContext) -> None:
    step = lm.workloads["decode"](lm.model)
    prompt = lm.data.workload_inputs["prompt"]
    assert prompt.shape == (1, 128)
    outputs = []
    for _ in range(3):
        outputs.append(step())
        assert step.cache.get_seq_length() == 128  # cropped back after every call
    assert outputs[0].shape == (1, 1, lm.model.config.vocab_size)
    torch.testing.assert_close(outputs[1], outputs[0])  # every call does the same work
    # the step's logits are those of the full sequence prompt + next token at its last position
    token = lm.model(prompt).logits[:, -1:].argmax(-1)
    with torch.no_grad():
        full = lm.model(torch.cat([prompt, token], dim=1)).logits[:, -1:]
    torch.testing.assert_close(outputs[0], full, rtol=1e-4, atol=1e-4)
    prefill = lm.workloads["prefill"](lm.model)()
    assert prefill.shape == (1, 128, lm.model.config.vocab_size)


def test_text_without_a_tokenizer_is_refused_unless_bytes(llama_dir: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(llama_dir / name, bare / name)
    text = llama_dir.parent / "text.txt"
    with pytest.raises(TaskError, match=r"has no tokenizer and its vocabulary \(384 tokens\)"):
        open_context(ModelSource(model=str(bare), data=str(text)))
    # token ids in a tensor file still work, without a tokenizer
    ids = torch.randint(0, 384, (40, 33), generator=torch.Generator().manual_seed(0))
    save_file(
        {"inputs": ids[:, :-1].contiguous(), "labels": ids[:, 1:].contiguous()},
        tmp_path / "ids.safetensors",
    )
    ctx = open_context(ModelSource(model=str(bare), data=str(tmp_path / "ids.safetensors")))
    assert ctx.task == "lm" and ctx.metric == "perplexity" and ctx.tokens_evaluated == 30 * 32


def test_jsonl_text_field(llama_dir: Path, tmp_path: Path) -> None:
    lines = (llama_dir.parent / "text.txt").read_text().split(". ")
    data = tmp_path / "text.jsonl"
    data.write_text("\n".join(json.dumps({"text": line}) for line in lines))
    ctx = open_context(ModelSource(model=str(llama_dir), data=str(data)))
    assert ctx.metric == "perplexity" and ctx.tokens_evaluated > 1000
    data.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(TaskError, match="text.jsonl record 2: field 'text'"):
        open_context(ModelSource(model=str(llama_dir), data=str(data)))


def test_sweep_row_of_a_causal_lm_through_the_cli(llama_dir: Path, tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(
            [
                "sweep",
                "--model",
                str(llama_dir),
                "--data",
                str(llama_dir.parent / "text.txt"),
                "--bits",
                "8",
                "--granularity",
                "channel",
                "--repeats",
                "3",
                "--n-boot",
                "200",
                "--threads",
                "1",
                "--store",
                str(tmp_path / "r.sqlite"),
                "--json",
            ]
        )
    assert code == 0, err.getvalue()
    doc = json.loads(out.getvalue().strip().splitlines()[-1])
    rows = doc["rows"]
    (row,) = [r for r in rows if r["kind"] != "baseline" and r["act_bits"] is None]
    assert row["task"] == "lm" and row["metric_name"] == "perplexity"
    assert {"perplexity", "kl", "kl_p99", "same_top", "agreement", "sqnr_db"} <= set(row["metrics"])
    assert set(row["metrics_ci"]) == set(row["metrics"])
    assert row["tokens_evaluated"] > 1000
    assert row["latency_workload"] == "decode" and {"decode", "prefill"} <= set(row["latency"])
    assert all(r["tokens_evaluated"] == row["tokens_evaluated"] for r in rows)
    # W8 per-channel weights: perplexity within 1 % of float (a random-init model is flat)
    (baseline,) = [r for r in rows if r["label"].startswith("fp32")]
    assert baseline["metrics"]["kl"] == 0.0 and baseline["metrics"]["same_top"] == 1.0
    baseline = baseline["metrics"]["perplexity"]
    assert row["metrics"]["perplexity"] == pytest.approx(baseline, rel=0.01)


def test_evaluation_budget_caps_the_scored_tokens(
    llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from explorer.tasks import causal_lm

    monkeypatch.setattr(causal_lm, "EVAL_TOKENS", 1000)
    ctx = open_context(ModelSource(model=str(llama_dir), data=str(llama_dir.parent / "text.txt")))
    assert ctx.tokens_evaluated == 1000
    assert ctx.data is not None and "(the budget of 1,000;" in ctx.data.description
