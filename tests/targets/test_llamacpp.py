"""llama.cpp as a target: a GGUF of a tiny Llama loads in llama.cpp, tokenizes as Hugging Face
does, gives the float model's logits (F32 and F16), llama-quantize writes the bytes our writer
writes, and ``explorer sweep --target llamacpp --formats ...`` gives rows of the runtime's own
perplexity, KL and times."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gguf")
pytest.importorskip("transformers")
llama_cpp = pytest.importorskip("llama_cpp")

from explorer import cli  # noqa: E402
from explorer.export.gguf import GgufPlan, write_gguf  # noqa: E402
from explorer.targets import TargetError, TargetModule, get_target  # noqa: E402
from explorer.targets.llamacpp import LlamaCppModel  # noqa: E402

from .llamacpp_model import TEXT, load_float, save_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    path = save_tiny_llama(tmp_path_factory.mktemp("llamacpp") / "model")
    return path, load_float(path)


@pytest.fixture(scope="module")
def windows(llama: tuple[Path, torch.nn.Module]) -> torch.Tensor:
    """Two windows of 96 token ids of generated text."""
    from tasks.builders import sentences
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(llama[0]))
    ids = tok(" ".join(sentences(60, seed=3)))["input_ids"]
    return torch.tensor(ids[:192]).view(2, 96)


def test_tokenizer_gives_hugging_faces_ids(llama: tuple[Path, torch.nn.Module], tmp_path) -> None:
    from transformers import AutoTokenizer

    path, model = llama
    write_gguf(model, path, tmp_path / "f16.gguf")
    runtime = LlamaCppModel(tmp_path / "f16.gguf", 128, threads=1)
    hf = AutoTokenizer.from_pretrained(str(path))(TEXT, add_special_tokens=False)["input_ids"]
    assert runtime.tokenize(TEXT) == hf


@pytest.mark.parametrize("fmt", ["f32", "f16"])
def test_float_logits_agree_with_ours(
    fmt: str, llama: tuple[Path, torch.nn.Module], windows: torch.Tensor, tmp_path: Path
) -> None:
    path, model = llama
    write_gguf(model, path, tmp_path / "m.gguf", GgufPlan(fmt))
    runtime = LlamaCppModel(tmp_path / "m.gguf", 128, threads=1)
    ours = runtime.logits(windows).double()
    with torch.no_grad():
        ref = model(input_ids=windows).logits.double()
    same_top = (ours.argmax(-1) == ref.argmax(-1)).double().mean()
    kl = (ref.softmax(-1) * (ref.log_softmax(-1) - ours.log_softmax(-1))).sum(-1).mean()
    assert same_top >= 0.99 and kl <= 1e-3, (fmt, float(same_top), float(kl))


def test_llama_quantize_writes_the_bytes_our_writer_writes(
    llama: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    """llama.cpp's own quantizer (``llama_model_quantize``, --pure Q4_0) on our F32 file and our
    writer's Q4_0 file hold the same bytes for every matrix (both call ggml_quantize_chunk)."""
    import gguf

    path, model = llama
    write_gguf(model, path, tmp_path / "f32.gguf", GgufPlan("f32"))
    ours = write_gguf(model, path, tmp_path / "ours.gguf", GgufPlan("q4_0"))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = 2  # LLAMA_FTYPE_MOSTLY_Q4_0
    params.pure = True
    rc = llama_cpp.llama_model_quantize(
        str(tmp_path / "f32.gguf").encode(), str(tmp_path / "theirs.gguf").encode(), params
    )
    assert rc == 0
    theirs = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "theirs.gguf")).tensors}
    mine = {t.name: t for t in gguf.GGUFReader(str(ours.path)).tensors}
    assert set(theirs) == set(mine)
    for name in ours.types:
        assert theirs[name].tensor_type == mine[name].tensor_type, name
        assert np.array_equal(np.asarray(theirs[name].data), np.asarray(mine[name].data)), name


def test_the_target_builds_evaluates_times_and_exports(
    llama: tuple[Path, torch.nn.Module], windows: torch.Tensor, tmp_path: Path
) -> None:
    path, model = llama
    target = get_target("llamacpp:q4_k", threads=1)
    assert target.settings()["format"] == "q4_k"
    artifact = target.build(model, windows)
    # hidden 64: only ffn_down (rows of 256) takes q4_k; llama.cpp falls back to q5_0 elsewhere
    assert artifact.layers["model.layers.0.mlp.down_proj"]["type"] == "q4_k"
    assert artifact.layers["model.layers.0.self_attn.q_proj"]["type"] == "q5_0"
    assert artifact.layers["model.layers.0.self_attn.q_proj"]["gguf"] == "blk.0.attn_q"
    logits = TargetModule(artifact)(windows)
    assert logits.shape == (2, 96, model.config.vocab_size)
    times = target.time(artifact, [], warmup=1, repeats=2)
    assert len(times) == 2 and all(t.median_ms > 0 for t in times)
    files = target.export_recipe(artifact, tmp_path / "export")
    command = files["command"].read_text()
    assert "llama-quantize --pure model-f16.gguf model-q4_k.gguf Q4_K_M" in command
    plan = json.loads(files["plan"].read_text())
    assert plan["tensors"]["blk.0.ffn_down.weight"] == "q4_k"
    assert files["gguf"].stat().st_size == artifact.payload.stat().st_size
    with pytest.raises(TargetError, match="takes the float model"):
        from explorer.nn.convert import quantize_model
        from explorer.quant.config import Plan, QuantConfig

        target.build(quantize_model(model, Plan.uniform(QuantConfig(8))), windows)


@pytest.mark.slow
def test_sweep_rows_on_llamacpp(
    llama: tuple[Path, torch.nn.Module],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tasks.builders import sentences

    path, _ = llama
    (tmp_path / "text.txt").write_text(" ".join(sentences(150, seed=2)))
    args = ["sweep", "--model", str(path), "--data", str(tmp_path / "text.txt")]
    args += ["--target", "llamacpp", "--formats", "f16,q2_k", "--store", str(tmp_path / "r.db")]
    args += ["--json", "--repeats", "2", "--n-boot", "100", "--calibration-samples", "4"]
    # one thread: ggml's threads spin-wait at barriers, which on a loaded 2-core runner costs
    # seconds per call (measured: 9 s with 2 threads vs 0.12 s with 1 for two 96-token windows)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert cli.main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {r["format"]: r for r in out["rows"]}
    assert set(rows) == {"f16", "q2_k"} and all(r["target"] == "llamacpp" for r in rows.values())
    f16, q2 = rows["f16"], rows["q2_k"]
    assert f16["latency_kind"] == "measured" and set(f16["latency"]) == {"decode", "prefill"}
    assert f16["metrics"]["kl"] < 1e-3 < q2["metrics"]["kl"]
    assert q2["size_bytes"] < f16["size_bytes"] and q2["tokens_evaluated"] > 0
