"""``explorer search --target llamacpp --target-bpw``: a ggml type per tensor within a
bits-per-weight budget, verified in llama.cpp; ``explorer export --target llamacpp``: the measured
GGUF with its ``llama-quantize`` command and plan.

The model is a 256-wide one-block Llama, so every matrix takes the k-quants (no fallbacks) and the
uniform Q4_K sits exactly on the 4.5 bits-per-weight budget."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("gguf", reason="the llamacpp extra: pip install -e '.[llamacpp]'")
pytest.importorskip("transformers")
pytest.importorskip("llama_cpp", reason="the llamacpp extra: pip install -e '.[llamacpp]'")

import transformers  # noqa: E402
from tasks.builders import sentences, train_tokenizer  # noqa: E402

from explorer import cli  # noqa: E402
from explorer.export.gguf import read_types  # noqa: E402
from explorer.sweep.ggml_search import GgmlTensor, plan_of, uniform_bpw  # noqa: E402

from .llamacpp_model import save_tiny_llama  # noqa: E402

FORMATS = "q6_k,q4_k,q3_k"


def run_cli(args: list[str]) -> tuple[int, dict[str, Any] | None, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(args)
    lines = out.getvalue().strip().splitlines()
    return code, json.loads(lines[-1]) if code == 0 and lines else None, err.getvalue()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ggml_search")
    # 256 wide: every matrix takes the k-quants
    path = save_tiny_llama(folder / "model", hidden=256, layers=1)
    (folder / "text.txt").write_text(" ".join(sentences(150, seed=2)))
    return path


def common(model_dir: Path) -> list[str]:
    data = model_dir.parent / "text.txt"
    return ["--model", str(model_dir), "--data", str(data), "--threads", "1", "--json"]


@pytest.fixture(scope="module")
def searched(model_dir: Path) -> dict[str, Any]:
    args = ["search", *common(model_dir), "--target", "llamacpp", "--target-bpw", "4.5"]
    args += ["--formats", FORMATS, "--uniform", "closest", "--samples", "2"]
    args += ["--eval-tokens", "512", "--repeats", "2", "--n-boot", "100"]
    code, doc, err = run_cli(args)
    assert code == 0, err
    assert doc is not None
    return doc


def test_search_meets_the_budget_and_beats_the_closest_uniform(searched: dict[str, Any]) -> None:
    mixed, uniform = searched["rows"]
    assert (mixed["kind"], mixed["format"], mixed["target"]) == ("mixed", "mixed", "llamacpp")
    assert mixed["budget_bpw"] == 4.5
    # the file's tensor bytes give the bits the block layouts predicted, within the budget
    assert mixed["bits_per_weight_file"] == pytest.approx(mixed["predicted_bits_per_weight"])
    assert mixed["bits_per_weight_file"] == pytest.approx(mixed["bits_per_weight"])
    assert mixed["bits_per_weight_file"] <= 4.5
    # 9 matrices (7 in the block, embedding, output), each in one of the candidate types
    assert len(mixed["tensor_types"]) == 9
    assert set(mixed["tensor_types"].values()) <= set(FORMATS.split(","))
    assert len(set(mixed["tensor_types"].values())) > 1
    assert mixed["closest_uniform"] == "q4_k" and uniform["label"] == "q4_k"
    assert uniform["bits_per_weight_file"] == pytest.approx(4.5)
    # measured in llama.cpp on the same 512 tokens: the mix loses less than uniform Q4_K
    assert mixed["tokens_evaluated"] == uniform["tokens_evaluated"] == 512
    assert mixed["metrics"]["kl"] < uniform["metrics"]["kl"], (mixed["metrics"], uniform)
    assert mixed["latency_kind"] == "measured" and set(mixed["latency"]) == {"decode", "prefill"}
    table = searched["sensitivity"]["table"]
    assert searched["sensitivity"]["mode"] == "measured" and table["metric"] == "kl"
    assert all(d is not None and d >= 0 for row in table["damage"] for d in row)


def test_export_writes_the_measured_gguf_of_the_plan(
    searched: dict[str, Any], model_dir: Path, tmp_path: Path
) -> None:
    mixed = searched["rows"][0]
    (tmp_path / "row.json").write_text(json.dumps(mixed))
    out = tmp_path / "export"
    args = ["export", *common(model_dir), "--target", "llamacpp", "--plan"]
    args += [str(tmp_path / "row.json"), "--out", str(out), "--eval-tokens", "256"]
    code, doc, err = run_cli(args)
    assert code == 0, err
    assert doc is not None
    assert sorted(doc["target_files"]) == ["model.gguf", "plan.json", "quantize.sh"]
    written = {
        n: t for n, t in read_types(out / "model.gguf").items() if n in mixed["tensor_types"]
    }
    assert written == mixed["tensor_types"] == doc["tensor_types"]
    assert doc["bits_per_weight_file"] == pytest.approx(mixed["bits_per_weight_file"])
    plan = json.loads((out / "plan.json").read_text())
    assert plan["tensors"] == mixed["tensor_types"] and plan["measured"]["metrics"]["kl"] >= 0
    command = (out / "quantize.sh").read_text()
    for pattern, fmt in mixed["config"]["tensors"]:
        assert f"--tensor-type '{pattern}={fmt}'" in command
    assert f"--output-tensor-type {mixed['tensor_types']['output.weight']}" in command
    # a second export into the same folder needs --overwrite
    code, _, err = run_cli(args)
    assert code == 2 and "--overwrite" in err


def test_cli_errors_exit_2_with_one_line(model_dir: Path, tmp_path: Path) -> None:
    search = ["search", *common(model_dir), "--target", "llamacpp"]
    export = ["export", *common(model_dir), "--target", "llamacpp", "--out", str(tmp_path / "x")]
    cases = [
        (search, "needs a bits-per-weight budget: --target-bpw 4.5"),
        ([*search, "--target-bpw", "four"], "--target-bpw takes numbers"),
        ([*search, "--target-bpw", "4.5", "--formats", "q9_k"], "unknown ggml format 'q9_k'"),
        ([*search, "--target-bpw", "1.5", "--formats", FORMATS, "--samples", "1"], "the smallest"),
        (["search", *common(model_dir), "--target-bpw", "4.5"], "--target-bpw needs --target"),
        (export, "needs --formats TYPE (q4_k) or --plan FILE"),
        ([*export, "--formats", "q9_k"], "unknown ggml format 'q9_k'"),
        ([*export, "--formats", "q4_k", "--bits", "4"], "drop --bits"),
    ]
    for args, message in cases:
        code, _, err = run_cli(args)
        assert code == 2, (args, err)
        last = err.strip().splitlines()[-1]  # progress bars may come before it
        assert last.startswith(f"explorer {args[0]}: error: ") and message in last, err


def test_a_model_llama_cpp_cannot_run_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "gpt2"
    train_tokenizer(path, sentences(50, seed=1))
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=384)
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    (tmp_path / "text.txt").write_text(" ".join(sentences(40, seed=2)))
    args = ["export", "--model", str(path), "--data", str(tmp_path / "text.txt"), "--json"]
    args += ["--target", "llamacpp", "--formats", "q4_k", "--out", str(tmp_path / "out")]
    code, _, err = run_cli(args)
    assert code == 2 and "supports llama, mistral, qwen2 models, not 'gpt2'" in err, err


def test_plan_overrides_match_only_their_tensor() -> None:
    types = {f"blk.{i}.ffn_down.weight": "q4_k" for i in range(12)}
    types |= {"blk.1.ffn_down.weight": "q6_k", "token_embd.weight": "q8_0"}
    plan = plan_of(types)
    assert plan.default == "q4_k" and plan.token_embedding == "q8_0"
    assert plan.tensors == ((re.escape("blk.1.ffn_down"), "q6_k"),)
    for name, fmt in types.items():
        assert plan.asked(name).name == fmt, name  # blk\.1\. does not match blk.11
    # bits per weight from the block layouts: a 64-wide row falls back (q4_k -> q5_0, 5.5 bits)
    tensors = [GgmlTensor("a.weight", "a", 4, 256), GgmlTensor("b.weight", "b", 4, 64)]
    assert uniform_bpw(tensors, "q4_k") == pytest.approx((4.5 * 1024 + 5.5 * 256) / 1280)


def test_proxy_is_the_input_weighted_error_of_ggml_weights(model_dir: Path) -> None:
    """Proxy mode: each linear tensor's damage is sum_j E[x_j^2] ||W[:, j] - Q(W)[:, j]||^2 with
    Q ggml's own round trip (checked in float64 on ffn_down), the embedding's the squared error
    of its rows weighted by token frequency; both fall as the types widen."""
    from explorer.quant import ggml
    from explorer.sweep.ggml_search import measure_ggml_sensitivity

    model = transformers.LlamaForCausalLM.from_pretrained(str(model_dir)).float().eval()
    seeded = torch.Generator().manual_seed(0)
    windows = torch.randint(0, model.config.vocab_size, (2, 64), generator=seeded)
    found = measure_ggml_sensitivity(model, None, windows, FORMATS.split(","), mode="proxy")
    table = found.table
    assert (found.mode, table.metric, table.settings) == (
        "proxy",
        "proxy",
        ("q6_k", "q4_k", "q3_k"),
    )
    for layer, row in zip(table.layers, table.damage, strict=True):
        assert row[0] < row[1] < row[2], (layer, row)
    inputs = []
    down = model.model.layers[0].mlp.down_proj
    hook = down.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    with torch.inference_mode():
        model(windows)
    hook.remove()
    energy = inputs[0].double().reshape(-1, down.in_features).square().mean(0)  # (K,)
    w = down.weight.detach()
    err = (w - ggml.round_trip(w, ggml.format_of("q4_k"))).double().square()  # (N, K)
    expected = float((energy[None, :] * err).sum())
    got = table.damage[table.layers.index("blk.0.ffn_down.weight")][1]
    assert got == pytest.approx(expected, rel=1e-5)
